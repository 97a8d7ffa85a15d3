"""A tiny few-shot run and helpers shared by the reliability tests."""

import json

import numpy as np

from metagrad.data import ClassDataset, Splits
from metagrad.fewshot.training import TrainConfig


def splits():
    rng = np.random.default_rng(0)

    def ds(n_classes, offset):
        images = rng.integers(0, 255, (n_classes, 6, 8, 8, 1), dtype=np.uint8)
        return ClassDataset.from_grid(images, [f"c{offset + i}" for i in range(n_classes)])

    return Splits(ds(8, 0), ds(5, 100), ds(5, 200))


CONFIG = TrainConfig(
    ways=3, shots=1, queries=2, steps=2, meta_batch=2, iterations=6, channels=4, n_blocks=2,
    val_every=3, val_tasks=4, checkpoint_every=2,
)  # fmt: skip


def metrics(path):
    """The metric lines without their wall-clock times (which differ between runs)."""
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    for line in lines:
        line.pop("time_s", None)
    return lines


def strict_json_lines(path):
    """Parses every line with a parser that rejects bare NaN / Infinity."""

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return [json.loads(x, parse_constant=refuse) for x in path.read_text().splitlines()]
