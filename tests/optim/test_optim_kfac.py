"""K-FAC: the update equals the explicit damped Kronecker solve; it trains faster than SGD."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metagrad.models import MLP
from metagrad.optim import capture, factor_damping, find_layers, kfac
from metagrad.optim.linalg import damped_inverse, precondition


def xent(logits, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


MODEL = MLP(sizes=(4, 6, 5, 3), activation="tanh")


def loss(p, x, y):
    return xent(MODEL.apply(p, x), y)


def _problem(n=8, seed=0):
    rng = np.random.default_rng(seed)
    params = MODEL.init(jax.random.key(seed), jnp.float64)
    x = jnp.asarray(rng.standard_normal((n, 4)))
    y = jnp.asarray(rng.integers(0, 3, n))
    return params, x, y


def _explicit(stats, grads, i, damping, rule, floor=0.0):
    """(A + ρ_A I)^-1 ∇W (B + ρ_B I)^-1 with A, B and ρ computed from scratch in numpy."""
    layer = stats.layers[i]
    a = np.asarray(layer.input_rows(stats.inputs[i]))
    d = np.asarray(layer.output_rows(stats.output_grads[i])) * stats.num_examples
    A = a.T @ a / len(a)
    B = d.T @ d / len(d)
    s = np.sqrt(damping)
    if rule == "trace":
        ra, rb = s * np.trace(A), s * max(np.trace(B), floor)
    elif rule == "pi":
        pi = np.sqrt((np.trace(A) / len(A)) / (np.trace(B) / len(B)))
        ra, rb = s * pi, s / pi
    else:
        ra = rb = s
    gw = np.asarray(grads[i]["w"])
    w = np.linalg.solve(A + ra * np.eye(len(A)), gw) @ np.linalg.inv(B + rb * np.eye(len(B)))
    b = np.linalg.solve(B + rb * np.eye(len(B)), np.asarray(grads[i]["b"]))
    return w, b


@pytest.mark.parametrize("rule", ["trace", "pi", "absolute"])
def test_update_equals_explicit_damped_kronecker_solve(x64, rule):
    params, x, y = _problem()
    layers = find_layers(loss, params, x, y)
    opt = kfac(layers, damping=1e-2, damping_rule=rule, decay=0.0, inverse_method="eigh")
    _, grads, stats = jax.jit(capture(loss))(params, x, y)
    updates, state = jax.jit(opt.update)(grads, opt.init(params), params, curvature=stats)
    for i in range(3):
        w, b = _explicit(stats, grads, i, 1e-2, rule)
        np.testing.assert_allclose(updates[i]["w"], w, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(updates[i]["b"], b, rtol=1e-8, atol=1e-12)
    assert int(state.count) == 1 and int(state.stats_count) == 1


def _b_traces(stats):
    traces = []
    for i, layer in enumerate(stats.layers):
        d = np.asarray(layer.output_rows(stats.output_grads[i])) * stats.num_examples
        traces.append(float(np.sum(d * d) / len(d)))
    return traces


def test_trace_floor_of_b_equals_explicit_solve(x64):
    """ρ_B = √ρ max(tr B, floor): one layer below its floor, one above, one without."""
    params, x, y = _problem()
    layers = find_layers(loss, params, x, y)
    _, grads, stats = jax.jit(capture(loss))(params, x, y)
    tr_b = _b_traces(stats)
    floors = {layers[1].name: 5.0 * tr_b[1], layers[2].name: 0.5 * tr_b[2]}
    opt = kfac(layers, damping=1e-2, b_trace_floor=floors, decay=0.0, inverse_method="eigh")
    updates, _ = jax.jit(opt.update)(grads, opt.init(params), params, curvature=stats)
    for i in range(3):
        w, b = _explicit(stats, grads, i, 1e-2, "trace", floors.get(layers[i].name, 0.0))
        np.testing.assert_allclose(updates[i]["w"], w, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(updates[i]["b"], b, rtol=1e-8, atol=1e-12)
    w_plain, _ = _explicit(stats, grads, 1, 1e-2, "trace")
    assert not np.allclose(updates[1]["w"], w_plain)  # the floor was active there


def test_trace_floor_makes_a_small_backward_signal_give_a_small_update(x64):
    """Under the plain trace rule K-FAC's update is of degree -1 in the backward signal: a
    read-out 10x smaller makes the layers below move 10x *more* (from a zero read-out they blow
    up). With a floor above tr(B) the update is of degree +1 there, like SGD's."""
    params, x, y = _problem()
    layers = find_layers(loss, params, x, y)

    def hidden_update(scale, floor):
        p = [dict(layer) for layer in params]
        p[2] = {"w": params[2]["w"] * scale, "b": params[2]["b"]}
        _, grads, stats = capture(loss)(p, x, y)
        opt = kfac(layers, damping=1e-2, b_trace_floor=floor, decay=0.0, inverse_method="eigh")
        updates, _ = opt.update(grads, opt.init(p), p, curvature=stats)
        return float(jnp.linalg.norm(updates[0]["w"]))

    plain = hidden_update(1e-3, 0.0) / hidden_update(1e-2, 0.0)
    floored = hidden_update(1e-3, 100.0) / hidden_update(1e-2, 100.0)
    np.testing.assert_allclose(plain, 10.0, rtol=1e-3)
    np.testing.assert_allclose(floored, 0.1, rtol=1e-3)


def test_moving_average_and_refresh_intervals(x64):
    """Factors average the batches seen (bias corrected); inverses change only on refresh steps."""
    params, x, y = _problem()
    layers = find_layers(loss, params, x, y)
    opt = kfac(layers, damping_rule="absolute", decay=0.5, inverse_every=2, stats_every=1)
    state = opt.init(params)
    grad_and_stats = jax.jit(capture(loss))
    update = jax.jit(opt.update)
    batches = [(x, y), (x[::-1] * 2.0, y[::-1]), (x * 0.5, y)]
    fa_seen = []
    inverses = []
    for xb, yb in batches:
        _, g, st = grad_and_stats(params, xb, yb)
        fa_seen.append(st.factors(0)[0])
        _, state = update(g, state, params, curvature=st)
        inverses.append(state.a_inverses[0])
    # EMA with decay 0.5 over three batches, bias corrected by 1 - 0.5^3.
    ema = (0.25 * fa_seen[0] + 0.5 * fa_seen[1] + fa_seen[2]) * 0.5 / (1 - 0.5**3)
    np.testing.assert_allclose(state.a_factors[0] / (1 - 0.5**3), ema, rtol=1e-10)
    np.testing.assert_array_equal(inverses[0], inverses[1])  # step 1: no refresh
    assert not np.allclose(inverses[1], inverses[2])  # step 2: refreshed


def test_lowrank_product_equals_full_product_and_detects_changed_gradients(x64):
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((3, 7)))
    g = jnp.asarray(rng.standard_normal((3, 6)))
    left = jnp.asarray(np.linalg.inv(np.eye(7) + 0.1 * rng.standard_normal((7, 7)) ** 2))
    right = jnp.asarray(np.linalg.inv(np.eye(6) + 0.1 * rng.standard_normal((6, 6)) ** 2))
    grad = a.T @ g
    full = left @ grad @ right
    np.testing.assert_allclose(precondition(grad, left, right, (a, g)), full, rtol=1e-12)
    changed = grad + 1e-3 * jnp.ones_like(grad)  # e.g. weight decay added after capture
    np.testing.assert_allclose(
        precondition(changed, left, right, (a, g)), left @ changed @ right, rtol=1e-12
    )


def test_damped_inverse_methods_agree(x64):
    rng = np.random.default_rng(1)
    m = rng.standard_normal((5, 3))
    mat = jnp.asarray(m @ m.T)  # rank 3: singular without damping
    ref = np.linalg.inv(m @ m.T + 0.3 * np.eye(5))
    for method in ("cholesky", "eigh"):
        np.testing.assert_allclose(damped_inverse(mat, 0.3, method), ref, rtol=1e-10)


def test_pi_damping_keeps_product_and_trace_damping_follows_the_trace(x64):
    a = jnp.diag(jnp.array([4.0, 2.0, 0.0]))
    b = jnp.diag(jnp.array([0.5, 0.5]))
    ra, rb = factor_damping(a, b, 1e-2, "pi")
    np.testing.assert_allclose(ra * rb, 1e-2)
    np.testing.assert_allclose(ra / rb, (6.0 / 3) / (1.0 / 2))
    ra, rb = factor_damping(a, b, 1e-2, "trace", scale_a=2.0)
    np.testing.assert_allclose([ra, rb], [0.1 * 6.0 * 2.0, 0.1 * 1.0])
    ra, rb = factor_damping(jnp.zeros((2, 2)), jnp.zeros((2, 2)), 1e-2, "trace")
    assert ra > 0 and rb > 0  # never exactly zero


def test_kfac_reaches_lower_loss_than_sgd():
    """Same steps, same data: K-FAC beats SGD at its best learning rate on a small problem."""
    rng = np.random.default_rng(0)
    model = MLP(sizes=(8, 32, 32, 4), activation="tanh")
    xs = jnp.asarray(rng.standard_normal((256, 8)), jnp.float32)
    ys = jnp.argmax(jnp.tanh(xs @ jnp.asarray(rng.standard_normal((8, 4)), jnp.float32)), 1)
    params = model.init(jax.random.key(0))

    def f(p, x, y):
        return xent(model.apply(p, x), y)

    layers = find_layers(f, params, xs[:32], ys[:32])

    def final_loss(opt, lrs, steps=40):
        grad_and_stats = capture(f)

        @jax.jit
        def run(lr):
            def body(carry, t):
                p, s = carry
                i = (t % 8) * 32
                xb = jax.lax.dynamic_slice_in_dim(xs, i, 32)
                yb = jax.lax.dynamic_slice_in_dim(ys, i, 32)
                _, g, st = grad_and_stats(p, xb, yb)
                u, s = opt.update(g, s, p, curvature=st)
                return (optax.apply_updates(p, jax.tree.map(lambda v: -lr * v, u)), s), None

            (p, _), _ = jax.lax.scan(body, (params, opt.init(params)), jnp.arange(steps))
            return f(p, xs, ys)

        return min(float(run(lr)) for lr in lrs)

    sgd = final_loss(optax.with_extra_args_support(optax.identity()), [0.1, 0.3, 1.0, 3.0])
    second = final_loss(kfac(layers, damping=1e-2, inverse_every=5), [0.1, 0.3])
    assert second < 0.8 * sgd, (second, sgd)


def test_errors_name_the_argument(x64):
    params, x, y = _problem()
    layers = find_layers(loss, params, x, y)
    with pytest.raises(TypeError, match="layers must be the tuple of LayerInfo"):
        kfac("dense")
    with pytest.raises(ValueError, match="damping_rule must be one of"):
        kfac(layers, damping_rule="tikhonov")
    with pytest.raises(ValueError, match="inverse_method must be one of"):
        kfac(layers, inverse_method="lu")
    with pytest.raises(ValueError, match="decay must be in"):
        kfac(layers, decay=1.5)
    with pytest.raises(ValueError, match="inverse_every must be a positive int"):
        kfac(layers, inverse_every=0)
    with pytest.raises(ValueError, match="damping must be positive"):
        kfac(layers, damping=0.0)
    with pytest.raises(ValueError, match="unknown layers"):
        kfac(layers, damping_scales={"nope": (1.0, 1.0)})
    with pytest.raises(ValueError, match="b_trace_floor has entries for unknown layers"):
        kfac(layers, b_trace_floor={"nope": 1.0})
    with pytest.raises(ValueError, match="b_trace_floor must be finite and >= 0"):
        kfac(layers, b_trace_floor=-1.0)
    with pytest.raises(ValueError, match="b_trace_floor is an option of the 'trace' damping"):
        kfac(layers, damping_rule="pi", b_trace_floor=1e-3)
    with pytest.raises(TypeError, match="b_trace_floor must be a number"):
        kfac(layers, b_trace_floor="1e-3")
    opt = kfac(layers)
    state = opt.init(params)
    _, grads, stats = capture(loss)(params, x, y)
    with pytest.raises(TypeError, match="needs the curvature statistics"):
        opt.update(grads, state, params)
    with pytest.raises(TypeError, match="curvature must be the CurvatureStats"):
        opt.update(grads, state, params, curvature={"a": 1})
    with pytest.raises(ValueError, match="captured for layers"):
        kfac(layers[:2]).update(grads, kfac(layers[:2]).init(params), params, curvature=stats)
    with pytest.raises(ValueError, match="params do not match"):
        opt.init(MLP(sizes=(4, 7, 5, 3)).init(jax.random.key(0)))
