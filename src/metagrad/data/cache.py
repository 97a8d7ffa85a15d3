"""On-disk cache for built datasets: where it lives, and writing it atomically.

A dataset that takes seconds or minutes to build is stored once as a compressed ``.npz`` file.
Writes go to a temporary file in the same folder followed by ``os.replace``, which is atomic on
POSIX and Windows: a build killed half-way, or two processes building at once, never leave a
truncated file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from metagrad.files import write_npz

#: Environment variable that overrides the default cache folder ``~/.cache/metagrad``.
CACHE_ENV_VAR = "METAGRAD_CACHE"


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Folder for cached datasets.

    Args:
        override: a folder to use instead of the default; takes precedence over the environment.

    Returns:
        ``override`` if given, else ``$METAGRAD_CACHE`` if set, else ``~/.cache/metagrad``. The
        folder is not created here (reading a cache should not create folders).
    """
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if path.exists() and not path.is_dir():
            raise ValueError(
                f"{CACHE_ENV_VAR}={env!r} is a file; it must name a folder for cached datasets "
                f"(unset it to use ~/.cache/metagrad)."
            )
        return path
    return Path.home() / ".cache" / "metagrad"


def config_digest(config: Any) -> str:
    """Short stable hash of a JSON-serialisable configuration, used in cache file names."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_cache(path: str | os.PathLike[str], **arrays: np.ndarray) -> bool:
    """Writes a dataset cache file; if the cache folder is unusable, warns and goes on.

    A cache only saves time: a folder that cannot be written (read-only, a file in the way) is
    no reason to stop a run. The warning names the folder and :data:`CACHE_ENV_VAR`.

    Returns:
      Whether the file was written.
    """
    try:
        save_npz_atomic(path, **arrays)
    except OSError as err:
        warnings.warn(
            f"could not write the dataset cache {path} ({err.strerror or err}); the data is "
            f"rebuilt next time. Set {CACHE_ENV_VAR} to a writable folder to keep it.",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


def save_npz_atomic(path: str | os.PathLike[str], **arrays: np.ndarray) -> Path:
    """Write arrays to a compressed ``.npz`` file atomically (temporary file + ``os.replace``).

    Args:
        path: destination file; its folder is created if needed.
        **arrays: the arrays to store, by name.

    Returns:
        The destination path.
    """
    return write_npz(path, **arrays)
