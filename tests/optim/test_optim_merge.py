"""Joining width sweeps run in parts."""

import json
import math

import pytest

from metagrad.optim.merge import (
    infinities_as_strings,
    infinities_from_strings,
    merge_sweep_files,
    merge_sweeps,
)


def _payload(widths, losses, values=(0.1, 0.2)):
    config = {"optimizer": "sgd", "param": "mup"}
    results = {
        str(w): {"train_loss": loss, "best_index": int(min(range(len(loss)), key=loss.__getitem__)),
                 "best": values[min(range(len(loss)), key=loss.__getitem__)]}
        for w, loss in zip(widths, losses, strict=True)
    }  # fmt: skip
    sweep = {"config": config, "over": "lr", "lr": None, "values": list(values), "steps": 3,
             "widths": list(widths), "results": results}  # fmt: skip
    return infinities_as_strings({"task": "t", "widths": list(widths), "sweeps": [sweep]})


def test_merge_joins_widths_and_recomputes_the_summary(tmp_path):
    a = _payload([8, 16], [[1.0, 2.0], [0.9, math.inf]])
    b = _payload([32], [[1.2, 0.5]])
    merged = merge_sweeps([a, b])
    (sweep,) = merged["sweeps"]
    assert sweep["widths"] == [8, 16, 32] and merged["widths"] == [8, 16, 32]
    assert sweep["results"]["16"]["train_loss"][1] == math.inf
    assert sweep["summary"]["best_shift_grid_steps"] == 1
    assert sweep["summary"]["worse_with_width_at_base_best"] == [32]
    for name, payload in (("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text(json.dumps(payload))
    from_files = merge_sweep_files([tmp_path / "a.json", tmp_path / "b.json"])
    assert from_files["sweeps"][0]["summary"] == sweep["summary"]
    assert infinities_from_strings(infinities_as_strings([math.inf, 1.0])) == [math.inf, 1.0]


def test_merge_errors():
    with pytest.raises(ValueError, match="at least one"):
        merge_sweeps([])
    with pytest.raises(ValueError, match="must share values and steps"):
        merge_sweeps([_payload([8], [[1.0, 2.0]]), _payload([16], [[1.0, 2.0]], values=(1, 2))])
    with pytest.raises(FileNotFoundError, match="run the `metagrad width sweep"):
        merge_sweep_files(["/nonexistent/sweep_lr.json"])
