"""Classes 4-6 of the fault issue: ordinary mistakes get one clear line, checked before any work,
and nothing is silently reinterpreted."""

import re

import jax.numpy as jnp
import optax
import pytest

import metagrad
from metagrad.cli import main
from metagrad.fewshot.training import TrainConfig, train

from .common import CONFIG, splits

BAD_NUMBERS = ["0", "-2", "nan", "inf", "1e400", "x", ""]


@pytest.mark.parametrize("value", BAD_NUMBERS)
@pytest.mark.parametrize(
    "command, flag",
    [
        (["fewshot", "train"], "--outer-lr"),
        (["fewshot", "train"], "--inner-lr"),
        (["fewshot", "train"], "--test-steps"),
        (["fewshot", "train"], "--ways"),
        (["meta", "lr"], "--meta-lr"),
        (["meta", "reweight"], "--steps"),
        (["bench", "meta-grad"], "--width"),
        (["bench", "meta-grad"], "--steps"),
        (["width", "sweep"], "--batch-size"),
        (["check"], "--delta"),
    ],
)
def test_bad_numbers_are_refused_when_parsed(command, flag, value, cli_error):
    said = cli_error([*command, f"{flag}={value}"])
    assert said.startswith("status 2") and f"argument {flag}: must be" in said
    assert "Traceback" not in said


@pytest.mark.parametrize(
    "flag, value, what",
    [("--proximal", "-1", "a finite number >= 0"), ("--proximal", "nan", "a finite number >= 0"),
     ("--cg-steps", "0", "a positive integer"), ("--cg-steps", "2.5", "a positive integer"),
     ("--cg-damping", "-1", "a finite number >= 0"),
     ("--stationarity-tol", "0", "a finite number > 0"),
     ("--cg-max-gain", "-1", "a finite number > 0"),
     ("--inner-momentum", "1", "a number >= 0 and < 1"),
     ("--inner-momentum", "-0.1", "a number >= 0 and < 1"),
     ("--inner-momentum", "inf", "a number >= 0 and < 1")],
)  # fmt: skip
def test_inner_loop_flags_are_refused_when_parsed(flag, value, what, cli_error):
    said = cli_error(["fewshot", "train", "--algorithm", "imaml", f"{flag}={value}"])
    assert "status 2" in said and f"argument {flag}: must be {what}; got {value!r}" in said


@pytest.mark.parametrize(
    "argv, message",
    [(["--algorithm", "maml", "--cg-steps", "3"],
      "--cg-steps applies to the implicit meta-gradient (algorithm 'imaml') only"),
     (["--algorithm", "maml", "--cg-damping", "1"],
      "--cg-damping applies to the implicit meta-gradient (algorithm 'imaml') only"),
     (["--algorithm", "fomaml", "--cg-negative-curvature", "stop"],
      "--cg-negative-curvature applies to the implicit meta-gradient (algorithm 'imaml') only"),
     (["--algorithm", "imaml", "--cg-negative-curvature", "halt"],
      "--cg-negative-curvature must be one of 'continue', 'stop'; got 'halt'"),
     (["--algorithm", "anil", "--stationarity-tol", "1"],
      "--stationarity-tol applies to the implicit meta-gradient (algorithm 'imaml') only"),
     (["--algorithm", "maml", "--cg-max-gain", "1"],
      "--cg-max-gain applies to the implicit meta-gradient (algorithm 'imaml') only"),
     (["--algorithm", "imaml", "--proximal", "0"], "--proximal must be > 0 for algorithm='imaml'"),
     (["--algorithm", "mamlpp", "--inner-momentum", "0.5"],
      "--inner-momentum needs a fixed inner learning rate; algorithm='mamlpp'")],
)  # fmt: skip
def test_inner_loop_flags_the_algorithm_has_no_use_for_are_refused(
    argv, message, cli_error, tmp_path
):
    said = cli_error(["fewshot", "train", *argv, "--out", str(tmp_path / "run")])
    assert message in said and "Traceback" not in said
    assert not (tmp_path / "run").exists()


def test_resuming_with_another_inner_loop_is_refused(tmp_path):
    config = TrainConfig(**{**CONFIG.__dict__, "iterations": 1, "inner_momentum": 0.5})
    train(config, tmp_path, splits=splits(), show_progress=False)
    other = TrainConfig(**{**config.__dict__, "inner_momentum": 0.9})
    with pytest.raises(ValueError, match=r"differs in inner_momentum \(saved 0.5, now 0.9\)"):
        train(other, tmp_path, splits=splits(), show_progress=False)


@pytest.mark.parametrize("budget", ["0.5", "inf", "1e400", "nan", "-1GiB", "lots"])
def test_memory_budgets_must_be_finite_sizes(budget, cli_error, tmp_path):
    said = cli_error(["plan", f"--memory-budget={budget}"])
    assert "--memory-budget: memory budget must be a finite size" in said


def test_output_paths_are_checked_before_any_work(tmp_path, cli_error):
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    said = cli_error(["meta", "lr", "--out", str(a_file)])
    assert f"argument --out: '{a_file}' is a file; --out takes a folder" in said
    assert "is a folder; give a file path" in cli_error(
        ["bench", "meta-grad", "--json", str(tmp_path)]
    )
    said = cli_error(["fewshot", "train", "--out", str(a_file / "run")])
    assert re.search(r"argument --out: .* cannot write to .*is a file, not a folder", said)
    assert a_file.read_text() == "mine"


def test_a_negative_test_time_proximal_term_is_refused(tmp_path, cli_error):
    said = cli_error(["fewshot", "eval", "--out", str(tmp_path), "--proximal", "-1"])
    assert "argument --proximal: must be a finite number >= 0; got '-1'" in said


def test_library_errors_become_one_line(tmp_path, cli_error):
    # A run folder whose checkpoint folder is a file: the command says so in one line.
    (tmp_path / "checkpoints").write_text("")
    said = cli_error(["fewshot", "eval", "--out", str(tmp_path)])
    assert "checkpoints is a file, not a checkpoint folder" in said and "Traceback" not in said


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import metagrad.cli.plan

    monkeypatch.setattr(metagrad.cli.plan, "run_plan", lambda args: 1 / 0)
    assert main(["plan"]) == 1
    err = capsys.readouterr().err
    assert "metagrad plan: error: division by zero" in err and "--debug" in err
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "plan"])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ways": 9}, r"ways=9 but the train split .* has 8 classes; use --ways 8"),
        ({"queries": 6}, r"shots \+ queries = 7 but the smallest class of the train split"),
        ({"pattern": "111/111"}, r"pattern has 3 column\(s\) but the model has 3 layers"),
    ],
)
def test_episodes_and_patterns_are_checked_against_the_data_and_model_first(
    change, message, tmp_path
):
    if "pattern" in change:
        change, message = {"pattern": "11/11"}, r"pattern has 2 column\(s\) but the model has 3"
    with pytest.raises(ValueError, match=message):
        train(TrainConfig(**{**CONFIG.__dict__, **change}), tmp_path, splits=splits(),
              show_progress=False)  # fmt: skip
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    "field, value", [("test_steps", 0), ("test_steps", -2), ("outer_lr", -1.0),
                     ("inner_lr", float("nan")), ("dataset", "cifar")],
)  # fmt: skip
def test_library_configurations_refuse_what_the_cli_refuses(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{**CONFIG.__dict__, field: value})


def test_memory_budget_needs_mode_auto():
    with pytest.raises(ValueError, match="memory_budget is used by mode='auto' only"):
        metagrad.Bilevel(
            inner_loss=lambda p, m, b: jnp.sum(p**2), outer_loss=lambda p, m, b: jnp.sum(p),
            inner_optimizer=optax.sgd(0.1), steps=2, memory_budget=2**30,
        )  # fmt: skip


def test_an_empty_pattern_is_refused_not_ignored(cli_error, tmp_path):
    said = cli_error(["fewshot", "train", "--pattern", "", "--out", str(tmp_path)])
    assert "--pattern" in said and "expected rows of 0/1" in said


def test_optimisers_refuse_what_they_would_silently_ignore():
    import warnings

    import jax

    from metagrad.models import MLP
    from metagrad.optim import find_layers, kfac, make_optimizer, set_base_shapes

    with pytest.raises(TypeError, match=r"make_optimizer\('sgd'\): got keywords \['exponent'\]"):
        make_optimizer("sgd", 0.1, exponent=0.5)
    with pytest.raises(ValueError, match="kfac: layers is empty .* plain SGD"):
        kfac(())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert find_layers(lambda p, x: jnp.sum(p["w"] * x), {"w": jnp.ones(3)}, jnp.ones(3)) == ()
    assert any("no dense or convolution layer" in str(w.message) for w in caught)

    def params(sizes):
        return MLP(sizes).init(jax.random.PRNGKey(0))

    set_base_shapes(params((8, 64, 64, 3)), params((8, 16, 16, 3)))  # width only: fine
    with pytest.raises(ValueError, match="changes by a factor 4 against the base, but the width"):
        set_base_shapes(params((32, 64, 64, 3)), params((8, 32, 32, 3)))
