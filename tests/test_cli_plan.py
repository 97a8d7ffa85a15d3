"""The ``metagrad plan`` command: compiles every strategy of a tiny case, prints, writes JSON."""

import json
import re

import pytest

from metagrad.cli import main

TINY_MLP = ["--case", "mlp", "--sizes", "4,8,3", "--batch", "2"]


def test_plan_tiny_mlp_writes_json(tmp_path, capsys):
    path = tmp_path / "plan.json"
    code = main(["plan", *TINY_MLP, "--steps", "4", "--memory-budget", "1GiB", "--json", str(path)])
    assert code == 0
    payload = json.loads(path.read_text())
    strategies = [r["strategy"] for r in payload["rows"]]
    # default_candidates(4): every mode, with and without sqrt checkpoints, and the reversible loop
    assert strategies == [
        "reverse",
        "remat",
        "mixflow",
        "reverse+sqrt",
        "remat+sqrt",
        "mixflow+sqrt",
        "reversible",
    ]
    assert payload["memory_budget"] == 2**30 and payload["steps"] == 4
    assert all(r["fits"] and r["temp_bytes"] > 0 and r["estimated_s"] > 0 for r in payload["rows"])
    chosen = [r for r in payload["rows"] if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["strategy"] == payload["choice"]
    assert chosen[0]["estimated_s"] == min(r["estimated_s"] for r in payload["rows"])
    out = capsys.readouterr().out
    assert "plan: meta-gradient strategies" in out and "reversible" in out


def test_plan_tight_budget_marks_what_does_not_fit(tmp_path):
    path = tmp_path / "plan.json"
    main(["plan", *TINY_MLP, "--steps", "2", "--no-reversible", "--json", str(path)])
    rows = json.loads(path.read_text())["rows"]
    budget = min(r["total_bytes"] for r in rows)
    main(["plan", *TINY_MLP, "--steps", "2", "--no-reversible", "--memory-budget", f"{budget}B",
          "--json", str(path)])  # fmt: skip
    payload = json.loads(path.read_text())
    assert all(r["fits"] == (r["total_bytes"] <= budget) for r in payload["rows"])
    assert payload["choice"] in [r["strategy"] for r in payload["rows"] if r["fits"]]


def test_plan_autotune_times_the_close_candidates_and_chooses_the_fastest_measured(tmp_path):
    path = tmp_path / "plan.json"
    code = main(["plan", *TINY_MLP, "--steps", "4", "--autotune", "--json", str(path)])
    assert code == 0
    payload = json.loads(path.read_text())
    timed = [r for r in payload["rows"] if r["measured_s"] is not None]
    assert len(timed) >= 2 and all(r["fits"] and r["measured_s"] > 0 for r in timed)
    chosen = next(r for r in payload["rows"] if r["chosen"])
    assert chosen["measured_s"] == min(r["measured_s"] for r in timed)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--memory-budget", "lots"], "--memory-budget: memory budget must be a finite size"),
        (["--memory-budget=-4GiB"], "such as 4GiB, 512MiB or 1e9; got '-4GiB'"),
        (["--case", "cnn"], "--case must be lm .* or mlp .*; got 'cnn'"),
        (["--steps", "0"], "argument --steps: must be a positive integer; got '0'"),
        (["--case", "mlp", "--seq", "64"], "--seq apply to --case lm only"),
        (["--case", "mlp", "--sizes", "4,x"], "--sizes takes at least two comma-separated"),
        (["--sizes", "4,8"], "--sizes applies to --case mlp only"),
        (["--width", "12", "--steps", "1"], "width // heads .* must be even"),
    ],
)
def test_bad_arguments(argv, message, cli_error):
    assert re.search(message, cli_error(["plan", *argv]))
