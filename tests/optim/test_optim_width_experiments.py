"""Coordinate check, transfer sweep and the ``metagrad width`` command on tiny problems."""

import argparse
import json

import numpy as np
import pytest

from metagrad.cli import width as width_cli
from metagrad.cli.arguments import parse_list
from metagrad.optim.coord_check import coord_check, fit_slope, plot_coord_checks, summarize
from metagrad.optim.experiment import WidthConfig
from metagrad.optim.sweep import plot_sweep, power_of_two_grid, sweep
from metagrad.optim.tasks import ClassificationTask, load_task, synthetic_task

TINY = {"depth": 1, "base_width": 4, "batch_size": 8}


@pytest.fixture(scope="module")
def task():
    return synthetic_task(n_train=64, n_eval=32, image_size=4, n_classes=3, latent_dim=4)


def test_synthetic_task_is_deterministic_and_standardised(task):
    again = synthetic_task(n_train=64, n_eval=32, image_size=4, n_classes=3, latent_dim=4)
    np.testing.assert_array_equal(task.x_train, again.x_train)
    assert task.x_train.shape == (64, 4, 4, 1) and task.flat().x_train.shape == (64, 16)
    np.testing.assert_allclose(task.x_train.reshape(64, -1).mean(0), 0.0, atol=1e-5)
    assert set(np.unique(task.y_train)) <= {0, 1, 2}
    assert isinstance(task, ClassificationTask)


def test_fit_slope():
    assert fit_slope([64, 128, 256], [1.0, 2.0, 4.0]) == pytest.approx(1.0)
    assert fit_slope([64, 128], [1.0, 1.0]) == pytest.approx(0.0)
    assert np.isnan(fit_slope([64, 128], [1.0, np.inf]))


def test_coord_check_kfac_tiny(task, tmp_path):
    config = WidthConfig(optimizer="kfac", param="mup", refresh=1, **TINY)
    r = coord_check(config, [4, 8], task, lr=0.1, steps=2, seeds=1, progress=False)
    assert r["layers"] == ["0:input", "1:output"]
    assert np.asarray(r["delta_h"]["0:input"]).shape == (2, 2)  # (widths, steps)
    assert set(r["slopes"]) == {"0:input", "1:output"}
    assert all(np.isfinite(v) for v in r["slopes"].values())
    s = summarize(r, 10.0)
    assert s["all_within_tolerance"] and s["tolerance"] == 10.0
    plot_coord_checks([r], str(tmp_path / "cc.png"))
    assert (tmp_path / "cc.png").stat().st_size > 1000


def test_lr_sweep_sgd_tiny(task, tmp_path):
    config = WidthConfig(optimizer="sgd", param="mup", **TINY)
    r = sweep(config, [4, 8], [0.1, 1e6], task, steps=3, seeds=1, progress=False)
    for w in ("4", "8"):
        res = r["results"][w]
        assert res["train_loss"][1] == float("inf")  # lr 1e6 diverges
        assert res["best"] == 0.1 and res["best_index"] == 0
    assert r["summary"]["best_shift_grid_steps"] == 0
    plot_sweep([r], str(tmp_path / "sweep.png"))
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    assert power_of_two_grid(0.25, 2) == [0.25, 0.5, 1.0, 2.0]


def test_grafted_shampoo_sweep_uses_adam_exponents_and_trains(task):
    from metagrad.optim.experiment import build

    config = WidthConfig(
        optimizer="shampoo", param="mup", shampoo_graft="rmsprop", shampoo_warmup=2, **TINY
    )
    kwargs = config.optimizer_kwargs()
    assert kwargs["graft"] == "rmsprop" and kwargs["precond_warmup"] == 2
    assert build(config, 8, task).optimizer is not None
    r = sweep(config, [4, 8], [2.0**-6], task, steps=3, seeds=1, progress=False)
    assert all(np.isfinite(r["results"][w]["train_loss"][0]) for w in ("4", "8"))
    with pytest.raises(ValueError, match="graft must be one of"):
        sweep(
            WidthConfig(optimizer="shampoo", shampoo_graft="adam", **TINY),
            [4],
            [0.1],
            task,
            steps=1,
            seeds=1,
            progress=False,
        )


def test_sweep_and_config_errors(task):
    with pytest.raises(ValueError, match="over must be one of"):
        sweep(WidthConfig(**TINY), [4], [0.1], task, over="momentum")
    with pytest.raises(ValueError, match="needs optimizer 'kfac'"):
        sweep(WidthConfig(optimizer="sgd", **TINY), [4], [0.1], task, over="damping", lr=0.1)
    with pytest.raises(ValueError, match="needs a fixed lr"):
        sweep(WidthConfig(**TINY), [4], [0.1], task, over="damping")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        sweep(WidthConfig(**TINY), [4], [0.1], task, steps=0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        WidthConfig(optimizer="lamb")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        WidthConfig(batch_size=0)
    with pytest.raises(ValueError, match="b_trace_floor must be finite and >= 0"):
        WidthConfig(b_trace_floor=-1e-3)
    # The floor is μP K-FAC's (trace rule): SP and the other rules keep the plain damping.
    assert WidthConfig(b_trace_floor=1e-3).optimizer_kwargs()["b_trace_floor"] == 1e-3
    for other in ({"param": "sp"}, {"damping_rule": "pi"}):
        assert WidthConfig(b_trace_floor=1e-3, **other).optimizer_kwargs()["b_trace_floor"] == 0.0
    with pytest.raises(ValueError, match="at least two widths"):
        coord_check(WidthConfig(**TINY), [4], task, lr=0.1)
    with pytest.raises(ValueError, match="name must be one of"):
        load_task("cifar")
    with pytest.raises(ValueError, match="n_classes must be at least 2"):
        synthetic_task(n_classes=1)
    with pytest.raises(ValueError, match="need 0 < low <= high"):
        power_of_two_grid(1.0, 0.5)


def _parser():
    parser = argparse.ArgumentParser(prog="metagrad")
    width_cli.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_sweep_writes_json_and_png(tmp_path):
    args = _parser().parse_args(
        [
            "width", "sweep", "--optimizer", "sgd", "--param", "mup", "--widths", "4,8",
            "--lrs", "2^-3:2^-2", "--steps", "2", "--seeds", "1", "--depth", "1",
            "--base-width", "4", "--batch-size", "8", "--n-train", "64", "--no-progress",
            "--json", str(tmp_path / "s.json"), "--out", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    assert args.func(args) == 0
    payload = json.loads((tmp_path / "s.json").read_text())
    assert payload["values"] == [0.125, 0.25]
    assert [s["config"]["param"] for s in payload["sweeps"]] == ["mup"]
    assert (tmp_path / "out" / "sweep_lr.png").exists()
    assert (tmp_path / "out" / "sweep_lr.json").exists()


def test_cli_parsers_reject_bad_input():
    assert width_cli.parse_values("2^-2:2^0", "--lrs") == [0.25, 0.5, 1.0]
    assert width_cli.parse_values("0.5,2^-3", "--lrs") == [0.5, 0.125]
    assert width_cli.parse_widths("8,16") == [8, 16]
    for bad in ("", "0,1", "a:b", "2:1"):
        with pytest.raises(SystemExit, match="--lrs"):
            width_cli.parse_values(bad, "--lrs")
    with pytest.raises(SystemExit, match="--widths"):
        width_cli.parse_widths("8,x")
    with pytest.raises(SystemExit, match="--optimizer takes"):
        parse_list("sgd,lbfgs", ("sgd", "adam"), "--optimizer", width_cli.COMMAND)
    args = _parser().parse_args(["width", "sweep", "--optimizer", "sgd", "--over", "damping"])
    with pytest.raises(SystemExit, match="--over damping needs --optimizer kfac"):
        args.func(args)
    assert _parser().parse_args(["width", "coord-check", "--lr", "2^-9"]).lr == 2.0**-9
    with pytest.raises(SystemExit):
        _parser().parse_args(["width", "coord-check", "--b-trace-floor", "-1"])
    for bad in ("2^-x", "-0.1"):
        with pytest.raises(SystemExit):
            _parser().parse_args(["width", "coord-check", f"--lr={bad}"])


def test_glyph_task_from_the_glyph_benchmark(monkeypatch):
    import metagrad.data
    from metagrad.data import ClassDataset

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (5 * 4, 28, 28, 1), dtype=np.uint8)
    labels = np.repeat(np.arange(5), 4)
    train = ClassDataset.from_labels(images, labels, [f"c{i}" for i in range(5)])

    class FakeBenchmark:
        pass

    bench = FakeBenchmark()
    bench.train = train
    monkeypatch.setattr(metagrad.data, "load_glyphs", lambda progress=True: bench)
    task = load_task("glyphs", n_classes=3, eval_per_class=1)
    assert task.x_train.shape == (9, 28, 28, 1) and task.x_eval.shape == (3, 28, 28, 1)
    assert task.n_classes == 3 and sorted(set(task.y_eval.tolist())) == [0, 1, 2]
    with pytest.raises(ValueError, match="n_classes must be an int between 2 and 5"):
        load_task("glyphs", n_classes=6)
    with pytest.raises(ValueError, match="lower eval_per_class"):
        load_task("glyphs", n_classes=2, eval_per_class=4)
