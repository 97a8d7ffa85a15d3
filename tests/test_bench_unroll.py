"""Pieces of the long-unroll benchmark and of the planner's whole-loop estimate."""

import jax
import jax.numpy as jnp
import pytest

from metagrad import planner
from metagrad.bench import meta_grad, unroll
from metagrad.bench.meta_grad import relative_error

TINY = {"sizes": (6, 8, 3), "batch": 4}


@pytest.mark.parametrize(
    "schedule, steps, copies",
    [
        (None, 512, 1),
        ("sqrt", 512, 2),  # 22 segments of 23 steps, and a tail of 6
        ((64, 8), 512, 1),
        ((25, 5), 128, 2),  # 5 segments of 25 (5 × 5), and a tail of 3
        ((10, 3), 32, 3),  # segments of 10 = 3 + 3 + 3 + 1, and a tail of 2
        ("sqrt", 2, 1),
    ],
)
def test_loop_copies(schedule, steps, copies):
    assert planner.loop_copies(schedule, steps) == copies


def test_candidates_carry_steps_but_compare_without_them():
    assert all(c.steps == 512 for c in planner.default_candidates(512))
    assert planner.Candidate("mixflow", (64, 8)) == planner.Candidate("mixflow", (64, 8), 512)
    assert unroll.candidate("mixflow+nested", 512) == planner.Candidate("mixflow", (64, 8))
    assert planner.nested_schedule(512) == (64, 8)


def test_whole_loop_estimate_of_one_row_divides_the_counted_flops_by_the_loop_copies():
    def fn(x):
        return (x @ x).sum()

    spec = jax.ShapeDtypeStruct((64, 64), jnp.float32)
    compiled = jax.jit(fn).lower(spec).compile()
    flops, bytes_per_s = planner.machine_throughput()
    raw = planner.evaluate(planner.Candidate("mixflow"), compiled)
    plain = planner.evaluate(planner.Candidate("mixflow", None, 100), compiled)
    sqrt = planner.evaluate(planner.Candidate("mixflow", "sqrt", 100), compiled)  # 10 × 10: 1 copy
    tail = planner.evaluate(planner.Candidate("mixflow", "sqrt", 101), compiled)  # 2 copies
    traffic = 2 * plain.temp_bytes / bytes_per_s
    assert plain.estimated_s == pytest.approx(100 * plain.flops / flops + traffic)
    assert sqrt.estimated_s == pytest.approx(plain.estimated_s)
    assert tail.estimated_s == pytest.approx(101 * plain.flops / 2 / flops + traffic)
    assert raw.estimated_s < plain.estimated_s


def test_scheduled_estimate_adds_one_forward_per_level():
    def row(mode, schedule, flops, temp=0):
        cand = planner.Candidate(mode, schedule, 512)
        return planner.PlanRow(cand, temp, temp, flops, 0.0, 0.0, True)

    rows = [
        row("reverse", None, 10.0, temp=2**30),
        row("remat", None, 13.0),  # = reverse + one forward (3 FLOPs)
        row("mixflow", None, 12.0),
        row("mixflow", "sqrt", 1e6),  # its own count is not used: 1 level
        row("mixflow", (64, 8), 1e6),  # 2 levels
    ]
    flops, bytes_per_s = planner.machine_throughput()
    est = [r.estimated_s for r in planner.estimate_times(rows)]
    assert est[0] == pytest.approx(512 * 10.0 / flops + 2 * 2**30 / bytes_per_s)
    # remat moves reverse's per-step residuals, although it keeps none of them
    assert est[1] == pytest.approx(512 * 13.0 / flops + 2 * 2**30 / bytes_per_s)
    assert est[2] == pytest.approx(512 * 12.0 / flops)
    assert est[3] == pytest.approx(512 * 15.0 / flops)
    assert est[4] == pytest.approx(512 * 18.0 / flops)


def test_largest_fitting_steps_starts_from_a_known_fit():
    calls = []

    def total(steps):
        calls.append(steps)
        return 37 * steps

    assert planner.largest_fitting_steps(total, 37 * 300, start=256) == 300
    assert 1 not in calls and 2 not in calls  # the doubling began at 256
    assert planner.largest_fitting_steps(total, 37 * 300, start=512) == 300  # restarts from 1
    with pytest.raises(ValueError, match="start must be an int in"):
        planner.largest_fitting_steps(total, 100, start=0)


def test_reversible_mlp_case_gives_the_mixflow_meta_gradient():
    # optax.trace(0.9) with learning rates lr is the reversible loop with α = lr / (1 - 0.9); the
    # reversible loop runs in 20-bit fixed point (float32 mode), hence the tolerance.
    mixflow = meta_grad.build_mlp("mixflow", steps=6, **TINY)
    reversible = meta_grad.build_mlp(meta_grad.REVERSIBLE, steps=6, **TINY)
    value_m, grad_m = mixflow.fn(*mixflow.args)
    value_r, grad_r = reversible.fn(*reversible.args)
    assert float(value_r) == pytest.approx(float(value_m), rel=1e-4)
    assert relative_error(grad_r, grad_m) < 1e-3
    with pytest.raises(ValueError, match="takes no schedule"):
        meta_grad.build_mlp(meta_grad.REVERSIBLE, steps=4, schedule="sqrt", **TINY)


def test_build_abstract_materialises_nothing():
    built = unroll.build_abstract("mlp", unroll.candidate("mixflow+sqrt", 16), TINY)
    assert all(isinstance(a, jax.ShapeDtypeStruct) for a in jax.tree.leaves(built.args))
    assert jax.tree.leaves(built.args)[-1].shape == (4,)  # outer labels: one batch
