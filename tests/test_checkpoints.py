"""``metagrad.checkpoints``: exact round trips through orbax, the last two steps kept, damage."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metagrad import checkpoints

CONFIG = {"dataset": "glyphs", "data_root": None, "inner_lr": 0.4, "grid": (1e-3, 2e-3)}


def _state(scale: float) -> dict:
    scale = float(scale)
    layers = [{"w": jnp.full((3, 4), scale), "b": jnp.arange(4.0)}, {"w": jnp.ones((4, 2)) * 2}]
    meta = {"layers": layers, "lr": jnp.asarray(0.1 * scale)}
    opt = optax.chain(optax.clip(1.0), optax.adam(1e-3))
    opt_state = opt.init(meta)
    # A few Adam steps so that the moments and the count are not their initial values.
    for _ in range(2):
        _, opt_state = opt.update(jax.tree.map(jnp.ones_like, meta), opt_state, meta)
    return {"meta": meta, "opt_state": opt_state, "seen": np.arange(5, dtype=np.int32), "n": 7}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder with steps 2, 4, 6 saved (2 is dropped: the last two are kept)."""
    directory = tmp_path_factory.mktemp("ckpt") / "checkpoints"
    for step in (2, 4, 6):
        checkpoints.save_checkpoint(
            directory, _state(step), step=step, metadata={"config": CONFIG, "at": step}
        )
    return directory


def _copy(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "copy"))


def _assert_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert type(x) is type(y) or isinstance(x, jax.Array) and isinstance(y, jax.Array)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert np.asarray(x).dtype == np.asarray(y).dtype


def test_round_trip_is_exact_and_keeps_the_last_two(saved):
    assert checkpoints.checkpoint_steps(saved) == [4, 6]
    assert checkpoints.latest_step(saved) == 6
    target = _state(0.0)  # a freshly initialised state: the structure and the placement
    restored = checkpoints.load_checkpoint(saved, target=target)
    assert restored.step == 6 and restored.path == saved / "6"
    # JSON metadata: tuples come back as lists, None as None.
    assert restored.metadata == {"config": {**CONFIG, "grid": [1e-3, 2e-3]}, "at": 6}
    _assert_equal(restored.state, _state(6))  # NamedTuples of optax states, lists, ints
    clip_state, (adam_state, _) = restored.state["opt_state"][0], restored.state["opt_state"][1]
    assert isinstance(adam_state, optax.ScaleByAdamState) and int(adam_state.count) == 2
    assert clip_state == optax.EmptyState()
    # An earlier step, and the metadata alone.
    _assert_equal(checkpoints.load_checkpoint(saved, target=target, step=4).state, _state(4))
    assert checkpoints.load_metadata(saved).metadata["at"] == 6
    # Without a target: host numpy arrays in orbax's structure (NamedTuples as dicts).
    plain = checkpoints.load_checkpoint(saved).state
    assert isinstance(plain["meta"]["layers"][0]["w"], np.ndarray)
    np.testing.assert_array_equal(plain["meta"]["layers"][0]["w"], np.full((3, 4), 6.0))
    assert plain["n"] == 7


def test_damaged_newest_falls_back_to_the_previous(saved, tmp_path):
    directory = _copy(saved, tmp_path)
    newest = max(
        (p for p in (directory / "6").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    with pytest.warns(RuntimeWarning, match=r"could not read step 6: .*truncated.*Restored step 4"):
        restored = checkpoints.load_checkpoint(directory, target=_state(0.0))
    assert restored.step == 4
    _assert_equal(restored.state, _state(4))
    # The next save at step 6 replaces the damaged one.
    checkpoints.save_checkpoint(directory, _state(6), step=6, metadata={"at": 6})
    assert checkpoints.load_checkpoint(directory, target=_state(0.0)).step == 6
    # Both damaged: a clear error naming the folder and what to do.
    for step in (4, 6):
        shutil.rmtree(directory / str(step) / "state")
    with pytest.raises(ValueError, match=rf"{directory}: no checkpoint could be read .*damaged"):
        checkpoints.load_checkpoint(directory, target=_state(0.0))


def test_missing_empty_and_foreign_folders_are_clear_errors(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'nowhere'} does not exist"):
        checkpoints.load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        checkpoints.load_metadata(tmp_path / "empty")
    (tmp_path / "checkpoint.pkl").write_bytes(b"\x80\x04junk")
    with pytest.raises(FileNotFoundError, match="is a file, not a checkpoint folder"):
        checkpoints.load_checkpoint(tmp_path / "checkpoint.pkl")
    foreign = tmp_path / "foreign" / "3"
    foreign.mkdir(parents=True)
    (foreign / "weights.bin").write_bytes(b"0" * 16)
    with pytest.raises(ValueError, match=r"step 3: .*not written by save_checkpoint"):
        checkpoints.load_checkpoint(tmp_path / "foreign")
    with pytest.raises(FileNotFoundError, match="has no step 5; it holds steps 4, 6"):
        checkpoints.load_checkpoint(saved, step=5)
    with pytest.raises(ValueError, match="tree structures do not match"):
        checkpoints.load_checkpoint(saved, target={"meta": jnp.ones(3)}, step=6)


def test_interrupted_save_and_a_run_that_went_back(saved, tmp_path):
    directory = _copy(saved, tmp_path)
    # A save killed half-way leaves orbax's temporary folder: it is not a step.
    partial = directory / "8.orbax-checkpoint-tmp-1234567"
    (partial / "state").mkdir(parents=True)
    assert checkpoints.latest_step(directory) == 6
    # A run started over (or resumed from step 4) replaces the steps at or after its own.
    checkpoints.save_checkpoint(directory, _state(5), step=5, metadata={"at": 5})
    assert checkpoints.checkpoint_steps(directory) == [4, 5]
    assert checkpoints.load_metadata(directory).metadata == {"at": 5}
    with pytest.raises(ValueError, match="JSON-able"):
        checkpoints.save_checkpoint(directory, _state(1), step=9, metadata={"f": object()})
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        checkpoints.save_checkpoint(directory, _state(1), step=-1)
