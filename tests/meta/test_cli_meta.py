"""The ``metagrad meta`` commands: --quick smoke runs and errors that name the flag."""

import json

import pytest

from metagrad.cli import build_parser, main


def test_meta_is_registered():
    assert "meta" in build_parser()._subparsers._group_actions[0].choices


def test_reweight_quick_writes_json_report_and_plots(tmp_path, monkeypatch):
    monkeypatch.setenv("METAGRAD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    code = main(["meta", "reweight", "--quick", "--weights", "scorer", "--no-memory-report",
                 "--out", str(out), "--json", str(tmp_path / "r.json")])  # fmt: skip
    assert code == 0
    payload = json.loads((tmp_path / "r.json").read_text())
    assert set(payload["final"]) == {"uniform", "oracle", "learned"}
    assert 0.0 <= payload["auc"] <= 1.0 and payload["inner_steps"] == 6
    assert payload["memory"] == []
    for name in ("report.md", "validation.png", "weights.png", "metrics.jsonl", "checkpoints",
                 "reweight.json", "weights.npz"):  # fmt: skip
        assert (out / name).exists(), name
    assert (out / "validation.png").read_bytes()[:4] == b"\x89PNG"
    assert "ROC AUC" in (out / "report.md").read_text()
    # --resume on a finished run with more meta-steps continues it.
    assert main(["meta", "reweight", "--quick", "--weights", "scorer", "--no-memory-report",
                 "--meta-steps", "4", "--resume", "--out", str(out)]) == 0  # fmt: skip
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(m["step"] for m in lines) == 4


def test_lr_quick_writes_json_report_and_plots(tmp_path, monkeypatch):
    monkeypatch.setenv("METAGRAD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    # --quick skips the (minutes-long) memory report unless --memory-budget is given.
    code = main(["meta", "lr", "--quick", "--grid", "1e-3,1e-2",
                 "--out", str(out), "--json", str(tmp_path / "l.json")])  # fmt: skip
    assert code == 0
    payload = json.loads((tmp_path / "l.json").read_text())
    assert set(payload["final"]) == {"lr=0.001", "lr=0.01", "learned"}
    assert set(payload["learned_lrs"]) == {"embed", "block0.attn", "block0.mlp", "head"}
    assert payload["memory"] == [] and payload["meta_overhead"] > 0
    for name in ("report.md", "validation.png", "learning_rates.png", "lr.json"):
        assert (out / name).exists(), name


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["reweight", "--corruption", "noise"], "--corruption"),
        (["reweight", "--weights", "mlp"], "--weights"),
        (["reweight", "--fraction", "1.5"], "--fraction"),
        (["reweight", "--meta-steps", "0"], "--meta-steps"),
        (["reweight", "--mode", "forward"], "--mode"),
        (["reweight", "--memory-budget", "lots"], "--memory-budget"),
        (["reweight", "--text", "/no/such/folder"], "--text"),
        (["lr", "--grid", "1e-3,fast"], "--grid"),
        (["lr", "--steps", "0"], "--steps"),
        (["lr", "--text", "/no/such/file.txt"], "--text"),
    ],
)
def test_errors_name_the_flag(argv, flag, cli_error):
    assert flag in cli_error(["meta", *argv, "--quick"])


def test_empty_text_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="--text.*no text files"):
        main(["meta", "reweight", "--quick", "--text", str(tmp_path), "--out", str(tmp_path / "o")])


def test_mode_auto_takes_the_memory_budget_in_bytes():
    from metagrad.cli.meta import QUICK, _config
    from metagrad.meta.learning_rates import LRConfig

    args = build_parser().parse_args(
        ["meta", "lr", "--quick", "--mode", "auto", "--memory-budget", "512MiB"]
    )
    assert _config("lr", LRConfig, args, QUICK).memory_budget == 512 * 2**20
    # Without --mode auto the budget is the memory report's only: not part of the run's config.
    args = build_parser().parse_args(["meta", "lr", "--quick", "--memory-budget", "512MiB"])
    assert _config("lr", LRConfig, args, QUICK).memory_budget is None
