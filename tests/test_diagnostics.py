"""metagrad.check: float32 against a float64 reference, sensitivity, causes and verdict."""

import json
import re

import jax
import jax.numpy as jnp
import optax
import pytest

import metagrad
from metagrad.bench.meta_grad import build
from metagrad.cli import main

TINY_LM = {"seq": 16, "layers": 1, "width": 16, "batch": 2, "steps": 3}


def test_cli_flags_eps_outside_the_root_and_names_the_cause(tmp_path, capsys):
    """`metagrad check` on the LM case as it was shipped before (optax.adam, ε outside the root)."""
    sizes = [f"--{k}={v}" for k, v in TINY_LM.items()]
    path = tmp_path / "check.json"
    code = main(
        ["check", "--case", "lm", *sizes, "--eps-root", "0", "--modes", "reverse,mixflow"]
        + ["--json", str(path)]
    )
    assert code == 1  # ill-conditioned: scripts can stop here
    report = json.loads(path.read_text())
    assert report["verdict"] == "ill-conditioned"
    assert report["sensitivity"] > 1e-2  # a 1e-6 relative perturbation moves it by > 1%
    assert any("ε outside the square root" in c and "eps_root" in c for c in report["causes"])
    assert report["trajectory"]["adaptive_update"] and not report["trajectory"]["root_safe"]
    assert set(report["rel_error_vs_float64"]) == {"reverse", "mixflow"}
    assert "verdict: ill-conditioned" in capsys.readouterr().out


def test_the_shipped_default_is_sound():
    built = build("lm", "mixflow", **TINY_LM)
    report = metagrad.check(
        built.problem, **built.check_inputs, modes=("reverse", "mixflow"), directions=1
    )
    assert report.verdict == "sound", report.summary()
    assert report.causes == []
    assert report.trajectory["adaptive_update"] and report.trajectory["root_safe"]
    assert max(report.rel_error_vs_float64.values()) < 1e-3
    assert report.sensitivity < 1e-3
    assert report.reference == {"mode": "reverse", "dtype": "float64", "device": "cpu"}
    as_json = report.to_json()
    assert set(as_json) >= {"rel_error_vs_float64", "sensitivity", "verdict", "causes"}
    json.dumps(as_json, allow_nan=False)


def _sgd_problem(lr):
    return metagrad.Bilevel(
        inner_loss=lambda p, w, b: jnp.mean(w * jnp.cos(3.0 * (b @ p))),
        outer_loss=lambda p, w, b: jnp.mean(jnp.sin(b @ p)),
        inner_optimizer=optax.sgd(lr),
        steps=12,
    )


def test_sgd_problem_is_sound_and_an_expanding_loop_is_not():
    x = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
    data = {"params": jnp.full(3, 0.3), "inner_batch": x, "outer_batch": x}
    w = jnp.linspace(0.5, 1.5, 4)
    sound = metagrad.check(_sgd_problem(0.1), w, **data, modes=("mixflow",))
    assert sound.verdict == "sound", sound.summary()
    assert sound.trajectory["root_safe"] and not sound.trajectory["adaptive_update"]
    # A learning rate far beyond 2/λ_max: every step multiplies the tangent by |1 - lr·λ| > 1.
    expanding = metagrad.check(_sgd_problem(3.0), w, **data, modes=("mixflow",))
    assert expanding.verdict == "ill-conditioned"
    assert expanding.trajectory["growth_per_step"] > 2
    assert any("tangent growth" in c for c in expanding.causes)


def test_check_meta_gradient_on_any_function():
    def make(mode):
        def value_and_meta_grad(w, p0, x):
            return jax.value_and_grad(
                lambda m: jnp.sum(
                    metagrad.unroll(
                        lambda p, xb: (
                            p - 0.1 * metagrad.grad(lambda q: jnp.sum(m * jnp.sin(q * xb)))(p),
                            None,
                        ),
                        p0,
                        x,
                        mode=mode,
                    )[0]
                    ** 2
                )
            )(w)

        return value_and_meta_grad

    args = (jnp.linspace(0.5, 1.0, 3), jnp.ones(3), jnp.linspace(0.0, 1.0, 12).reshape(4, 3))
    report = metagrad.check_meta_gradient(make, args, perturb=1)
    assert report.verdict == "sound"
    assert set(report.rel_error_vs_float64) == set(metagrad.MODES)
    assert all(e < 1e-5 for e in report.rel_error_vs_float64.values())
    assert report.trajectory == {}


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="reference_mode must be 'reverse' or 'remat'"):
        metagrad.check_meta_gradient(lambda m: None, (1.0,), perturb=0, reference_mode="mixflow")
    with pytest.raises(ValueError, match="perturb must be the index"):
        metagrad.check_meta_gradient(lambda m: None, (1.0,), perturb=3)
    with pytest.raises(TypeError, match="problem must be a metagrad.Bilevel"):
        metagrad.check(lambda: 0, 1.0, outer_batch=None)
    with pytest.raises(ValueError, match="pass params="):
        metagrad.check(_sgd_problem(0.1), jnp.ones(4), outer_batch=jnp.ones((4, 3)))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--case", "resnet"], "--case must be one of"),
        (["--modes", "fast"], "--modes takes a comma-separated subset"),
        (["--reference-mode", "mixflow"], "--reference-mode must be reverse or remat"),
        (["--delta", "0"], "argument --delta: must be a finite number > 0"),
        (["--case", "mlp", "--seq", "8"], "--seq applies to --case lm"),
        (["--width", "0"], "argument --width: must be a positive integer"),
    ],
)
def test_cli_errors(argv, message, cli_error):
    assert re.search(message, cli_error(["check", *argv]))


def test_a_kink_crossed_is_a_note_not_ill_conditioning():
    """A perturbation that crosses a ReLU kink makes the meta-gradient jump; re-measured at a 100×
    smaller perturbation the change is tiny, so the verdict stays sound and a note explains."""
    problem = metagrad.Bilevel(
        inner_loss=lambda p, w, b: jnp.sum(w * jax.nn.relu(p - b)) + 0.5 * jnp.sum(p**2),
        outer_loss=lambda p, w, b: jnp.sum(p**2),
        inner_optimizer=optax.sgd(0.1),
        steps=2,
    )
    kink = jnp.array([2.0, 1.0 - 2**-24])  # the second coordinate sits 6e-8 above its kink
    report = metagrad.check(
        problem, jnp.ones(2), params=jnp.array([3.0, 1.0]), inner_batch=kink, outer_batch=None
    )
    assert report.sensitivity > 1e-2  # the 1e-6 perturbation crossed the kink
    assert report.small_delta_sensitivity < 1e-5  # a 1e-8 one did not: a jump, not amplification
    assert report.verdict == "sound" and report.causes == []
    assert any("kink" in n for n in report.notes)
