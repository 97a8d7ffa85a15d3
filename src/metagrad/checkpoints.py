"""Checkpoints through orbax-checkpoint: sharded, atomic, the last few kept, verified on load.

A checkpoint *directory* holds one sub-folder per saved step (``checkpoints/4/``,
``checkpoints/6/``), each written by :mod:`orbax.checkpoint`:

* ``state/``: the pytree of arrays. Sharded ``jax.Array`` s are passed to orbax as they are, so
  every process (host) writes its own shards; nothing is gathered to one host.
* ``metadata/``: JSON with the step, a format tag and the caller's metadata (a run's
  configuration). Steps and configurations never go through pickle.

A step is written into a temporary folder that is renamed into place once complete, so a kill
during a save leaves the previous checkpoints as they were. The last ``keep`` steps (default 2) are
kept: when the newest cannot be read (truncated, damaged), :func:`load_checkpoint` warns and falls
back to the one before. A missing folder, one with no checkpoint (empty, or written by something
else) and one whose every step is damaged are each a clear error that names the folder.

Restoring onto another number of devices works: pass a ``target`` whose leaves carry the new
shardings (a ``jax.Array`` or ``jax.ShapeDtypeStruct`` with a sharding per leaf; each host then
reads only its shards), or numpy leaves / no target at all for whole host arrays. The target also
gives back the saved structure exactly (optax states as NamedTuples, lists, dicts).

With several processes every process calls :func:`save_checkpoint` and :func:`load_checkpoint`
(they are collective). orbax is imported on first use, so ``import metagrad.checkpoints`` is cheap.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from metagrad.files import write_json

PyTree = Any

FORMAT = "metagrad.checkpoints/1"
"""The format tag in every step's metadata; a folder without it was not written here."""
KEEP = 2
"""Steps kept by default: the newest and one to fall back to."""

_STATE, _META = "state", "metadata"
_MANIFEST = "metagrad_files.json"  # sizes and CRC-32s of a step's files, written after the step


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One restored step.

    Attributes:
      state: the pytree of arrays (``None`` from :func:`load_metadata`).
      step: the step it was saved at.
      metadata: the JSON metadata given to :func:`save_checkpoint` (``{}`` if none).
      path: the step's folder.
    """

    state: PyTree
    step: int
    metadata: dict[str, Any]
    path: Path


def save_checkpoint(
    directory: str | os.PathLike[str],
    state: PyTree,
    *,
    step: int,
    metadata: Mapping[str, Any] | None = None,
    keep: int = KEEP,
) -> Path:
    """Saves ``state`` as step ``step`` of ``directory``, atomically, keeping the last ``keep``.

    Steps at or after ``step`` already in ``directory`` belong to a run that went back (started
    over, or resumed from an earlier step); they are replaced.

    Args:
      directory: the checkpoint folder (created if missing).
      state: a pytree of arrays (``jax.Array``, sharded or not, numpy arrays, Python scalars).
        Sharded arrays are written shard by shard by the processes that hold them.
      step: the step number (>= 0).
      metadata: JSON-able values stored beside the arrays (e.g. the run's configuration).
      keep: how many of the newest steps to keep (>= 1).

    Returns:
      The step's folder.

    Raises:
      ValueError: for a negative step, ``keep < 1`` or metadata that is not JSON-able.
    """
    import orbax.checkpoint as ocp

    if not isinstance(step, int | np.integer) or step < 0:
        raise ValueError(f"save_checkpoint: step must be an int >= 0; got {step!r}.")
    if keep < 1:
        raise ValueError(f"save_checkpoint: keep must be >= 1; got {keep!r}.")
    step = int(step)
    payload = {"format": FORMAT, "step": step, "metadata": dict(metadata or {})}
    try:
        payload = json.loads(json.dumps(payload, default=_json_default))
    except (TypeError, ValueError) as err:
        raise ValueError(f"save_checkpoint: metadata must be JSON-able ({err}).") from None
    directory = Path(directory).absolute()
    with _manager(directory, keep=keep) as manager:
        for stale in sorted(s for s in manager.all_steps() if s >= step):
            manager.delete(stale)
        manager.save(
            step,
            args=ocp.args.Composite(
                **{_STATE: ocp.args.PyTreeSave(state), _META: ocp.args.JsonSave(payload)}
            ),
            force=True,
        )
        manager.wait_until_finished()
    path = directory / str(step)
    if jax.process_index() == 0:
        _write_manifest(path)
    return path


def load_checkpoint(
    directory: str | os.PathLike[str], *, target: PyTree = None, step: int | None = None
) -> Checkpoint:
    """Restores the newest readable step of ``directory`` (or ``step``).

    If the newest step cannot be read, a warning names it and the step before is tried.

    Args:
      directory: a folder written by :func:`save_checkpoint`.
      target: a pytree of the saved structure (e.g. the freshly initialised state), used for the
        structure (NamedTuples, lists) and the placement of the result: a ``jax.Array`` or a
        ``jax.ShapeDtypeStruct`` with a sharding is restored with that sharding (each host reads
        its shards; the device count may differ from the run that saved it), a numpy array or
        Python scalar as a host value. ``None``: host numpy arrays in the structure orbax
        records (NamedTuples come back as dicts, tuples as lists).
      step: restore exactly this step (no fall-back).

    Returns:
      A :class:`Checkpoint`.

    Raises:
      FileNotFoundError: when ``directory`` holds no checkpoint (missing, empty, or written by
        something else), or ``step`` is not in it.
      ValueError: when no step can be read (each step's reason is given).
    """
    return _restore(Path(directory).absolute(), target=target, step=step, arrays=True)


def load_metadata(directory: str | os.PathLike[str], *, step: int | None = None) -> Checkpoint:
    """The step and metadata of the newest readable step (no arrays are read; ``state`` is None).

    Args:
      directory: a folder written by :func:`save_checkpoint`.
      step: read exactly this step.

    Returns:
      A :class:`Checkpoint` with ``state=None``.

    Raises:
      FileNotFoundError, ValueError: as :func:`load_checkpoint`.
    """
    return _restore(Path(directory).absolute(), target=None, step=step, arrays=False)


def checkpoint_steps(directory: str | os.PathLike[str]) -> list[int]:
    """The complete steps saved in ``directory``, oldest first (``[]`` if there are none)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    # Complete steps are folders named by their number; orbax writes a step under a temporary
    # name and renames it when complete.
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def latest_step(directory: str | os.PathLike[str]) -> int | None:
    """The newest complete step in ``directory``, or ``None`` when it holds none."""
    steps = checkpoint_steps(directory)
    return steps[-1] if steps else None


# -- internals -------------------------------------------------------------------------------------


def _manager(directory: Path, *, keep: int = KEEP, create: bool = True) -> Any:
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=create,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=create,
    )
    handlers = {_STATE: ocp.PyTreeCheckpointHandler(), _META: ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _restore(directory: Path, *, target: PyTree, step: int | None, arrays: bool) -> Checkpoint:
    steps = checkpoint_steps(directory)
    if not steps:
        what = "does not exist" if not directory.exists() else "holds no checkpoint"
        if directory.exists() and not directory.is_dir():
            what = "is a file, not a checkpoint folder"
        raise FileNotFoundError(
            f"{directory} {what} (a folder of numbered steps written by "
            "metagrad.checkpoints.save_checkpoint); point to a run's checkpoint folder, or start "
            "the run over."
        )
    if step is not None:
        if step not in steps:
            raise FileNotFoundError(
                f"{directory} has no step {step}; it holds steps {', '.join(map(str, steps))}."
            )
        candidates = [step]
    else:
        candidates = steps[::-1]
    failures: list[str] = []
    with _manager(directory, create=False) as manager:
        for s in candidates:
            try:
                restored = _restore_step(manager, directory, s, target, arrays)
            except Exception as err:  # noqa: BLE001 - any failure to read a step means it is unusable
                failures.append(f"step {s}: {_reason(err)}")
                continue
            if failures:
                warnings.warn(
                    f"{directory}: could not read {'; '.join(failures)}. Restored step {s} "
                    "instead.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return restored
    raise ValueError(
        f"{directory}: no checkpoint could be read ({'; '.join(failures)}). If the run's state "
        "changed shape (another configuration or model), use another folder; otherwise the "
        "files are damaged."
    )


def _restore_step(
    manager: Any, directory: Path, step: int, target: PyTree, arrays: bool
) -> Checkpoint:
    import orbax.checkpoint as ocp

    path = directory / str(step)
    if not (path / _META).is_dir():
        raise ValueError(f"{path} has no {_META}/ folder (not written by save_checkpoint)")
    if arrays:
        _verify_manifest(path)
    meta = manager.restore(step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()}))[_META]
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("step") != step:
        raise ValueError(f"not a {FORMAT} checkpoint (its metadata is {str(meta)[:80]!r})")
    state = None
    if arrays:
        if target is None:
            saved = manager.item_metadata(step)[_STATE]
            restore_args = jax.tree.map(_host_restore_args, saved.tree)
            args = ocp.args.PyTreeRestore(restore_args=restore_args)
        else:
            args = ocp.args.PyTreeRestore(
                item=target, restore_args=jax.tree.map(_target_restore_args, target)
            )
        state = manager.restore(step, args=ocp.args.Composite(**{_STATE: args}))[_STATE]
        if target is not None:
            state = jax.tree.map(_like_target, target, state)
    return Checkpoint(state=state, step=step, metadata=meta["metadata"], path=directory / str(step))


def _host_restore_args(leaf_metadata: Any) -> Any:
    """Whole host arrays for a target-less restore (valid on any device count)."""
    import orbax.checkpoint as ocp

    if isinstance(leaf_metadata, ocp.metadata.ArrayMetadata):
        return ocp.RestoreArgs(restore_type=np.ndarray)
    return ocp.RestoreArgs()  # Python scalars and strings as they were saved


def _uncommitted(leaf: Any) -> bool:
    """A ``jax.Array`` placed by default (not by ``device_put`` or a sharded computation)."""
    return isinstance(leaf, jax.Array) and not getattr(leaf, "committed", True)


def _like_target(leaf: Any, restored: Any) -> Any:
    # Restored as a host array, placed the way the target is: left to the default device without
    # being committed to it, so jitted steps reuse what they compiled for the fresh state.
    return jax.device_put(restored) if _uncommitted(leaf) else restored


def _target_restore_args(leaf: Any) -> Any:
    import orbax.checkpoint as ocp

    if _uncommitted(leaf):
        return ocp.RestoreArgs(restore_type=np.ndarray, dtype=leaf.dtype)
    if isinstance(leaf, jax.Array | jax.ShapeDtypeStruct) and leaf.sharding is not None:
        return ocp.ArrayRestoreArgs(sharding=leaf.sharding, global_shape=leaf.shape,
                                    dtype=leaf.dtype)  # fmt: skip
    if isinstance(leaf, np.ndarray | np.generic):
        return ocp.RestoreArgs(restore_type=np.ndarray, dtype=leaf.dtype)
    if isinstance(leaf, jax.ShapeDtypeStruct):  # no sharding: a host array
        return ocp.RestoreArgs(restore_type=np.ndarray, dtype=leaf.dtype)
    return ocp.RestoreArgs(restore_type=type(leaf))


def _write_manifest(path: Path) -> None:
    """Records the size and CRC-32 of every file of a complete step (read back on load)."""
    files = {
        str(f.relative_to(path)): _fingerprint(f)
        for f in sorted(path.rglob("*"))
        if f.is_file() and f.name != _MANIFEST
    }
    write_json(path / _MANIFEST, {"format": FORMAT, "files": files})


def _verify_manifest(path: Path) -> None:
    """Raises ``ValueError`` naming the first file that is missing, truncated or changed since the
    step was saved. A step without a record (killed between the save and the record) is left to
    orbax's own checks."""
    record = path / _MANIFEST
    if not record.exists():
        return
    files = json.loads(record.read_text())["files"]
    for name, (size, crc) in files.items():
        f = path / name
        if not f.is_file():
            raise ValueError(f"{name} is missing")
        actual = f.stat().st_size
        if actual != size:
            raise ValueError(f"{name} has {actual} bytes, {size} were written (truncated?)")
        if _fingerprint(f)[1] != crc:
            raise ValueError(f"{name} changed since it was written (CRC-32 mismatch)")


def _fingerprint(f: Path) -> tuple[int, int]:
    crc = 0
    with open(f, "rb") as fh:
        while chunk := fh.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return f.stat().st_size, crc


def _reason(err: BaseException) -> str:
    """One line: the exception's type and the start of its message."""
    text = " ".join(str(err).split())
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy / JAX scalars and arrays
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


__all__ = [
    "FORMAT",
    "KEEP",
    "Checkpoint",
    "checkpoint_steps",
    "latest_step",
    "load_checkpoint",
    "load_metadata",
    "save_checkpoint",
]
