"""A training run's folder: checkpoints, the metrics log, resuming, and never losing history.

Every training command (``fewshot train``, ``meta reweight``, ``meta lr``) keeps its run in one
folder ``OUT`` and behaves the same way:

* **Resume by default.** Run the same command again and it continues from the newest readable
  checkpoint in ``OUT/checkpoints/`` (a damaged newest one falls back to the one before, with a
  warning). The metrics log is cut back to that step, so the continued run writes exactly the
  lines an uninterrupted run would have.
* **Nothing is deleted.** Starting over (``restart=True``, ``--restart``) or a run killed before
  its first checkpoint (a metrics log or checkpoints folder that nothing can be resumed from): the
  earlier files are moved to ``OUT/previous/<n>/``, never removed. Other files in a fresh folder
  (a redirected log) stay where they are.
* **The log survives crashes.** ``metrics.jsonl`` is strict JSON (no bare ``NaN``), appended and
  fsynced at each checkpoint; a line torn by a crash is dropped on reading, with a warning.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple

from metagrad import checkpoints
from metagrad.files import dumps, write_text

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
PREVIOUS = "previous"
_OLD_CHECKPOINT = "checkpoint.pkl"  # before metagrad.checkpoints used orbax


class Start(NamedTuple):
    """Where a run starts.

    Attributes:
      state: the state to continue from (the fresh state when ``step`` is 0).
      step: the checkpoint's step, 0 for a new run.
      archived: the folder the earlier files were moved to, if any.
    """

    state: Any
    step: int
    archived: Path | None


def start_run(
    out: str | os.PathLike[str],
    *,
    config: Mapping[str, Any],
    fresh: Callable[[], Any],
    extensible: tuple[str, ...] = (),
    restart: bool = False,
    primary: bool = True,
    restart_flag: str = "--restart",
) -> Start:
    """Opens ``out`` for a run: resumes from its newest checkpoint or starts a new run.

    Args:
      out: the run folder (created if missing).
      config: the run's configuration (JSON-ready); a checkpoint of another configuration (other
        than in ``extensible`` fields) is not resumed: the call fails naming the fields.
      fresh: ``() -> state`` at step 0; also the structure checkpoints are restored into.
      extensible: configuration fields that may change on resume (more steps, other periods).
      restart: start over: move the earlier run's files to ``out/previous/<n>/`` first.
      primary: this process writes files (process 0 of a multi-host job).
      restart_flag: how the user asks for a restart, named in messages.

    Returns:
      A :class:`Start`.

    Raises:
      ValueError: the checkpoint is of another configuration, beyond nothing readable, or an
        old pickle; the message names the file and the options.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / CHECKPOINTS
    archived = None
    if restart:
        archived = archive_run(out) if primary else None
        return Start(fresh(), 0, archived)
    if checkpoints.latest_step(ckpt_dir) is None:
        if (out / _OLD_CHECKPOINT).exists():
            raise ValueError(
                f"{out / _OLD_CHECKPOINT} was written by an older metagrad and cannot be resumed "
                f"(checkpoints are now orbax folders in {CHECKPOINTS}/); pass {restart_flag} to "
                f"start over (the old files move to {out / PREVIOUS}/) or use another --out folder."
            )
        # A run killed before its first checkpoint leaves a log that no checkpoint covers.
        if primary and _has_run_files(out):
            archived = archive_run(out)
            warnings.warn(
                f"{out} held files but no checkpoint to resume from; they were moved to "
                f"{archived} and a new run starts.",
                RuntimeWarning,
                stacklevel=2,
            )
        return Start(fresh(), 0, archived)
    config = json.loads(dumps(dict(config)))  # as the checkpoint stores it (tuples as lists)
    way_out = (
        f"Pass {restart_flag} to start over (the unreadable files move to {out / PREVIOUS}/), or "
        "use another --out folder."
    )
    try:
        saved_config = checkpoints.load_metadata(ckpt_dir).metadata.get("config", {})
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"{err} {way_out}") from None
    differ = sorted(
        k for k in set(config) | set(saved_config)
        if k not in extensible and config.get(k) != saved_config.get(k)
    )  # fmt: skip
    if differ:
        detail = ", ".join(
            f"{k} (saved {saved_config.get(k)!r}, now {config.get(k)!r})" for k in differ
        )
        raise ValueError(
            f"{ckpt_dir} holds a run of another configuration; it differs in {detail}. Pass the "
            f"saved values to resume it, {restart_flag} to start over (the earlier files move to "
            f"{out / PREVIOUS}/), or another --out folder."
        )
    # The configuration first: another configuration may have another state structure.
    try:
        saved = checkpoints.load_checkpoint(ckpt_dir, target=fresh())
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"{err} {way_out}") from None
    if primary:
        dropped = cut_metrics(out / METRICS, saved.step)
        if dropped:
            warnings.warn(
                f"{out / METRICS}: dropped {dropped} line(s) after step {saved.step} (the "
                "checkpoint resumed from); the run writes them again.",
                RuntimeWarning,
                stacklevel=2,
            )
    return Start(saved.state, saved.step, None)


def archive_run(out: str | os.PathLike[str]) -> Path | None:
    """Moves every file and folder of ``out`` (but ``previous/``) to ``out/previous/<n>/``.

    Returns:
      The new folder, or ``None`` when there was nothing to move.
    """
    out = Path(out)
    items = [p for p in out.iterdir() if p.name != PREVIOUS] if out.is_dir() else []
    if not items:
        return None
    root = out / PREVIOUS
    root.mkdir(exist_ok=True)
    n = 1 + max(
        (int(p.name.split("-")[0]) for p in root.iterdir() if p.name[:1].isdigit()), default=0
    )
    dest = root / f"{n}-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir()
    for item in items:
        shutil.move(str(item), dest / item.name)
    return dest


def _has_run_files(out: Path) -> bool:
    # A run's traces: its log or its checkpoints folder. Other files (a log the user redirected
    # into the fresh folder, notes) are not a run and stay where they are.
    return (out / METRICS).exists() or (out / CHECKPOINTS).exists()


def read_metrics(path: str | os.PathLike[str], *, warn: bool = True) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl`` file as dicts (empty if the file does not exist).

    A line that does not parse (torn by a crash mid-write) is dropped, with a warning naming it.
    """
    path = Path(path)
    if not path.exists():
        return []
    rows, torn = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            torn.append(number)
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
        else:
            torn.append(number)
    if torn and warn:
        warnings.warn(
            f"{path}: dropped {len(torn)} unreadable line(s) (line {', '.join(map(str, torn[:5]))}"
            "; torn by a crash?).",
            RuntimeWarning,
            stacklevel=2,
        )
    return rows


def cut_metrics(path: str | os.PathLike[str], step: int) -> int:
    """Keeps the readable lines of steps ≤ ``step`` (atomically); returns how many were dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    total = sum(1 for line in path.read_text(errors="replace").splitlines() if line.strip())
    keep = [m for m in read_metrics(path) if m["step"] <= step]
    if len(keep) == total:
        return 0
    write_text(path, "".join(dumps(m) + "\n" for m in keep))
    return total - len(keep)


class MetricsLog:
    """Appends strict-JSON lines to ``metrics.jsonl``; :meth:`sync` makes them durable.

    Use as a context manager. ``enabled=False`` (processes other than 0) writes nothing.
    """

    def __init__(self, path: str | os.PathLike[str], *, enabled: bool = True) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = open(self.path, "a") if enabled else None  # noqa: SIM115

    def write(self, row: Mapping[str, Any]) -> None:
        """Appends one line (non-finite numbers as ``null`` / ``"inf"``)."""
        if self._file is not None:
            self._file.write(dumps(dict(row)) + "\n")

    def flush(self) -> None:
        """Hands the lines to the operating system (survives a killed process)."""
        if self._file is not None:
            self._file.flush()

    def sync(self) -> None:
        """Flushes and fsyncs (survives a power loss); called before each checkpoint."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
