"""Exactly reversible momentum SGD: bit-exact reversal, exact meta-gradients, flat memory, errors."""

import fractions

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metagrad
from metagrad.memory import compiled_cost
from metagrad.reversible import (
    buffer_limbs,
    reversible_forward,
    reversible_momentum_sgd,
    reversible_reverse,
)

T, BATCH, WIDTH = 16, 5, 4


def _problem(dtype=jnp.float64, steps=T, width=WIDTH, batch=BATCH):
    """A tanh layer with bias, per-example loss weights η, integer labels in xs."""
    key = jax.random.PRNGKey(0)
    params0 = {
        "w": (jax.random.normal(key, (width, width)) / width).astype(dtype),
        "b": jnp.zeros(width, dtype),
    }
    x = jnp.sin(jnp.arange(steps * batch * width, dtype=dtype)).reshape(steps, batch, width)
    labels = jnp.arange(steps * batch).reshape(steps, batch) % width
    meta = jnp.linspace(0.5, 1.5, batch, dtype=dtype)

    def loss(p, eta, xl):
        x, lab = xl
        out = jnp.tanh(x @ p["w"] + p["b"])
        per_example = jnp.sum((out - x) ** 2, -1) - jnp.take_along_axis(out, lab[:, None], 1)[:, 0]
        return jnp.mean(eta * per_example)

    return loss, params0, (x, labels), meta


def _outer(params_t):
    return jnp.sum(params_t["w"] ** 2) + jnp.sum(jnp.sin(params_t["b"]))


def _assert_same_ints(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert u.dtype == v.dtype and u.shape == v.shape
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.mark.parametrize(("use_x64", "decay"), [(True, (9, 10)), (False, (9, 10)), (True, (1, 2))])
def test_reversal_is_bit_exact(use_x64, decay):
    """Reversing reproduces every θ_t, v_t as integers and ends with an empty buffer (int64 and the
    default 32-bit mode, where float32 gradient rounding sits close to the fixed-point grid)."""
    with jax.enable_x64(use_x64):
        loss, params0, xs, meta = _problem(jnp.float64 if use_x64 else jnp.float32)
        kw = {"learning_rate": 0.3, "meta": meta, "decay": decay}
        final, forward = reversible_forward(loss, params0, xs, trajectory=True, **kw)
        initial, backward = reversible_reverse(loss, final, xs, like=params0, trajectory=True, **kw)
        int_dtype = jnp.int64 if use_x64 else jnp.int32
        assert jax.tree.leaves(final.params)[0].dtype == int_dtype
        assert jax.tree.leaves(final.buffer)[0].shape[0] == buffer_limbs(T, decay)
        assert any(int(jnp.max(b)) > 0 for b in jax.tree.leaves(final.buffer))
        _assert_same_ints(backward, forward)
        first = jax.tree.map(lambda s: s[0], (forward.params, forward.velocity))
        _assert_same_ints((initial.params, initial.velocity), first)
        assert all(int(jnp.max(b)) == 0 for b in jax.tree.leaves(initial.buffer))


def _reference(loss, params0, xs, meta, lr, fractional_bits=32):
    """Plain reverse mode (reverse-over-reverse, jax.grad in a scan) through the same fixed-point
    trajectory: the float step is differentiated, and each state is snapped to the exact
    fixed-point value with a straight-through correction. That is the derivative the reversible
    backward pass claims to compute, so the two must agree to float64 rounding."""
    final, states = reversible_forward(
        loss, params0, xs, learning_rate=lr, meta=meta, trajectory=True
    )
    scale = 2.0**-fractional_bits

    def exact(ints, t):
        nxt = jax.tree.map(lambda s, f: jnp.concatenate([s[1:], f[None]]), ints, getattr(final, t))
        return jax.tree.map(lambda i: i.astype(jnp.float64) * scale, nxt)

    p_next, v_next = exact(states.params, "params"), exact(states.velocity, "velocity")
    snap = lambda a, b: a + jax.lax.stop_gradient(b - a)  # noqa: E731

    def objective(params0, lr, meta, x_float):
        p = jax.tree.map(lambda p: snap(p, jnp.round(p * 2.0**fractional_bits) * scale), params0)
        v = jax.tree.map(jnp.zeros_like, params0)

        def step(carry, inputs):
            p, v = carry
            x, pn, vn = inputs
            g = jax.grad(loss)(p, meta, x)
            v = jax.tree.map(lambda v, g, e: snap(0.9 * v - 0.1 * g, e), v, g, vn)
            p = jax.tree.map(lambda p, v, e: snap(p + lr * v, e), p, v, pn)
            return (p, v), None

        (p, _), _ = jax.lax.scan(step, (p, v), ((x_float, xs[1]), p_next, v_next))
        return _outer(p)

    return jax.jit(jax.grad(objective, argnums=(0, 1, 2, 3)))(params0, lr, meta, xs[0])


def _reversible_grads(loss, params0, xs, meta, lr):
    def objective(params0, lr, meta, x_float):
        p = reversible_momentum_sgd(
            loss, params0, (x_float, xs[1]), learning_rate=lr, meta=meta, decay=(9, 10)
        )
        return _outer(p)

    return jax.jit(jax.grad(objective, argnums=(0, 1, 2, 3)))(params0, lr, meta, xs[0])


def _float_loop_grads(loss, params0, xs, meta, lr):
    def objective(params0, lr, meta, x_float):
        def step(carry, x):
            p, v = carry
            g = jax.grad(loss)(p, meta, x)
            v = jax.tree.map(lambda v, g: 0.9 * v - 0.1 * g, v, g)
            return (jax.tree.map(lambda p, v: p + lr * v, p, v), v), None

        v0 = jax.tree.map(jnp.zeros_like, params0)
        (p, _), _ = jax.lax.scan(step, (params0, v0), (x_float, xs[1]))
        return _outer(p)

    return jax.jit(jax.grad(objective, argnums=(0, 1, 2, 3)))(params0, lr, meta, xs[0])


def _rel_err(a, b):
    return max(
        float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(v)))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_meta_gradient_matches_reverse_mode(x64):
    """Meta-gradient w.r.t. θ₀ (dict), α, per-example weights η and the float data xs.

    Against reverse mode through the same fixed-point trajectory: ≤ 1e-12 (float64 rounding only; measured 4e-16).
    Against the plain float loop (no quantisation): ≤ 1e-6. The fixed-point rounding (resolution
    2^-32 ≈ 2.3e-10, and up to n = 9 units from the decay) perturbs each state by ~1e-9, and that
    perturbation is what the two derivatives differ by."""
    loss, params0, xs, meta = _problem()
    lr = jnp.asarray(0.3)
    got = _reversible_grads(loss, params0, xs, meta, lr)
    assert _rel_err(got, _reference(loss, params0, xs, meta, lr)) <= 1e-12
    assert _rel_err(got, _float_loop_grads(loss, params0, xs, meta, lr)) <= 1e-6


def test_gradients_wrt_velocity0_closures_and_per_parameter_lr(x64):
    """Closed-over meta-parameters, a per-parameter learning rate and v₀ are differentiated too
    (checked against the float loop, whose tolerance is set by the fixed-point resolution)."""
    loss, params0, xs, meta = _problem(steps=8)
    lrs = {"w": jnp.full((WIDTH, WIDTH), 0.2), "b": jnp.asarray(0.4)}

    def objective(eta, lrs, v0, quantised):
        closed = lambda p, _, x: loss(p, eta, x)  # noqa: E731
        if quantised:
            p = reversible_momentum_sgd(closed, params0, xs, learning_rate=lrs, velocity0=v0)
        else:
            p, v = params0, v0
            for t in range(8):
                g = jax.grad(closed)(p, None, (xs[0][t], xs[1][t]))
                v = jax.tree.map(lambda v, g: 0.9 * v - 0.1 * g, v, g)
                p = jax.tree.map(lambda p, v, a: p + a * v, p, v, lrs)
        return _outer(p)

    v0 = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params0)
    meta_grad = jax.jit(jax.grad(objective, argnums=(0, 1, 2)), static_argnums=3)
    got, ref = meta_grad(meta, lrs, v0, True), meta_grad(meta, lrs, v0, False)
    assert _rel_err(got, ref) <= 1e-6


def test_float32_default_mode_is_close_to_float_loop():
    loss, params0, xs, meta = _problem(jnp.float32, steps=8)
    lr = jnp.asarray(0.3, jnp.float32)
    got = _reversible_grads(loss, params0, xs, meta, lr)
    ref = _float_loop_grads(loss, params0, xs, meta, lr)
    assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(got))
    # int32 with 20 fractional bits: resolution ~1e-6, so agreement to a few 1e-4 relative.
    assert _rel_err(got, ref) <= 5e-3


def _memory_objective(steps, reversible, width=64, batch=2):
    key = jax.random.PRNGKey(1)
    params0 = jax.random.normal(key, (width, width)) / width
    xs = jnp.ones((steps, batch, width))

    def loss(w, eta, x):
        return jnp.mean(eta * jnp.sum(jnp.tanh(x @ w) ** 2, -1))

    def objective(lr, eta):
        if reversible:
            return jnp.sum(
                reversible_momentum_sgd(loss, params0, xs, learning_rate=lr, meta=eta) ** 2
            )

        def step(carry, x):
            w, v = carry
            v = 0.9 * v - 0.1 * metagrad.grad(loss)(w, eta, x)
            return (w + lr * v, v), None

        (w, _), _ = metagrad.unroll(step, (params0, jnp.zeros_like(params0)), xs, mode="mixflow")
        return jnp.sum(w**2)

    return compiled_cost(jax.grad(objective, argnums=(0, 1)), 0.1, jnp.ones(batch)).temp_bytes


def test_trajectory_memory_is_flat_in_t():
    """T = 16 → 256 with a 64×64 layer (16 KiB of float32 per copy of θ). Mixflow stores θ_t, v_t
    and g_t per step (~48 KiB per step, ~12 MiB at T = 256); the reversible loop keeps only the
    final state and a buffer of ceil(39 bits / 32) = 2 limbs per parameter."""
    rev = {t: _memory_objective(t, True) for t in (16, 256)}
    mix = {t: _memory_objective(t, False) for t in (16, 256)}
    per_step = 64 * 64 * 4
    # From T = 16 to 256 the buffer grows from 1 to 2 uint32 limbs per parameter (+16 KiB), of
    # which XLA keeps up to three live copies (forward carry, residual, backward carry). Nothing else
    # grows with T. (Measured: 246104 -> 295192 bytes; mixflow: 918736 -> 12715216 bytes.)
    assert rev[256] - rev[16] <= 3 * per_step, (rev, mix)
    assert mix[256] - mix[16] >= 240 * 2 * per_step, (rev, mix)  # ≥ 2 copies per extra step
    assert rev[256] < mix[256] / 10, (rev, mix)


def test_buffer_limbs():
    assert buffer_limbs(0) == 1
    assert buffer_limbs(100, (9, 10)) == 1  # 15.2 + 3.2 bits + the intermediate digit
    assert buffer_limbs(512, (9, 10)) == 3  # 77.8 bits
    assert buffer_limbs(512, (1, 2)) == 17  # one bit per step
    assert buffer_limbs(512, fractions.Fraction(99, 100)) == 1


def test_errors():
    loss, params0, xs, meta = _problem(jnp.float32, steps=4)
    kw = {"learning_rate": 0.1, "meta": meta}
    run = reversible_momentum_sgd
    with pytest.raises(TypeError, match=r"decay must be a ratio .* got 0.9\. .*decay=\(9, 10\)"):
        run(loss, params0, xs, decay=0.9, **kw)
    with pytest.raises(ValueError, match=r"decay=\(10, 9\) must satisfy 0 < n < d < 65536"):
        run(loss, params0, xs, decay=(10, 9), **kw)
    with pytest.raises(ValueError, match=r"decay=\(0, 1\) must satisfy"):
        run(loss, params0, xs, decay=(0, 1), **kw)
    with pytest.raises(
        TypeError,
        match=r"params0 must contain floating-point arrays only; params0\[.w.\] has dtype",
    ):
        run(loss, {"w": jnp.ones((4, 4), jnp.int32), "b": params0["b"]}, xs, **kw)
    with pytest.raises(
        ValueError,
        match=r"T=600 steps with decay=1/2 need .* 19 uint32 limbs .*"
        r"max_buffer_limbs=4 \(at most T=126 fits\)",
    ):
        run(loss, params0, None, steps=600, decay=(1, 2), max_buffer_limbs=4, **kw)
    with pytest.raises(ValueError, match=r"fractional_bits must be an int in \[1, 28\] .* got 0"):
        run(loss, params0, xs, fractional_bits=0, **kw)
    with pytest.raises(TypeError, match="learning_rate must be a float .* got dtype int32"):
        run(loss, params0, xs, learning_rate=jnp.arange(3), meta=meta)
    with pytest.raises(ValueError, match=r"learning_rate must be a scalar .* got shape \(3,\)"):
        run(loss, params0, xs, learning_rate=jnp.ones(3), meta=meta)
    with pytest.raises(ValueError, match="velocity0 must have the structure and shapes of params0"):
        run(loss, params0, xs, velocity0=jnp.zeros(4), **kw)
    with pytest.raises(ValueError, match=r"same leading \(step\) axis.*\[3, 4\]"):
        run(loss, params0, (xs[0], xs[1][:3]), **kw)
    with pytest.raises(ValueError, match="give xs .* or steps"):
        run(loss, params0, None, **kw)
    with pytest.raises(ValueError, match="max_buffer_limbs must be a positive int; got 0"):
        run(loss, params0, xs, max_buffer_limbs=0, **kw)
    final = reversible_forward(loss, params0, xs, **kw)
    with pytest.raises(ValueError, match="state.buffer has 1 limbs but T=600"):
        reversible_reverse(loss, final, None, steps=600, like=params0, **kw)


def test_reversal_inside_the_jitted_meta_gradient_is_bit_exact(monkeypatch):
    """The backward pass's reversal is compiled into a different program than the forward pass (and
    next to the VJP that recomputes the same inner gradient). It must still recover the forward
    integers exactly: record each recovered θ_t with a debug callback and compare (float32/int32,
    where a one-ulp difference in the gradient would most easily cross a rounding boundary)."""
    import metagrad.reversible as rev

    recorded, original = [], rev._reverse_step

    def spy(*args):
        new = original(*args)
        jax.debug.callback(lambda p: recorded.append(jax.tree.map(np.asarray, p)), new.params)
        return new

    monkeypatch.setattr(rev, "_reverse_step", spy)
    loss, params0, xs, meta = _problem(jnp.float32, steps=12, width=16, batch=8)
    grads = _reversible_grads(loss, params0, xs, meta, jnp.asarray(0.5, jnp.float32))
    jax.block_until_ready(grads)
    jax.effects_barrier()
    monkeypatch.setattr(rev, "_reverse_step", original)
    _, forward = reversible_forward(
        loss, params0, xs, learning_rate=0.5, meta=meta, trajectory=True
    )
    assert len(recorded) == 12
    _assert_same_ints(jax.tree.map(lambda *r: np.stack(r), *recorded[::-1]), forward.params)
