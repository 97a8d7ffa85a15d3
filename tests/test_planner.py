"""mode="auto" and the planner: choices fit the budget and stay exact."""

import jax
import jax.numpy as jnp
import pytest

import metagrad
from inner_loops import adam_tanh_layer, outer_objective
from metagrad import plan_unroll
from metagrad.planner import Candidate, default_candidates, largest_fitting_steps, parse_bytes


def _objective(meta, mode, budget=None, steps=32, width=48):
    step, carry, xs = adam_tanh_layer(meta, steps=steps, width=width, batch=2)
    if mode == "plan":
        return plan_unroll(step, carry, xs, memory_budget=budget)
    return outer_objective(*metagrad.unroll(step, carry, xs, mode=mode, memory_budget=budget))


META = {"weights": jnp.ones(2), "lr": jnp.asarray(0.01)}


@pytest.fixture(scope="module")
def unlimited_plan():
    return _objective(META, "plan")


def test_plan_covers_every_candidate_and_picks_the_estimated_fastest(unlimited_plan):
    plan = unlimited_plan
    assert [r.candidate for r in plan.rows] == list(default_candidates(32))
    assert plan.choice is not None and all(r.fits for r in plan.rows)
    assert plan.choice.estimated_s == min(r.estimated_s for r in plan.rows)
    no_schedule = {
        r.candidate.mode: r.temp_bytes for r in plan.rows if r.candidate.schedule is None
    }
    assert no_schedule["mixflow"] < no_schedule["reverse"]


def test_auto_choice_fits_a_tight_budget_and_is_exact(unlimited_plan):
    sizes = sorted(r.total_bytes for r in unlimited_plan.rows)
    budget = sizes[1]  # only the one or two smallest candidates fit
    plan = _objective(META, "plan", budget=budget)
    assert plan.choice is not None and plan.choice.total_bytes <= budget
    assert all(r.fits == (r.total_bytes <= budget) for r in plan.rows)
    with jax.enable_x64(True):
        meta = jax.tree.map(lambda x: x.astype(jnp.float64), META)
        auto = jax.grad(lambda m: _objective(m, "auto", budget=budget * 2, steps=8, width=8))(meta)
        ref = jax.grad(lambda m: _objective(m, "reverse", steps=8, width=8))(meta)
        for a, b in zip(jax.tree.leaves(auto), jax.tree.leaves(ref), strict=True):
            assert float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) <= 1e-10


def test_nothing_fits():
    with pytest.raises(ValueError, match="no strategy fits memory_budget=1 bytes"):
        _objective(META, "auto", budget=1, steps=4, width=4)


def test_auto_rejects_a_fixed_schedule():
    with pytest.raises(ValueError, match="mode='auto' chooses the schedule too"):
        metagrad.unroll(lambda c, x: (c, x), 0.0, jnp.ones(4), mode="auto", schedule=2)


def test_default_candidates():
    assert {c.schedule for c in default_candidates(2)} == {None}
    assert {c.schedule for c in default_candidates(16)} == {None, "sqrt"}
    assert Candidate("mixflow", (64, 8)) in default_candidates(512)


@pytest.mark.parametrize(
    "text, expected",
    [("4GiB", 4 * 2**30), ("512MiB", 512 * 2**20), ("1.5e9", 1_500_000_000), ("2gb", 2 * 10**9)],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "-4GiB", "lots", "0MiB", "0.5", "inf", "1e400", "nan"])
def test_parse_bytes_errors(text):
    with pytest.raises(ValueError, match="finite size of at least one byte, such as 4GiB"):
        parse_bytes(text)


def test_largest_fitting_steps_finds_the_boundary_of_a_linear_memory_model():
    calls = []

    def total(steps):
        calls.append(steps)
        return 1000 + 37 * steps

    assert largest_fitting_steps(total, 1000 + 37 * 300) == 300
    assert largest_fitting_steps(total, 1000 + 37 * 300 + 36) == 300
    assert largest_fitting_steps(total, 999) == 0
    assert largest_fitting_steps(total, 10**9, limit=64) == 64
    with pytest.raises(ValueError, match="memory_budget"):
        largest_fitting_steps(total, -1)


def test_autotune_times_the_close_fitting_candidates_and_picks_the_fastest_measured():
    from metagrad import planner

    plan = _objective(META, "plan", steps=8, width=8)
    budget = sorted(r.total_bytes for r in plan.rows)[-2]  # the largest candidate does not fit
    plan = _objective(META, "plan", budget=budget, steps=8, width=8)
    step, carry, xs = adam_tanh_layer(META, steps=8, width=8, batch=2)
    tuned = plan_unroll(step, carry, xs, memory_budget=budget, autotune=True)
    timed = [r for r in tuned.rows if r.measured_s is not None]
    best = min(r.estimated_s for r in tuned.rows if r.fits)
    assert timed and all(r.fits for r in timed)
    assert all(r.estimated_s <= planner.AUTOTUNE_WITHIN * best for r in timed)
    assert tuned.choice is not None and tuned.choice.measured_s == min(r.measured_s for r in timed)
    assert tuned.choice.total_bytes <= budget


def test_autotune_argument_errors_and_example_arguments():
    from metagrad import planner

    plan = _objective(META, "plan", steps=4, width=4)
    with pytest.raises(ValueError, match="within must be >= 1"):
        planner.autotune(plan, lambda c: None, within=0.5)
    with pytest.raises(ValueError, match="repeats must be a positive int"):
        planner.autotune(plan, lambda c: None, repeats=0)
    concrete = jnp.arange(3.0)
    args = planner.example_arguments(
        (jax.ShapeDtypeStruct((2, 3), jnp.float32), jax.ShapeDtypeStruct((4,), jnp.int32), concrete)
    )
    assert args[0].shape == (2, 3) and args[0].dtype == jnp.float32
    assert float(jnp.max(jnp.abs(args[0]))) < 0.1
    assert args[1].dtype == jnp.int32 and not bool(jnp.any(args[1]))
    assert args[2] is concrete


def test_auto_with_autotune_is_exact():
    with jax.enable_x64(True):
        meta = jax.tree.map(lambda x: x.astype(jnp.float64), META)

        def tuned(m):
            step, carry, xs = adam_tanh_layer(m, steps=6, width=6, batch=2)
            return outer_objective(*metagrad.unroll(step, carry, xs, mode="auto", autotune=True))

        auto = jax.jit(jax.grad(tuned))(meta)
        ref = jax.grad(lambda m: _objective(m, "reverse", steps=6, width=6))(meta)
        for a, b in zip(jax.tree.leaves(auto), jax.tree.leaves(ref), strict=True):
            assert float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) <= 1e-10
