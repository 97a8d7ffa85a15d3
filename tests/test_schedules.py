"""Checkpoint schedules along the trajectory: exact in every mode, and they cut the T-term."""

import jax
import jax.numpy as jnp
import pytest

import metagrad
from inner_loops import adam_tanh_layer, outer_objective
from metagrad.memory import compiled_cost
from metagrad.schedules import segment_lengths


def _meta_objective(meta, *, mode, schedule, steps, width=4, batch=3):
    step, carry, xs = adam_tanh_layer(meta, steps=steps, width=width, batch=batch)
    return outer_objective(*metagrad.unroll(step, carry, xs, mode=mode, schedule=schedule))


@pytest.mark.parametrize("schedule", [3, "sqrt", (6, 2)])
def test_every_schedule_and_mode_matches_reverse(x64, schedule):
    meta = {"weights": jnp.linspace(0.5, 1.5, 3), "lr": jnp.asarray(0.05)}
    ref = jax.grad(lambda m: _meta_objective(m, mode="reverse", schedule=None, steps=13))(meta)
    for mode in metagrad.MODES:
        got = jax.grad(
            lambda m, mode=mode: _meta_objective(m, mode=mode, schedule=schedule, steps=13)
        )(meta)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
            assert float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) <= 1e-10, (mode, schedule)


def test_sqrt_schedule_cuts_trajectory_memory():
    """T=64 steps of a 96x96 layer on a tiny batch: the T copies of (θ, Adam state, g) dominate."""
    meta = {"weights": jnp.ones(2), "lr": jnp.asarray(0.01)}
    temp = {}
    for schedule in (None, "sqrt", (16, 4)):
        fn = jax.grad(
            lambda m, s=schedule: _meta_objective(
                m, mode="mixflow", schedule=s, steps=64, width=96, batch=2
            )
        )
        temp[schedule] = compiled_cost(fn, meta).temp_bytes
    assert temp["sqrt"] < 0.35 * temp[None], temp
    assert temp[(16, 4)] < 0.35 * temp[None], temp


def test_segment_lengths():
    assert segment_lengths(None, 100) == ()
    assert segment_lengths("sqrt", 100) == (10,)
    assert segment_lengths("sqrt", 1) == ()
    assert segment_lengths(8, 100) == (8,)
    assert segment_lengths((64, 8), 512) == (64, 8)
    assert segment_lengths((64, 8), 10) == (8,)  # levels longer than the loop are dropped


@pytest.mark.parametrize("bad", ["log", 0, (4, 8), (8, 8), 2.5, True])
def test_bad_schedule(bad):
    with pytest.raises(ValueError, match="schedule must be None .* got"):
        metagrad.unroll(lambda c, x: (c, x), 0.0, jnp.ones(10), schedule=bad)


def test_mismatched_step_axes():
    with pytest.raises(ValueError, match="same leading \\(step\\) axis.*\\[3, 4\\]"):
        metagrad.unroll(lambda c, x: (c, None), 0.0, (jnp.ones(3), jnp.ones(4)))
