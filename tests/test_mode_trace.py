"""The differentiation mode reaches every trace of the user's step: no cache of JAX's may hand a
step traced in one mode to another mode (issue 12, point 4)."""

import jax
import jax.numpy as jnp
import optax

import metagrad
from metagrad import plan_unroll
from metagrad.autodiff import current_mode
from metagrad.planner import Candidate


def _recording_step(seen):
    """A momentum-free inner step that records the mode it is traced in."""

    def loss(w, x):
        return jnp.sum(jnp.tanh(x * w) ** 2)

    def step(w, x):
        seen.append(current_mode())
        return w - 0.3 * metagrad.grad(loss)(w, x), None

    return step


def test_plan_unroll_traces_each_candidate_in_its_own_mode():
    seen = []
    step = _recording_step(seen)
    candidates = (Candidate("reverse", None), Candidate("mixflow", None))
    plan_unroll(step, jnp.ones(3), jnp.ones((4, 3)), candidates=candidates)
    assert "reverse" in seen and "mixflow" in seen


def test_jitted_step_unrolled_in_mixflow_after_reverse_runs_mixflow(x64):
    seen = []
    jstep = jax.jit(_recording_step(seen))
    xs = jnp.linspace(0.1, 1.0, 12).reshape(4, 3)

    def objective(w0, mode):
        w, _ = metagrad.unroll(jstep, w0, xs, mode=mode)
        return jnp.sum(jnp.sin(w))

    w0 = jnp.linspace(0.5, 1.5, 3)
    reverse = jax.grad(objective)(w0, "reverse")
    seen.clear()
    mixflow = jax.grad(objective)(w0, "mixflow")
    # Traced again, in mixflow: the reverse-mode trace was not reused.
    assert seen and set(seen) == {"mixflow"}
    assert "custom_vjp" in str(jax.make_jaxpr(objective, static_argnums=1)(w0, "mixflow"))
    assert "custom_vjp" not in str(jax.make_jaxpr(objective, static_argnums=1)(w0, "reverse"))
    # And the derivative is still exact (float64 against the reverse-mode reference).
    assert float(jnp.max(jnp.abs(mixflow - reverse)) / jnp.max(jnp.abs(reverse))) < 1e-12


def test_bilevel_in_two_modes_with_a_shared_jitted_loss(x64):
    """A jitted inner loss shared by two problems that differ only in mode."""
    seen = []

    @jax.jit
    def inner(p, w, b):
        seen.append(current_mode())
        return jnp.mean(w * (b @ p) ** 2)

    def problem(mode):
        return metagrad.Bilevel(
            inner_loss=inner,
            outer_loss=lambda p, w, b: jnp.sum((b @ p - 1.0) ** 2),
            inner_optimizer=optax.sgd(0.1),
            steps=3,
            mode=mode,
        )

    b = jnp.linspace(-1.0, 1.0, 8).reshape(4, 2)
    data = {"params": jnp.ones(2), "inner_batch": b, "outer_batch": b}
    w = jnp.linspace(0.5, 1.5, 4)
    _, g_rev = problem("reverse").value_and_grad(w, **data)
    seen.clear()
    _, g_mix = problem("mixflow").value_and_grad(w, **data)
    assert "mixflow" in seen
    assert float(jnp.max(jnp.abs(g_mix - g_rev)) / jnp.max(jnp.abs(g_rev))) < 1e-12
