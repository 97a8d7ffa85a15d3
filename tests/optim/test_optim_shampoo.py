"""Shampoo: accurate inverse roots, the explicit update, blocking, 1-D handling, grafting."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metagrad.models import MLP
from metagrad.optim import capture, find_layers, inverse_root, shampoo


def _spd(d, rank, seed=0):
    m = np.random.default_rng(seed).standard_normal((d, rank))
    return m @ m.T


def _np_root(mat, exponent, ridge):
    w, q = np.linalg.eigh(mat)
    w = np.maximum(w, 0)
    return (q * (w + ridge) ** (-exponent)) @ q.T


@pytest.mark.parametrize("exponent", [0.25, 0.5])
def test_inverse_roots_are_accurate(x64, exponent):
    mat = _spd(6, 6)
    eps = 1e-3
    ridge = eps * np.linalg.eigvalsh(mat).max()
    ref = _np_root(mat, exponent, ridge)
    p = round(1 / exponent)
    for method in ("eigh", "newton"):
        root = np.asarray(inverse_root(jnp.asarray(mat), exponent, eps, method=method))
        np.testing.assert_allclose(root, ref, rtol=1e-6 if method == "newton" else 1e-10)
        # R^p (A + ε I) = I, the defining property.
        check = np.linalg.matrix_power(root, p) @ (mat + ridge * np.eye(6))
        np.testing.assert_allclose(check, np.eye(6), atol=1e-5 if method == "newton" else 1e-9)


def test_inverse_root_absolute_eps_rank_deficient_and_zero(x64):
    mat = _spd(5, 2, seed=1)  # rank 2
    root = inverse_root(jnp.asarray(mat), 0.25, 1e-2, relative_eps=False)
    np.testing.assert_allclose(root, _np_root(mat, 0.25, 1e-2), rtol=1e-10)
    zero = inverse_root(jnp.zeros((3, 3)), 0.25, 1e-6)
    assert np.all(np.isfinite(zero)) and np.allclose(zero, zero[0, 0] * np.eye(3))
    with pytest.raises(ValueError, match="1/exponent to be an integer"):
        inverse_root(jnp.asarray(mat), 0.3, method="newton")
    with pytest.raises(ValueError, match="root method must be one of"):
        inverse_root(jnp.asarray(mat), 0.25, method="svd")


def test_update_equals_explicit_and_blocks_and_one_d(x64):
    rng = np.random.default_rng(0)
    params = {"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}
    g1 = {"w": jnp.asarray(rng.standard_normal((5, 3))), "b": jnp.asarray(rng.standard_normal(3))}
    g2 = {"w": jnp.asarray(rng.standard_normal((5, 3))), "b": jnp.asarray(rng.standard_normal(3))}
    opt = shampoo(decay=0.5, eps=1e-4, precond_every=1, one_d="diagonal")
    update = jax.jit(opt.update)
    state = opt.init(params)
    _, state = update(g1, state)
    u, state = update(g2, state)
    corr = 1 - 0.5**2
    G1, G2 = np.asarray(g1["w"]), np.asarray(g2["w"])
    L = (0.25 * G1 @ G1.T + 0.5 * G2 @ G2.T) / corr
    R = (0.25 * G1.T @ G1 + 0.5 * G2.T @ G2) / corr
    ref = (
        _np_root(L, 0.25, 1e-4 * np.linalg.eigvalsh(L).max())
        @ G2
        @ _np_root(R, 0.25, 1e-4 * np.linalg.eigvalsh(R).max())
    )
    np.testing.assert_allclose(u["w"], ref, rtol=1e-8)
    v = (0.25 * np.asarray(g1["b"]) ** 2 + 0.5 * np.asarray(g2["b"]) ** 2) / corr
    np.testing.assert_allclose(u["b"], g2["b"] / np.sqrt(v + 1e-4 * v.max()), rtol=1e-8)

    # Blocking: a (5, 3) matrix with block_size 3 -> row blocks of 3 and 2, each preconditioned
    # on its own.
    blocked = shampoo(decay=0.0, eps=1e-4, block_size=3, block_rescale=False)
    ub, _ = blocked.update(g1, blocked.init(params))
    for rows in (slice(0, 3), slice(3, 5)):
        gb = G1[rows]
        lb, rb = gb @ gb.T, gb.T @ gb
        ref_b = (
            _np_root(lb, 0.25, 1e-4 * np.linalg.eigvalsh(lb).max())
            @ gb
            @ _np_root(rb, 0.25, 1e-4 * np.linalg.eigvalsh(rb).max())
        )
        np.testing.assert_allclose(ub["w"][rows], ref_b, rtol=1e-8)
    np.testing.assert_array_equal(ub["b"], g1["b"])  # one_d="none": passes through
    # With the rescale (default) two blocks scale the update by 2^(-1/2).
    rescaled = shampoo(decay=0.0, eps=1e-4, block_size=3)
    ur, _ = rescaled.update(g1, rescaled.init(params))
    np.testing.assert_allclose(ur["w"], ub["w"] / np.sqrt(2), rtol=1e-12)


def test_grafting_takes_the_norm_of_the_grafted_step(x64):
    rng = np.random.default_rng(2)
    params = {"w": jnp.zeros((4, 3))}
    g = {"w": jnp.asarray(rng.standard_normal((4, 3)))}
    for graft in ("sgd", "rmsprop"):
        opt = shampoo(graft=graft, graft_decay=0.9)
        u, _ = opt.update(g, opt.init(params))
        expected = np.linalg.norm(g["w"]) if graft == "sgd" else np.sqrt(12)
        np.testing.assert_allclose(np.linalg.norm(u["w"]), expected, rtol=1e-6)


def test_precond_warmup_refreshes_the_roots_at_every_early_step(x64):
    rng = np.random.default_rng(3)
    params = {"w": jnp.zeros((5, 4))}
    grads = [{"w": jnp.asarray(rng.standard_normal((5, 4)))} for _ in range(5)]
    every = shampoo(precond_every=1)
    warm = shampoo(precond_every=10, precond_warmup=3)
    stale = shampoo(precond_every=10)
    s_every, s_warm, s_stale = every.init(params), warm.init(params), stale.init(params)
    for k, g in enumerate(grads):
        u_every, s_every = every.update(g, s_every)
        u_warm, s_warm = warm.update(g, s_warm)
        u_stale, s_stale = stale.update(g, s_stale)
        if k < 3:  # warm-up: the roots include the current gradient, as with precond_every=1
            np.testing.assert_allclose(u_warm["w"], u_every["w"], rtol=1e-10)
        else:  # then they are kept until the next refresh (step 10)
            assert not np.allclose(u_warm["w"], u_every["w"])
        if k >= 1:
            assert not np.allclose(u_stale["w"], u_every["w"])


def test_rows_trick_matches_plain_update(x64):
    model = MLP(sizes=(3, 16, 2))
    params = model.init(jax.random.key(0), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (4, 3), jnp.float64)
    y = jnp.array([0, 1, 1, 0])

    def f(p, x, y):
        logits = model.apply(p, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    layers = find_layers(f, params, x, y)
    _, grads, stats = jax.jit(capture(f))(params, x, y)
    with_rows = shampoo(layers=layers)
    plain = shampoo()
    u1, _ = jax.jit(with_rows.update)(grads, with_rows.init(params), curvature=stats)
    u2, _ = jax.jit(plain.update)(grads, plain.init(params))
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-12)


def test_shampoo_reaches_lower_loss_than_sgd():
    rng = np.random.default_rng(0)
    model = MLP(sizes=(8, 32, 32, 4), activation="tanh")
    xs = jnp.asarray(rng.standard_normal((256, 8)), jnp.float32)
    ys = jnp.argmax(jnp.tanh(xs @ jnp.asarray(rng.standard_normal((8, 4)), jnp.float32)), 1)
    params = model.init(jax.random.key(0))

    def f(p, x, y):
        logits = model.apply(p, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    def final_loss(opt, lrs, steps=40):
        @jax.jit
        def run(lr):
            def body(carry, t):
                p, s = carry
                i = (t % 8) * 32
                xb = jax.lax.dynamic_slice_in_dim(xs, i, 32)
                yb = jax.lax.dynamic_slice_in_dim(ys, i, 32)
                g = jax.grad(f)(p, xb, yb)
                u, s = opt.update(g, s, p)
                return (optax.apply_updates(p, jax.tree.map(lambda v: -lr * v, u)), s), None

            (p, _), _ = jax.lax.scan(body, (params, opt.init(params)), jnp.arange(steps))
            return f(p, xs, ys)

        return min(float(run(lr)) for lr in lrs)

    sgd = final_loss(optax.identity(), [0.1, 0.3, 1.0, 3.0])
    opt = shampoo(decay=0.9, eps=1e-4, precond_every=1, one_d="diagonal")
    second = final_loss(opt, [0.03, 0.1, 0.3])
    assert second < 0.9 * sgd, (second, sgd)


def test_errors_name_the_argument():
    for kwargs, match in [
        ({"one_d": "full"}, "one_d must be one of"),
        ({"graft": "adam"}, "graft must be one of"),
        ({"eps_mode": "scaled"}, "eps_mode must be one of"),
        ({"root_method": "svd"}, "root_method must be one of"),
        ({"decay": 2.0}, "decay must be in"),
        ({"exponent": 0.0}, "exponent must be positive"),
        ({"eps": -1.0}, "eps must be positive"),
        ({"block_size": 0}, "block_size must be a positive int"),
        ({"precond_warmup": -1}, "precond_warmup must be a non-negative int"),
        ({"layers": ["x"]}, "layers must be the tuple"),
    ]:
        with pytest.raises((ValueError, TypeError), match=match):
            shampoo(**kwargs)
    opt = shampoo(eps_mode="absolute", eps_scales={"w": 1.0})
    params = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
    with pytest.raises(ValueError, match="eps_scales must have one entry per parameter"):
        opt.update(params, opt.init(params))
    with pytest.raises(TypeError, match="curvature must be None or the CurvatureStats"):
        shampoo().update(params, shampoo().init(params), curvature=3)
