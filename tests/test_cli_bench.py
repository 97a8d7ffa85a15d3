"""The ``metagrad bench meta-grad`` command: runs, prints a table, writes JSON and plots."""

import json
import re

import pytest

from metagrad.bench.plots import plot_memory_sweep
from metagrad.cli import main


def test_meta_grad_quick_writes_json(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "bench",
            "meta-grad",
            "--quick",
            "--cases",
            "mlp",
            "--repeats",
            "1",
            "--precision",
            "highest",
            "--json",
            str(tmp_path / "r.json"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    payload = json.loads((tmp_path / "r.json").read_text())
    assert {r["mode"] for r in payload["results"]} == {"reverse", "remat", "mixflow"}
    for row in payload["results"]:
        assert row["temp_mib"] > 0 and row["median_s"] > 0 and len(row["times_s"]) == 1
        # Exactness against float64, beside the condition estimate that makes it meaningful.
        assert row["rel_error_vs_float64"] <= 1e-5
        assert 0 < row["sensitivity"] <= 1e-4
        assert row["reference"] == {"mode": "remat", "dtype": "float64", "device": "cpu"}
    assert payload["matmul_precision"] == "highest"
    assert (out / "meta_grad.json").exists()
    assert "meta-gradient benchmark" in capsys.readouterr().out


def test_sweep_plot_is_a_png(tmp_path):
    rows = [
        {"parameter": "T", "value": t, "mode": m, "temp_mib": base * t, "per_step_state_mib": 1.0}
        for t in (2, 4, 8)
        for m, base in (("reverse", 10.0), ("remat", 3.0), ("mixflow", 2.0))
    ]
    path = plot_memory_sweep(rows, tmp_path / "sweep.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--cases", "lm,cnn"],
            "--cases takes a comma-separated subset of lm, mlp, maml; got 'lm,cnn'",
        ),
        (["--modes", "fast"], "--modes takes a comma-separated subset of reverse, remat, mixflow"),
        (["--sweep", "T=2,x"], "--sweep expects P=V1,V2,... with positive integers"),
        (["--repeats", "0"], "argument --repeats: must be a positive integer; got '0'"),
        (["--json", "."], "argument --json: '.' is a folder; give a file path"),
    ],
)
def test_bad_arguments(argv, message, cli_error):
    assert message in cli_error(["bench", "meta-grad", *argv])


def test_unknown_sweep_parameter():
    from metagrad.bench.meta_grad import sweep

    with pytest.raises(ValueError, match="unknown parameter 'Q'"):
        sweep("Q", [1], ["mixflow"])


def test_unroll_quick_writes_json_and_png(tmp_path, capsys):
    path = tmp_path / "unroll.json"
    code = main(
        [
            "bench",
            "unroll",
            "--quick",
            "--cases",
            "mlp",
            "--steps",
            "2,4",
            "--strategies",
            "mixflow,mixflow+sqrt,reversible",
            "--repeats",
            "1",
            "--largest-limit",
            "8",
            "--json",
            str(path),
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    payload = json.loads(path.read_text())
    results = payload["results"]
    assert {(r["steps"], r["strategy"]) for r in results} == {
        (t, s) for t in (2, 4) for s in ("mixflow", "mixflow+sqrt", "reversible")
    }
    for row in results:
        assert row["ran"] and row["temp_mib"] > 0 and row["median_s"] > 0
    assert all(r["largest_steps"] == 8 for r in payload["largest"])  # tiny: the limit fits
    assert {r["limited_by"] for r in payload["largest"]} == {"search limit"}
    for row in payload["validation"]:
        assert row["choice"] in row["fitting"] and row["ratio"] > 0
        assert row["verdict"] in ("fastest", "tie", "slower")
    assert len(payload["validation_autotune"]) == len(payload["validation"])
    for row, plain in zip(payload["validation_autotune"], payload["validation"], strict=True):
        assert row["budget_mib"] == plain["budget_mib"] and row["choice"] in plain["fitting"]
        assert row["verdict"] in ("fastest", "tie", "slower")
        assert all(v > 0 for v in row["timed"].values())
    assert payload["acceptance"]["steps"] == 4
    assert (tmp_path / "long_unroll.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mode='auto' check" in capsys.readouterr().out


def test_unroll_max_run_memory_compiles_only(tmp_path):
    path = tmp_path / "unroll.json"
    argv = ["bench", "unroll", "--quick", "--cases", "mlp", "--steps", "2"]
    argv += ["--strategies", "reverse", "--max-run-memory", "1KiB", "--largest-limit", "0"]
    assert main([*argv, "--json", str(path)]) == 0
    (row,) = json.loads(path.read_text())["results"]
    assert not row["ran"] and row["median_s"] is None and row["total_mib"] > 1 / 1024


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cases", "maml"], "--cases takes a comma-separated subset of lm, mlp; got 'maml'"),
        (["--steps", "8,x"], "--steps takes comma-separated positive ints"),
        (["--strategies", "fast"], "--strategies takes a comma-separated subset of reverse"),
        (["--budget", "big"], "--budget: memory budget must be a finite size"),
        (["--max-run-memory", "0GiB"], "--max-run-memory: memory budget must be a finite size"),
    ],
)
def test_unroll_bad_arguments(argv, message, cli_error):
    assert re.search(message, cli_error(["bench", "unroll", *argv]))
