"""Class 3 of the fault issue: torn logs and damaged checkpoints resume from the last good state."""

import shutil

import pytest

from metagrad.checkpoints import checkpoint_steps
from metagrad.fewshot.training import TrainConfig, train
from metagrad.runs import read_metrics

from .common import CONFIG, metrics, splits


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    train(CONFIG, out, splits=splits(), show_progress=False)
    return metrics(out / "metrics.jsonl")


def test_a_torn_metrics_line_is_dropped_and_the_run_resumes_exactly(tmp_path, uninterrupted):
    data = splits()
    train(CONFIG, tmp_path, splits=data, show_progress=False, stop_after=5)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "kind": "tr')  # a crash in the middle of a write
    with pytest.warns(RuntimeWarning, match="unreadable line"):
        assert max(m["step"] for m in read_metrics(tmp_path / "metrics.jsonl")) == 5
    with pytest.warns(RuntimeWarning):
        train(CONFIG, tmp_path, splits=data, show_progress=False)
    assert metrics(tmp_path / "metrics.jsonl") == uninterrupted


def test_a_damaged_latest_checkpoint_resumes_from_the_one_before(tmp_path, uninterrupted):
    data = splits()
    train(TrainConfig(**{**CONFIG.__dict__, "iterations": 4}), tmp_path, splits=data,
          show_progress=False)  # fmt: skip
    assert checkpoint_steps(tmp_path / "checkpoints") == [2, 4]
    for f in (tmp_path / "checkpoints" / "4").rglob("*"):
        if f.is_file() and f.stat().st_size > 64:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncated by a full disk
    with pytest.warns(RuntimeWarning, match="could not read step 4.*Restored step 2"):
        train(CONFIG, tmp_path, splits=data, show_progress=False)
    assert metrics(tmp_path / "metrics.jsonl") == uninterrupted


@pytest.mark.parametrize("damage", ["empty", "foreign"])
def test_an_unreadable_checkpoint_folder_names_the_file_and_the_way_out(tmp_path, damage):
    data = splits()
    short = TrainConfig(**{**CONFIG.__dict__, "iterations": 2, "val_every": 0})
    train(short, tmp_path, splits=data, show_progress=False)
    step = tmp_path / "checkpoints" / "2"
    if damage == "empty":
        shutil.rmtree(step)
        step.mkdir()
    else:
        for f in step.rglob("*"):
            if f.is_file():
                f.write_bytes(b"not a checkpoint")
    with pytest.raises((ValueError, FileNotFoundError), match="checkpoints.*--restart"):
        train(short, tmp_path, splits=data, show_progress=False)
    # The way out it names works, and keeps the damaged files aside.
    train(short, tmp_path, splits=data, show_progress=False, restart=True)
    assert checkpoint_steps(tmp_path / "checkpoints") == [2]
    assert any((tmp_path / "previous").iterdir())
