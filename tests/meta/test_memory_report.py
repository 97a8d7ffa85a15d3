"""The memory report: compiled memory per mode at T and the largest T within a budget."""

import jax
import jax.numpy as jnp
import optax

from metagrad.meta.memory_report import memory_report, total_bytes
from metagrad.meta.online import window_value_and_grad


def _builder(width=64, batch=256):
    """Meta-gradient (learning rate) of T SGD steps of a tanh layer: activations dominate."""

    def loss(w, _, x):
        return jnp.mean(jnp.tanh(x @ w) ** 2)

    def build(mode, steps):
        fn = window_value_and_grad(loss, loss, lambda lr: optax.sgd(lr), mode=mode)
        w = jax.ShapeDtypeStruct((width, width), jnp.float32)
        xs = jax.ShapeDtypeStruct((steps, batch, width), jnp.float32)
        x = jax.ShapeDtypeStruct((batch, width), jnp.float32)
        lr = jax.ShapeDtypeStruct((), jnp.float32)
        state = jax.eval_shape(optax.sgd(0.1).init, w)
        return jax.jit(fn), (lr, w, state, xs, x)

    return build


def test_largest_steps_fit_the_budget_and_the_next_does_not():
    build = _builder()
    budget = 4 * 2**20
    rows = memory_report(build, ["reverse", "mixflow"], 4, budget, show_progress=False)
    assert [r["mode"] for r in rows] == ["reverse", "mixflow"]
    for row in rows:
        t = row["largest_steps"]
        assert t >= 1 and not row["limit_reached"] and row["budget_mib"] == 4
        assert total_bytes(build, row["mode"], t) <= budget < total_bytes(build, row["mode"], t + 1)
        assert row["total_mib"] * 2**20 == total_bytes(build, row["mode"], 4)
    # Reverse-over-reverse keeps every step's activations: it fits fewer steps.
    assert rows[0]["largest_steps"] < rows[1]["largest_steps"]
