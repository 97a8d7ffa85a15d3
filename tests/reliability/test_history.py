"""Class 2 of the fault issue: no run deletes or truncates an earlier run's files unless asked."""

import warnings

import pytest

from metagrad.checkpoints import checkpoint_steps
from metagrad.fewshot.training import TrainConfig, train
from metagrad.runs import PREVIOUS, archive_run

from .common import CONFIG, metrics, splits


def _files(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_relaunching_without_flags_resumes_and_restart_keeps_every_earlier_file(tmp_path):
    data = splits()
    short = TrainConfig(**{**CONFIG.__dict__, "iterations": 4})
    train(short, tmp_path, splits=data, show_progress=False)
    before = _files(tmp_path)
    # The same command again: the run is finished, nothing is rewritten.
    train(short, tmp_path, splits=data, show_progress=False)
    assert _files(tmp_path) == before
    # --restart: a new run; every file of the earlier one is kept, byte for byte, in previous/.
    train(short, tmp_path, splits=data, show_progress=False, restart=True)
    (kept,) = (tmp_path / PREVIOUS).iterdir()
    assert _files(kept) == before
    assert checkpoint_steps(tmp_path / "checkpoints") == [2, 4]
    # A second restart keeps both earlier runs.
    train(short, tmp_path, splits=data, show_progress=False, restart=True)
    assert sorted(p.name.split("-")[0] for p in (tmp_path / PREVIOUS).iterdir()) == ["1", "2"]


def test_another_configuration_is_refused_and_changes_nothing(tmp_path):
    data = splits()
    short = TrainConfig(**{**CONFIG.__dict__, "iterations": 2, "val_every": 0})
    train(short, tmp_path, splits=data, show_progress=False)
    before = _files(tmp_path)
    other = TrainConfig(**{**short.__dict__, "shots": 2})
    with pytest.raises(ValueError, match=r"differs in shots \(saved 1, now 2\).*--restart"):
        train(other, tmp_path, splits=data, show_progress=False)
    assert _files(tmp_path) == before


def test_a_run_killed_before_its_first_checkpoint_is_kept_aside(tmp_path):
    data = splits()
    killed = train(CONFIG, tmp_path, splits=data, show_progress=False, stop_after=1)
    assert killed["killed"] and checkpoint_steps(tmp_path / "checkpoints") == []
    orphan = (tmp_path / "metrics.jsonl").read_bytes()
    with pytest.warns(RuntimeWarning, match="no checkpoint to resume from; they were moved"):
        train(CONFIG, tmp_path, splits=data, show_progress=False)
    (kept,) = (tmp_path / PREVIOUS).iterdir()
    assert (kept / "metrics.jsonl").read_bytes() == orphan
    assert [m["step"] for m in metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 3, 4, 5, 6, 6]


def test_a_fresh_folder_keeps_the_users_own_files_in_place(tmp_path):
    # e.g. `metagrad fewshot train --out OUT > OUT/train.log`: the shell creates the log first.
    (tmp_path / "train.log").write_text("started\n")
    short = TrainConfig(**{**CONFIG.__dict__, "iterations": 2, "val_every": 0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(short, tmp_path, splits=splits(), show_progress=False)
    assert (tmp_path / "train.log").read_text() == "started\n"
    assert not (tmp_path / PREVIOUS).exists()
    assert checkpoint_steps(tmp_path / "checkpoints") == [2]


def test_archive_of_an_empty_folder_is_nothing(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert archive_run(tmp_path) is None
