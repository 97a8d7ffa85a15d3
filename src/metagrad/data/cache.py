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
        return Path(env).expanduser()
    return Path.home() / ".cache" / "metagrad"


def config_digest(config: Any) -> str:
    """Short stable hash of a JSON-serialisable configuration, used in cache file names."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_npz_atomic(path: str | os.PathLike[str], **arrays: np.ndarray) -> Path:
    """Write arrays to a compressed ``.npz`` file atomically (temporary file + ``os.replace``).

    Args:
        path: destination file; its folder is created if needed.
        **arrays: the arrays to store, by name.

    Returns:
        The destination path.
    """
    return write_npz(path, **arrays)
