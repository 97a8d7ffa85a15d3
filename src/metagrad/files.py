"""Files that survive a crash: every write goes to a temporary file that is renamed into place.

``os.replace`` is atomic on POSIX and Windows, so a kill at any moment leaves either the old file or
the new one, never half of one. JSON reports, metric logs and dataset caches go through here
(checkpoints go through :mod:`metagrad.checkpoints`, which uses orbax).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[IO[Any]], None], *, binary: bool
) -> Path:
    """Calls ``write(f)`` on a temporary file beside ``path`` and renames it into place.

    Args:
      path: the destination; its folder is created if missing.
      write: fills the open file.
      binary: open the temporary file in binary mode.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it visible
        # mkstemp creates the file readable by its owner only; results are shared like any file.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Writes ``payload`` as indented, strict JSON, atomically.

    numpy and JAX scalars/arrays are converted; non-finite numbers become ``null`` (NaN) or the
    strings ``"inf"`` / ``"-inf"`` (strict JSON readers reject bare ``NaN``; see ``json_ready``).
    """

    def write(f: IO[str]) -> None:
        f.write(dumps(payload, indent=2))
        f.write("\n")

    return atomic_write(path, write, binary=False)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Writes ``text`` atomically."""
    return atomic_write(path, lambda f: f.write(text), binary=False)


def write_npz(path: str | os.PathLike[str], **arrays: np.ndarray) -> Path:
    """Writes arrays to a compressed ``.npz`` file atomically (dataset caches)."""
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays), binary=True)


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 110) -> Path:
    """Writes a matplotlib figure as PNG atomically and closes it (every plot of the package).

    Args:
      fig: the figure, laid out already (``fig.tight_layout()`` or ``constrained_layout``).
      path: the destination; its folder is created if missing. The format is the file's suffix.
      dpi: resolution.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.
    """
    import matplotlib.pyplot as plt  # only where a figure is drawn

    fmt = Path(path).suffix.lstrip(".") or "png"
    try:
        return atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format=fmt), binary=True)
    finally:
        plt.close(fig)


def dumps(payload: Any, *, indent: int | None = None) -> str:
    """``payload`` as strict JSON text (``json_ready`` applied): never a bare ``NaN``."""
    return json.dumps(json_ready(payload), indent=indent, allow_nan=False)


def json_ready(obj: Any) -> Any:
    """``obj`` with arrays as lists and non-finite floats as ``None`` (NaN) or ``"inf"``/``"-inf"``.

    Args:
      obj: dicts, lists, tuples, numbers, strings, paths, numpy / JAX arrays and scalars.

    Returns:
      Plain Python data that ``json.dumps(..., allow_nan=False)`` accepts.
    """
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, str | int | bool) or obj is None:
        return obj
    return json_ready(_json_default(obj))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy / JAX arrays and scalars
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
