"""Byte-level language-modelling data from text every machine has: the Python standard library.

The corpus is the ``.py`` source of the running interpreter's standard library (found with
``sysconfig.get_paths()["stdlib"]``): about 12 MB of real code, comments and docstrings, no
download. What is left out, and why:

* ``site-packages``: installed third-party code differs between machines; the corpus must not.
* test folders (``test``, ``tests``, ``idle_test``): half of the stdlib's bytes, highly repetitive
  test tables; leaving them out keeps the build and the corpus small and the text "library code".
* ``pydoc_data``: auto-generated English documentation stored as a Python dict. It is kept apart
  as out-of-domain *prose* (:func:`stdlib_prose`), the "wrong domain" text of data-weighting
  experiments.

Files are split into train / validation / test **by file**: a file's split is decided by the
SHA-256 hash of its path relative to the stdlib folder, so no file contributes to two splits, and a
file keeps its split when other files are added or removed (deterministic across machines with the
same Python version). Each file is cut into non-overlapping sequences of ``seq_len`` bytes (the
tail shorter than ``seq_len`` is dropped: every sequence comes from exactly one file). Tokens are
the bytes themselves (vocabulary 256).

The built arrays are cached as one compressed ``.npz`` under the cache folder
(:func:`~metagrad.data.cache.cache_dir`), named by the Python version and a digest of the
configuration and the stdlib path; the first build shows a progress bar (about a second).

:func:`load_text` builds the same structure from any local text file or folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import sysconfig
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from metagrad.progress import progress_bar

from .cache import cache_dir as resolve_cache_dir
from .cache import config_digest, save_cache
from .class_dataset import check_split_fractions

# Bump when the build procedure changes, so that old cache files are not reused.
BUILD_VERSION = 1
SPLIT_NAMES = ("train", "val", "test")
#: Folder names left out of the stdlib corpus (see the module docstring for why).
EXCLUDED_DIRS = frozenset({"site-packages", "test", "tests", "idle_test", "pydoc_data"})


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """What determines a byte-level text dataset; its hash names the cache file.

    Attributes:
      seq_len: bytes per sequence (the LM sees ``seq_len - 1`` inputs and predicts the next byte
        at each position).
      split_fractions: target fractions of *files* in train / validation / test.
    """

    seq_len: int = 128
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)

    def __post_init__(self) -> None:
        object.__setattr__(self, "split_fractions", tuple(float(f) for f in self.split_fractions))
        if not isinstance(self.seq_len, int) or self.seq_len < 2:
            raise ValueError(
                f"TextConfig: seq_len must be an int >= 2 (an input and a target); got "
                f"{self.seq_len!r}."
            )
        check_split_fractions("TextConfig", self.split_fractions)


@dataclasses.dataclass(frozen=True, eq=False)
class TextSplit:
    """The sequences of one split.

    Attributes:
      tokens: ``uint8`` array ``(n, seq_len)`` of byte tokens.
      file_index: ``int32`` array ``(n,)``: the file (index into ``files``) of each sequence.
      files: the files of this split, relative to the corpus root, sorted.
    """

    tokens: np.ndarray
    file_index: np.ndarray
    files: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class TextDataset:
    """Train / validation / test splits of a byte-level corpus.

    Attributes:
      train, val, test: the splits (no file is in two of them).
      config: the configuration it was built from.
      source: the corpus root (the stdlib folder, or the user's file or folder).
      cache_path: the cache file, or None when not cached.
      from_cache: whether it was read from the cache.
    """

    train: TextSplit
    val: TextSplit
    test: TextSplit
    config: TextConfig
    source: str
    cache_path: Path | None = None
    from_cache: bool = False

    def split(self, name: str) -> TextSplit:
        """The split called ``name`` (``"train"``, ``"val"`` or ``"test"``)."""
        if name not in SPLIT_NAMES:
            raise ValueError(f"split must be one of {SPLIT_NAMES}; got {name!r}.")
        return getattr(self, name)


def stdlib_root() -> Path:
    """The folder of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: str | os.PathLike[str] | None = None) -> list[str]:
    """The ``.py`` files of the standard-library corpus, relative to ``root``, sorted.

    Args:
      root: the stdlib folder (default :func:`stdlib_root`).

    Returns:
      POSIX-style relative paths; folders in :data:`EXCLUDED_DIRS` and ``__pycache__`` are skipped.
    """
    root = Path(root) if root is not None else stdlib_root()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruning in place stops os.walk from descending into the excluded folders.
        dirnames[:] = [
            d for d in dirnames if d not in EXCLUDED_DIRS and d != "__pycache__" and d[0] != "."
        ]
        for name in filenames:
            if name.endswith(".py"):
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)


def split_of(relative_path: str, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """The split of a file, from the SHA-256 hash of its relative path.

    Hashing the path (not the position in a listing) keeps each file's split fixed when other
    files appear or disappear, and is the same on every machine.

    Args:
      relative_path: the file's path relative to the corpus root, with ``/`` separators.
      fractions: target fractions of train / validation / test.

    Returns:
      ``"train"``, ``"val"`` or ``"test"``.
    """
    digest = hashlib.sha256(relative_path.encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


def chunk_bytes(data: bytes, seq_len: int) -> np.ndarray:
    """Cuts ``data`` into non-overlapping sequences of ``seq_len`` bytes (the short tail is
    dropped); returns ``uint8 (n, seq_len)``."""
    n = len(data) // seq_len
    return np.frombuffer(data[: n * seq_len], np.uint8).reshape(n, seq_len).copy()


def text_cache_path(
    config: TextConfig | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Cache file of the stdlib corpus built with ``config`` by this Python version.

    Returns:
      ``<cache>/text-stdlib-py<major.minor.micro>-v<version>-<digest>.npz``; the digest covers the
      configuration and the stdlib folder.
    """
    config = config or TextConfig()
    version = ".".join(map(str, sys.version_info[:3]))
    key = {
        "config": dataclasses.asdict(config),
        "root": str(stdlib_root()),
        "python": version,
        "build": BUILD_VERSION,
    }
    name = f"text-stdlib-py{version}-v{BUILD_VERSION}-{config_digest(key)}.npz"
    return resolve_cache_dir(cache_dir) / name


def load_stdlib_text(
    config: TextConfig | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    rebuild: bool = False,
    cache: bool = True,
) -> TextDataset:
    """The standard-library corpus, from the cache or built (and cached) on first use.

    Args:
      config: sequence length and split fractions (default ``TextConfig()``: 128 bytes, 80/10/10).
      cache_dir: cache folder; default ``$METAGRAD_CACHE`` or ``~/.cache/metagrad``.
      progress: progress bar on stderr while building.
      rebuild: build again even if a cache file exists.
      cache: read and write the cache (False: build in memory only).

    Returns:
      A :class:`TextDataset`; ``from_cache`` says whether it was read from the cache.
    """
    config = config or TextConfig()
    root = stdlib_root()
    if not cache:
        return _assemble(_build(root, stdlib_files(root), config, progress), config, root)
    path = text_cache_path(config, cache_dir)
    if path.is_file() and not rebuild:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            return _assemble(arrays, config, root, path, from_cache=True)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            # Writes are atomic, so this means outside damage: rebuilding is cheap and safe.
            warnings.warn(
                f"text cache file {path} is unreadable ({error}); rebuilding it", stacklevel=2
            )
    arrays = _build(root, stdlib_files(root), config, progress)
    save_cache(path, **arrays)
    return _assemble(arrays, config, root, path)


def load_text(
    path: str | os.PathLike[str], config: TextConfig | None = None, *, progress: bool = True
) -> TextDataset:
    """A byte-level dataset from a local text file or folder (not cached: it is the user's data).

    A folder contributes every regular file below it (hidden entries skipped) that is text, i.e.
    has no NUL byte; its files are split by file as in the stdlib corpus. A single file is split by
    position instead: its first ``train`` fraction of sequences, then validation, then test.

    Args:
      path: a text file or a folder of text files.
      config: sequence length and split fractions.
      progress: progress bar on stderr while reading.

    Returns:
      A :class:`TextDataset`.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: no text, or too little for one sequence in every split.
    """
    config = config or TextConfig()
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(
            f"load_text: {str(path)!r} does not exist; pass a text file or a folder of text files."
        )
    if root.is_file():
        return _single_file(root, config)
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files += [Path(dirpath, n).relative_to(root).as_posix() for n in filenames if n[0] != "."]
    files = sorted(f for f in files if _is_text(root / f))
    if not files:
        raise ValueError(
            f"load_text: {str(path)!r} holds no text files (empty, or only binary files with NUL "
            "bytes); point it at a folder of text such as source code or prose."
        )
    arrays = _build(root, files, config, progress)
    _check_nonempty(arrays, config, str(path), by_file=True)
    return _assemble(arrays, config, root)


def stdlib_prose(min_len: int = 1) -> bytes:
    """English prose that ships with Python: the documentation topics of ``pydoc_data``.

    It is reStructuredText from the Python documentation (about 0.6 MB): text of a different
    domain than the code corpus, which leaves ``pydoc_data`` out for that reason.

    Args:
      min_len: raise if there are fewer bytes than this.

    Returns:
      The topics joined by blank lines, UTF-8 encoded.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError as err:  # some distributions package pydoc_data separately
        raise ValueError(
            "stdlib_prose: this Python has no pydoc_data module; pass your own out-of-domain text "
            "(e.g. --domain-text PATH)."
        ) from err
    text = "\n\n".join(topics[k] for k in sorted(topics)).encode("utf-8")
    if len(text) < min_len:
        raise ValueError(f"stdlib_prose: only {len(text)} bytes of prose; need {min_len}.")
    return text


# -- building ----------------------------------------------------------------------------------


def _build(
    root: Path, files: Sequence[str], config: TextConfig, progress: bool
) -> dict[str, np.ndarray]:
    """Reads and chunks ``files``; returns the arrays stored in the cache file."""
    parts: dict[str, list[tuple[str, np.ndarray]]] = {s: [] for s in SPLIT_NAMES}
    with progress_bar(progress) as bar:
        task = bar.add_task(f"building text corpus ({root.name})", total=len(files))
        for rel in files:
            chunks = chunk_bytes((root / rel).read_bytes(), config.seq_len)
            parts[split_of(rel, config.split_fractions)].append((rel, chunks))
            bar.advance(task)
    arrays: dict[str, np.ndarray] = {}
    for split, items in parts.items():
        names = [rel for rel, _ in items]
        counts = [len(c) for _, c in items]
        tokens = [c for _, c in items if len(c)]
        arrays[f"{split}_tokens"] = (
            np.concatenate(tokens) if tokens else np.zeros((0, config.seq_len), np.uint8)
        )
        arrays[f"{split}_file_index"] = np.repeat(np.arange(len(items), dtype=np.int32), counts)
        arrays[f"{split}_files"] = np.array(names, dtype=np.str_)
    return arrays


def _single_file(path: Path, config: TextConfig) -> TextDataset:
    data = path.read_bytes()
    if not data:
        raise ValueError(f"load_text: {str(path)!r} is empty; pass a file with text in it.")
    if b"\0" in data:
        raise ValueError(
            f"load_text: {str(path)!r} is not text (it has NUL bytes); pass a text file."
        )
    tokens = chunk_bytes(data, config.seq_len)
    n = len(tokens)
    n_train = int(round(config.split_fractions[0] * n))
    n_val = int(round(config.split_fractions[1] * n))
    bounds = {
        "train": (0, n_train),
        "val": (n_train, n_train + n_val),
        "test": (n_train + n_val, n),
    }
    arrays = {}
    for split, (lo, hi) in bounds.items():
        arrays[f"{split}_tokens"] = tokens[lo:hi]
        arrays[f"{split}_file_index"] = np.zeros(hi - lo, np.int32)
        arrays[f"{split}_files"] = np.array([path.name], dtype=np.str_)
    _check_nonempty(arrays, config, str(path), by_file=False)
    return _assemble(arrays, config, path.parent)


def _check_nonempty(
    arrays: dict[str, np.ndarray], config: TextConfig, where: str, by_file: bool
) -> None:
    for split in SPLIT_NAMES:
        if len(arrays[f"{split}_tokens"]) == 0:
            how = (
                "files are split by file, so it needs more files (or smaller ones are dropped: "
                "each needs at least seq_len bytes)"
                if by_file
                else "a single file is split by position, so it needs more text"
            )
            raise ValueError(
                f"load_text: {where!r} gives no {split} sequence of seq_len={config.seq_len} "
                f"bytes; {how}. Add text or lower the sequence length."
            )


def _is_text(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(8192)
    except OSError:
        return False
    return bool(head) and b"\0" not in head


def _assemble(
    arrays: dict[str, np.ndarray],
    config: TextConfig,
    root: Path,
    cache_path: Path | None = None,
    from_cache: bool = False,
) -> TextDataset:
    splits = {
        s: TextSplit(
            tokens=arrays[f"{s}_tokens"],
            file_index=arrays[f"{s}_file_index"],
            files=tuple(str(f) for f in arrays[f"{s}_files"]),
        )
        for s in SPLIT_NAMES
    }
    return TextDataset(**splits, config=config, source=str(root), cache_path=cache_path,
                       from_cache=from_cache)  # fmt: skip
