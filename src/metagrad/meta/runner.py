"""Running several training arms in lockstep, with JSONL metrics, checkpoints and exact resume.

An experiment compares arms (e.g. uniform weighting, oracle, learned weighting) that each advance
by one window of T inner steps per *step*. Running them in lockstep gives one checkpoint that
holds every arm at the same step, and one progress bar.

Resuming is exact, as in :mod:`metagrad.fewshot.training`: the data of step ``s`` is a function of
``(seed, s)`` only, the checkpoint holds every arm's state after its step, and on resume the
metrics file is cut back to the checkpoint's step. A run killed at any moment and resumed writes
the same metrics as an uninterrupted one (``time_s`` aside).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from metagrad import checkpoints
from metagrad.files import write_text

CHECKPOINTS = "checkpoints"
_OLD_CHECKPOINT = "checkpoint.pkl"  # before metagrad.checkpoints used orbax
METRICS = "metrics.jsonl"


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm of an experiment.

    Attributes:
      init: ``() -> state``: the arm's state at step 0 (any pytree of arrays).
      advance: ``(state, step) -> (state, metrics)``: one step (a window of T inner steps).
        ``step`` counts from 1; ``metrics`` is a dict of floats for the JSONL log.
      evaluate: ``state -> metrics``: validation figures (a dict of floats, e.g. ``{"loss": ...}``).
    """

    init: Callable[[], Any]
    advance: Callable[[Any, int], tuple[Any, dict[str, float]]]
    evaluate: Callable[[Any], dict[str, float]]


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl`` file as dicts (empty if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _truncate_metrics(path: Path, step: int) -> None:
    """Keeps only metric lines of steps ≤ ``step`` (those the checkpoint already covers)."""
    keep = [m for m in read_metrics(path) if m["step"] <= step]
    write_text(path, "".join(json.dumps(m) + "\n" for m in keep))


def run_arms(
    arms: Mapping[str, Arm],
    *,
    config: dict[str, Any],
    out: str | os.PathLike[str],
    steps: int,
    eval_every: int,
    checkpoint_every: int,
    resume: bool = False,
    show_progress: bool = True,
    stop_after: int | None = None,
    title: str = "training",
    extensible: tuple[str, ...] = ("steps", "eval_every", "checkpoint_every"),
) -> dict[str, Any]:
    """Advances every arm ``steps`` times in lockstep, logging, evaluating and checkpointing.

    Args:
      arms: the arms by name (the order is the order of the log lines).
      config: the run's configuration (JSON-ready); stored in the checkpoint, and a resumed run
        must match it except for the ``extensible`` fields.
      out: output folder (``checkpoints/``, ``metrics.jsonl``).
      steps: number of steps (windows).
      eval_every: evaluate every arm every this many steps (and at step 0 and at the end).
      checkpoint_every: checkpoint period in steps (0: only at the end).
      resume: continue from the newest checkpoint in ``out/checkpoints`` if there is one (else
        start over). A damaged newest checkpoint falls back to the one before (with a warning).
      show_progress: rich progress bar on stderr.
      stop_after: stop after this step without a final checkpoint (simulates a kill; tests).
      title: the progress bar's label.
      extensible: configuration fields that may differ from the checkpoint's.

    Returns:
      ``{"states": {name: state}, "step": last step, "killed": bool}``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir, metrics_path = out / CHECKPOINTS, out / METRICS
    config = json.loads(json.dumps(config))  # as the checkpoint stores it (tuples as lists)
    start = 0
    if resume and checkpoints.latest_step(ckpt_dir) is None and (out / _OLD_CHECKPOINT).exists():
        raise ValueError(
            f"{out / _OLD_CHECKPOINT} was written by an older metagrad and cannot be resumed "
            f"(checkpoints are now orbax folders in {CHECKPOINTS}/); use another --out folder or "
            "start over without --resume."
        )
    states = {name: arm.init() for name, arm in arms.items()}
    if resume and checkpoints.latest_step(ckpt_dir) is not None:
        saved_config = checkpoints.load_metadata(ckpt_dir).metadata["config"]

        def fixed(c: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in c.items() if k not in extensible}

        if fixed(saved_config) != fixed(config):
            diff = sorted(
                k for k in set(config) | set(saved_config)
                if k not in extensible and config.get(k) != saved_config.get(k)
            )  # fmt: skip
            raise ValueError(
                f"{ckpt_dir} was written by a different configuration (differs in: "
                f"{', '.join(diff)}); use another --out folder or start over without --resume."
            )
        # The configuration first: another configuration may have another state structure.
        saved = checkpoints.load_checkpoint(ckpt_dir, target={"states": states})
        if saved.step > steps:
            raise ValueError(
                f"{ckpt_dir} is at step {saved.step}, beyond steps={steps}; pass more steps "
                "or another --out folder."
            )
        states, start = saved.state["states"], saved.step
        _truncate_metrics(metrics_path, start)
    else:
        metrics_path.unlink(missing_ok=True)

    def checkpoint(step: int) -> None:
        checkpoints.save_checkpoint(
            ckpt_dir, {"states": states}, step=step, metadata={"config": config}
        )

    def log_eval(log: Any, step: int) -> dict[str, Any]:
        figures = {}
        for name, arm in arms.items():
            figures[name] = arm.evaluate(states[name])
            log.write(
                json.dumps({"step": step, "arm": name, "kind": "val", **figures[name]}) + "\n"
            )
        return figures

    from metagrad.progress import progress_bar  # rich; imported lazily

    bar = progress_bar() if show_progress else None
    task_id = None
    if bar is not None:
        bar.start()
        task_id = bar.add_task(title, total=steps, completed=start, status="")
    try:
        with open(metrics_path, "a") as log:
            if start == 0:
                log_eval(log, 0)
            for step in range(start + 1, steps + 1):
                for name, arm in arms.items():
                    t0 = time.perf_counter()
                    states[name], metrics = arm.advance(states[name], step)
                    metrics = {k: float(v) for k, v in metrics.items()}
                    line = {"step": step, "arm": name, "kind": "train", **metrics}
                    line["time_s"] = time.perf_counter() - t0
                    log.write(json.dumps(line) + "\n")
                figures = None
                if (eval_every and step % eval_every == 0) or step == steps:
                    figures = log_eval(log, step)
                log.flush()
                if bar is not None:
                    status = bar.tasks[0].fields.get("status", "")
                    if figures is not None:
                        status = "val " + " ".join(
                            f"{n} {f['loss']:.3f}" for n, f in figures.items()
                        )
                    bar.update(task_id, completed=step, status=status)
                if stop_after is not None and step >= stop_after:
                    return {"states": states, "step": step, "killed": True}
                if checkpoint_every and step % checkpoint_every == 0 and step < steps:
                    checkpoint(step)
        checkpoint(steps)
    finally:
        if bar is not None:
            bar.stop()
    return {"states": states, "step": steps, "killed": False}


def curves(metrics: list[dict[str, Any]], kind: str, key: str) -> dict[str, tuple[list, list]]:
    """``{arm: (steps, values)}`` of one metric from the parsed JSONL lines."""
    result: dict[str, tuple[list, list]] = {}
    for m in metrics:
        if m["kind"] == kind and key in m:
            steps, values = result.setdefault(m["arm"], ([], []))
            steps.append(m["step"])
            values.append(m[key])
    return result
