"""Roots and inverses for K-FAC and Shampoo: Newton against eigh, fallback, batching, "auto",
staggered refresh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metagrad.models import MLP
from metagrad.optim import capture, find_layers, kfac, linalg, shampoo
from metagrad.optim.linalg import (
    damped_inverse,
    damped_inverses,
    inverse_root,
    inverse_roots,
    resolve_inverse_method,
    resolve_root_method,
)


def _spd(d, cond, seed=0):
    """A random SPD matrix with eigenvalues log-spaced from 1 down to 1/cond."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.logspace(0, -np.log10(cond), d)) @ q.T


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("cond", [1e2, 1e4, 1e6])
def test_newton_roots_match_eigh_in_float32(cond):
    mat32 = jnp.asarray(_spd(64, cond), jnp.float32)
    cases = [(0.25, 1e-6)] + ([(0.5, 1e-6), (1.0, 1e-6)] if cond <= 1e4 else [])
    for exponent, eps in cases:
        with jax.enable_x64(True):  # reference: eigh in float64 of the same float32 matrix
            ref = np.asarray(inverse_root(jnp.asarray(mat32, jnp.float64), exponent, eps))
        newton = inverse_root(mat32, exponent, eps, method="newton")
        eigh = inverse_root(mat32, exponent, eps, method="eigh")
        assert newton.dtype == jnp.float32
        err_newton, err_eigh = _rel(newton, ref), _rel(eigh, ref)
        assert err_newton <= 1e-3, (cond, exponent, err_newton)
        # Newton and eigh agree to 1e-3, up to eigh's own float32 error (which at cond 1e6 is
        # ~2e-2: the float32 eigendecomposition is the less accurate of the two there).
        assert _rel(newton, np.asarray(eigh, np.float64)) <= 1e-3 + err_eigh
        if cond <= 1e4:
            assert _rel(newton, np.asarray(eigh, np.float64)) <= 1e-3


@pytest.mark.parametrize("exponent", [0.25, 0.5, 1.0])
def test_newton_roots_match_eigh_in_float64(x64, exponent):
    for cond in (1e2, 1e6):
        mat = jnp.asarray(_spd(32, cond, seed=1))
        ref = np.asarray(inverse_root(mat, exponent, 1e-8, method="eigh"))
        newton = inverse_root(mat, exponent, 1e-8, method="newton")
        assert newton.dtype == jnp.float64
        assert _rel(newton, ref) <= 1e-9, (cond, _rel(newton, ref))
    inv = damped_inverse(mat, 1e-3, "newton")
    assert _rel(inv, np.linalg.inv(np.asarray(mat) + 1e-3 * np.eye(32))) <= 1e-10


def test_newton_falls_back_to_eigh_when_its_check_fails(x64):
    mat = jnp.asarray(_spd(16, 1e3, seed=2))
    eigh = np.asarray(inverse_root(mat, 0.25, 1e-6, method="eigh"))
    # Two steps are far from converged: the residual check fails and eigh's root is returned.
    stopped = inverse_root(mat, 0.25, 1e-6, method="newton", newton_max_iters=2)
    np.testing.assert_allclose(stopped, eigh, rtol=1e-12)
    # Without the check (an impossible-to-fail bound) the unconverged iterate is far off.
    unchecked = inverse_root(mat, 0.25, 1e-6, method="newton", newton_max_iters=2, check_tol=1e30)
    assert _rel(unchecked, eigh) > 0.1
    # In a stack only the failing matrix is replaced: a NaN matrix gives NaN from eigh too, the
    # healthy one keeps its Newton root.
    stack = jnp.stack([mat, jnp.full((16, 16), jnp.nan)])
    out = np.asarray(inverse_root(stack, 0.25, 1e-6, method="newton"))
    assert _rel(out[0], eigh) <= 1e-9 and np.all(np.isnan(out[1]))
    inv = damped_inverse(mat, 1e-2, "newton", newton_max_iters=1)
    assert _rel(inv, np.linalg.inv(np.asarray(mat) + 1e-2 * np.eye(16))) <= 1e-10
    with pytest.raises(ValueError, match="newton_max_iters must be a positive int"):
        inverse_root(mat, 0.25, method="newton", newton_max_iters=0)


def _np_root(mat, exponent, eps):
    w, q = np.linalg.eigh(np.asarray(mat))
    w = np.maximum(w, 0)
    return (q * (w + eps * w[-1]) ** (-exponent)) @ q.T


def test_batched_equals_per_matrix(x64):
    # Two shapes: one batched call each; every matrix keeps its own ε.
    mats = [jnp.asarray(_spd(d, 1e3, seed=s)) for s, d in enumerate((6, 9, 6, 6, 9))]
    eps = [1e-4, 1e-3, 1e-5, 1e-4, 1e-2]
    for method in ("eigh", "newton"):
        batched = inverse_roots(mats, 0.25, eps, method=method, batched=True)
        for m, e, b in zip(mats, eps, batched, strict=True):
            assert _rel(b, _np_root(m, 0.25, e)) <= 1e-10
    for flag in (True, False):
        invs = damped_inverses(mats, eps, "newton", batched=flag)
        for m, e, b in zip(mats, eps, invs, strict=True):
            assert _rel(b, np.linalg.inv(np.asarray(m) + e * np.eye(m.shape[0]))) <= 1e-10
    with pytest.raises(ValueError, match="one entry per matrix"):
        inverse_roots(mats, 0.25, [1e-4])


def test_auto_picks_as_documented():
    for d in (8, 64, 1024, 4096):
        assert resolve_root_method("auto", d, backend="cpu") == "eigh"
        assert resolve_inverse_method("auto", d, backend="cpu") == "cholesky"
        expected = "newton" if d >= linalg.AUTO_NEWTON_MIN_SIZE else "eigh"
        for backend in ("gpu", "cuda", "tpu"):
            assert resolve_root_method("auto", d, backend=backend) == expected
            assert resolve_inverse_method("auto", d, backend=backend) == (
                "newton" if expected == "newton" else "cholesky"
            )
    assert resolve_root_method("newton", 8, backend="cpu") == "newton"
    with pytest.raises(ValueError, match="root method must be one of"):
        resolve_root_method("svd", 8)
    # On this (CPU) backend the default of Shampoo is the eigendecomposition: bit-identical.
    assert jax.default_backend() == "cpu"
    mat = jnp.asarray(_spd(70, 1e3), jnp.float32)
    np.testing.assert_array_equal(
        inverse_root(mat, 0.25, method="auto"), inverse_root(mat, 0.25, method="eigh")
    )


def test_stagger_groups_balance_the_cost():
    sizes = [784, 1024, 1024, 1024, 1024, 1024, 1024, 10]
    for k in (1, 2, 3, 4, 8):
        groups = linalg.stagger_groups(sizes, k)
        cost = [sum(s**3 for s, g in zip(sizes, groups, strict=True) if g == j) for j in range(k)]
        assert max(cost) <= sum(s**3 for s in sizes) / k + 1024**3
    assert [linalg.group_offset(g, 4, 10) for g in range(4)] == [0, 2, 5, 7]
    # Group 0 (refreshed with the statistics) is the cheapest.
    groups = linalg.stagger_groups(sizes, 4)
    cost = [sum(s**3 for s, g in zip(sizes, groups, strict=True) if g == j) for j in range(4)]
    assert cost == sorted(cost)


MODEL = MLP(sizes=(5, 7, 6, 3), activation="tanh")


def _loss(p, x, y):
    logits = MODEL.apply(p, x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def _refresh_steps(opt, leaves_of, steps=13):
    rng = np.random.default_rng(0)
    params = MODEL.init(jax.random.key(0), jnp.float64)
    x0 = jnp.asarray(rng.standard_normal((8, 5)))
    y0 = jnp.asarray(rng.integers(0, 3, 8))
    layers = find_layers(_loss, params, x0, y0)
    o = opt(layers)
    state = o.init(params)
    update = jax.jit(lambda g, s, st: o.update(g, s, params, curvature=st))
    changed = []
    for _ in range(steps):
        x = jnp.asarray(rng.standard_normal((8, 5)))
        y = jnp.asarray(rng.integers(0, 3, 8))
        _, g, st = capture(_loss)(params, x, y)
        before = leaves_of(state)
        _, state = update(g, state, st)
        after = leaves_of(state)
        changed.append([not np.array_equal(a, b) for a, b in zip(before, after, strict=True)])
    return np.asarray(changed)  # (steps, roots)


@pytest.mark.parametrize("family", ["shampoo", "kfac"])
def test_staggered_refresh_refreshes_each_root_once_per_interval(x64, family):
    every, k = 5, 3
    if family == "shampoo":

        def opt(layers):
            return shampoo(precond_every=every, refresh_groups=k, layers=layers)

        def leaves_of(s):
            return jax.tree_util.tree_leaves(s.roots)

        sizes = [5, 7, 7, 6, 6, 3]  # (L, R) of each of the three layers
    else:

        def opt(layers):
            return kfac(layers, inverse_every=every, refresh_groups=k)

        def leaves_of(s):  # (A, B) of each layer, in the order stagger_groups saw them
            return [m for pair in zip(s.a_inverses, s.b_inverses, strict=True) for m in pair]

        sizes = [5, 7, 7, 6, 6, 3]
    changed = _refresh_steps(opt, leaves_of)
    groups = linalg.stagger_groups(sizes, k)
    assert changed[0].all()  # the first step computes every root
    for t in range(1, changed.shape[0]):
        expected = [t % every == linalg.group_offset(g, k, every) for g in groups]
        np.testing.assert_array_equal(changed[t], expected, err_msg=f"step {t}")
    # Over any full interval after the first step, every root is refreshed exactly once.
    np.testing.assert_array_equal(changed[1 : 1 + every].sum(0), 1)
    np.testing.assert_array_equal(changed[6 : 6 + every].sum(0), 1)


def test_refresh_groups_is_checked():
    with pytest.raises(ValueError, match="refresh_groups must be an int between 1 and"):
        shampoo(precond_every=4, refresh_groups=5)
    with pytest.raises(ValueError, match="refresh_groups must be an int between 1 and"):
        kfac((), inverse_every=4, refresh_groups=0)
