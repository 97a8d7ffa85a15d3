"""Checkpoints that restore on any number of devices: whole host arrays, written atomically.

Sharded arrays are gathered to the host first, so a checkpoint written by a run on 8 devices resumes
on 1 or 2 (place it with ``metagrad.distributed.ShardingPlan.put_params`` or pass it straight to a
sharded step). The file is the pickle of a pytree of numpy arrays and plain Python values, written
through :func:`metagrad.files.write_pickle` (temporary file + atomic rename).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import jax
import numpy as np

from metagrad.files import write_pickle

PyTree = Any


def save_checkpoint(path: str | os.PathLike[str], state: PyTree) -> Path | None:
    """Writes a (possibly sharded) state as host numpy arrays, atomically (temp file + rename).

    The file holds whole arrays, not shards, so it restores on any number of devices. With several
    processes every process must call this (gathering shards is collective); process 0 writes.
    ``metagrad.fewshot.training`` writes its checkpoints through this function.

    Args:
      path: the checkpoint file.
      state: any pytree of arrays and Python values.

    Returns:
      The path written (``None`` on processes other than 0).
    """
    host = jax.tree.map(_to_host, state)
    if jax.process_index() != 0:
        return None
    return write_pickle(path, host)


def load_checkpoint(path: str | os.PathLike[str]) -> PyTree:
    """Reads a checkpoint written by :func:`save_checkpoint` (host numpy arrays)."""
    with open(path, "rb") as f:
        return pickle.load(f)


def _to_host(x: Any) -> np.ndarray:
    """``x`` as one host numpy array; shards on other processes are gathered (collective)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


__all__ = ["load_checkpoint", "save_checkpoint"]
