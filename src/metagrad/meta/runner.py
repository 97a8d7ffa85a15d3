"""Running several training arms in lockstep, with JSONL metrics, checkpoints and exact resume.

An experiment compares arms (e.g. uniform weighting, oracle, learned weighting) that each advance
by one window of T inner steps per *step*. Running them in lockstep gives one checkpoint that
holds every arm at the same step, and one progress bar.

The run folder behaves as every training command's (:mod:`metagrad.runs`): running the command
again resumes from the newest readable checkpoint, exactly (the data of step ``s`` is a function
of ``(seed, s)`` only, and the metrics file is cut back to the checkpoint's step), and nothing of
an earlier run is deleted. A step with a non-finite loss or meta-gradient stops the run (or, with
``on_nonfinite="skip"``, is not applied).
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from metagrad import checkpoints
from metagrad.nonfinite import NonFiniteError, raise_if_nonfinite
from metagrad.runs import CHECKPOINTS, METRICS, MetricsLog, start_run

NONFINITE_POLICIES = ("stop", "skip")


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm of an experiment.

    Attributes:
      init: ``() -> state``: the arm's state at step 0 (any pytree of arrays).
      advance: ``(state, step) -> (state, metrics)``: one step (a window of T inner steps).
        ``step`` counts from 1; ``metrics`` is a dict of floats for the JSONL log. It may raise
        ``metagrad.NonFiniteError`` (naming the meta-gradient leaves); non-finite metrics are
        caught here in any case.
      evaluate: ``state -> metrics``: validation figures (a dict of floats, e.g. ``{"loss": ...}``).
    """

    init: Callable[[], Any]
    advance: Callable[[Any, int], tuple[Any, dict[str, float]]]
    evaluate: Callable[[Any], dict[str, float]]


def window_arm(
    window: Callable[..., tuple[Any, Any, Any]],
    hyper: Any,
    *,
    init: Callable[[], Any],
    batches: Callable[[int], Any],
    evaluate: Callable[[Any], dict[str, float]],
) -> Arm:
    """An arm of plain training windows (``metagrad.meta.online.training_window``).

    Args:
      window: ``(hyper, params, opt_state, batches) -> (params, opt_state, losses)``.
      hyper: what the window's loss and optimiser read (a fixed learning rate, or nothing).
      init: ``() -> {"params", "opt_state"}``.
      batches: ``step -> the window's T batches``.
      evaluate: as in :class:`Arm`.
    """

    def advance(state: dict[str, Any], step: int) -> tuple[dict[str, Any], dict[str, Any]]:
        params, opt_state, losses = window(
            hyper, state["params"], state["opt_state"], batches(step)
        )
        return {"params": params, "opt_state": opt_state}, {"loss": jnp.mean(losses)}

    return Arm(init, advance, evaluate)


def meta_window_arm(
    meta_step: Callable[..., tuple[Any, Any, Any]],
    *,
    init: Callable[[], Any],
    batches: Callable[[int], Any],
    outer_batch: Callable[[int], Any],
    evaluate: Callable[[Any], dict[str, float]],
    metrics: Callable[[dict[str, Any], Any], dict[str, Any]] = lambda state, window: {},
) -> Arm:
    """The learned arm: one online meta-step per window (``metagrad.meta.online_meta_step``).

    A window whose outer value, inner losses or meta-gradient is not finite raises
    ``metagrad.NonFiniteError`` naming the leaves (the meta-step did not apply it).

    Args:
      meta_step: ``(meta, meta_state, params, opt_state, batches, outer) -> (meta, meta_state,
        window)``.
      init: ``() -> {"params", "opt_state", "meta", "meta_state"}``.
      batches: ``step -> the window's T training batches``.
      outer_batch: ``step -> the window's validation batch``.
      evaluate: as in :class:`Arm`.
      metrics: ``(new_state, window) -> extra log figures`` beside the mean inner loss and the
        outer value.
    """

    def advance(state: dict[str, Any], step: int) -> tuple[dict[str, Any], dict[str, Any]]:
        meta, meta_state, window = meta_step(
            state["meta"], state["meta_state"], state["params"], state["opt_state"],
            batches(step), outer_batch(step),
        )  # fmt: skip
        raise_if_nonfinite(
            step,
            {"outer value": window.outer, "inner losses": window.inner_losses},
            meta_grad=window.meta_grad,
        )
        new = {"params": window.params, "opt_state": window.inner_state, "meta": meta,
               "meta_state": meta_state}  # fmt: skip
        figures = {"loss": jnp.mean(window.inner_losses), "outer": window.outer}
        return new, {**figures, **metrics(new, window)}

    return Arm(init, advance, evaluate)


def run_arms(
    arms: Mapping[str, Arm],
    *,
    config: dict[str, Any],
    out: str | os.PathLike[str],
    steps: int,
    eval_every: int,
    checkpoint_every: int,
    restart: bool = False,
    on_nonfinite: str = "stop",
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
      out: output folder (``checkpoints/``, ``metrics.jsonl``); a run there is resumed.
      steps: number of steps (windows).
      eval_every: evaluate every arm every this many steps (and at step 0 and at the end).
      checkpoint_every: checkpoint period in steps (0: only at the end).
      restart: start over; the earlier run's files move to ``out/previous/<n>/``.
      on_nonfinite: ``"stop"`` (raise ``metagrad.NonFiniteError``; the checkpoints on disk are
        the last finite ones) or ``"skip"`` (the arm keeps its state; a ``"skipped"`` line is
        logged).
      show_progress: rich progress bar on stderr.
      stop_after: stop after this step without a final checkpoint (simulates a kill; tests).
      title: the progress bar's label.
      extensible: configuration fields that may differ from the checkpoint's.

    Returns:
      ``{"states": {name: state}, "step": last step, "killed": bool, "skipped": count}``.
    """
    if on_nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"on_nonfinite must be one of {NONFINITE_POLICIES}; got {on_nonfinite!r}.")
    out = Path(out)
    start = start_run(
        out,
        config=config,
        fresh=lambda: {"states": {name: arm.init() for name, arm in arms.items()}},
        extensible=extensible,
        restart=restart,
    )
    states, first = start.state["states"], start.step
    ckpt_dir = out / CHECKPOINTS
    skipped = 0

    def log_eval(log: MetricsLog, step: int) -> dict[str, Any]:
        figures = {}
        for name, arm in arms.items():
            figures[name] = arm.evaluate(states[name])
            log.write({"step": step, "arm": name, "kind": "val", **figures[name]})
        return figures

    from metagrad.progress import progress_bar  # rich; imported lazily

    bar = progress_bar() if show_progress else None
    task_id = None
    if bar is not None:
        bar.start()
        task_id = bar.add_task(title, total=steps, completed=first, status="")
    try:
        with MetricsLog(out / METRICS) as log:

            def checkpoint(step: int) -> None:
                log.sync()  # the log covers the checkpoint before the checkpoint exists
                checkpoints.save_checkpoint(
                    ckpt_dir, {"states": states}, step=step, metadata={"config": config}
                )

            if first == 0:
                log_eval(log, 0)
            for step in range(first + 1, steps + 1):
                for name, arm in arms.items():
                    t0 = time.perf_counter()
                    try:
                        new_state, metrics = arm.advance(states[name], step)
                        metrics = {k: float(v) for k, v in metrics.items()}
                        raise_if_nonfinite(
                            step, {f"{k} (arm {name})": v for k, v in metrics.items()}
                        )
                    except NonFiniteError as err:
                        if on_nonfinite == "stop":
                            raise
                        skipped += 1
                        log.write({"step": step, "arm": name, "kind": "skipped",
                                   "reason": "; ".join(err.what)})  # fmt: skip
                        warnings.warn(f"{name}: {err}", RuntimeWarning, stacklevel=2)
                        continue
                    states[name] = new_state
                    line = {"step": step, "arm": name, "kind": "train", **metrics}
                    line["time_s"] = time.perf_counter() - t0
                    log.write(line)
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
                    return {"states": states, "step": step, "killed": True, "skipped": skipped}
                if checkpoint_every and step % checkpoint_every == 0 and step < steps:
                    checkpoint(step)
            if first < steps or checkpoints.latest_step(ckpt_dir) != steps:
                checkpoint(steps)
    finally:
        if bar is not None:
            bar.stop()
    return {"states": states, "step": steps, "killed": False, "skipped": skipped}


@dataclasses.dataclass(frozen=True)
class Experiment:
    """An experiment on the byte-level LM (``metagrad meta reweight`` / ``lr``): its parts.

    Attributes:
      prepare_data: ``(config, progress=bool) -> data``.
      make_arms: ``(config, data) -> {name: Arm}``.
      summarise: ``(config, data, states, out, wall_s) -> summary`` of a finished run.
      title: ``config -> progress bar label``.
    """

    prepare_data: Callable[..., Any]
    make_arms: Callable[[Any, Any], Mapping[str, Arm]]
    summarise: Callable[[Any, Any, dict[str, Any], Path, float], dict[str, Any]]
    title: Callable[[Any], str]


def run_experiment(
    experiment: Experiment,
    config: Any,
    out: str | os.PathLike[str],
    *,
    data: Any = None,
    restart: bool = False,
    on_nonfinite: str = "stop",
    show_progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Trains an experiment's arms in the run folder ``out`` (resuming a run there) and summarises.

    Args:
      experiment: what to run.
      config: an ``LMRunConfig`` (its ``meta_steps``, ``eval_every`` and ``checkpoint_every`` may
        grow on resume).
      out: the run folder (``checkpoints/``, ``metrics.jsonl``).
      data: the prepared data (default: ``experiment.prepare_data(config)``).
      restart, on_nonfinite, show_progress, stop_after: as in :func:`run_arms`.

    Returns:
      The summary, or ``{"killed": True, "step": s}`` when stopped by ``stop_after``.
    """
    if data is None:
        data = experiment.prepare_data(config, progress=show_progress)
    start = time.perf_counter()
    result = run_arms(
        experiment.make_arms(config, data),
        config=dataclasses.asdict(config),
        out=out,
        steps=config.meta_steps,
        eval_every=config.eval_every,
        checkpoint_every=config.checkpoint_every,
        restart=restart,
        on_nonfinite=on_nonfinite,
        show_progress=show_progress,
        stop_after=stop_after,
        title=experiment.title(config),
        extensible=("meta_steps", "eval_every", "checkpoint_every"),
    )
    if result["killed"]:
        return {"killed": True, "step": result["step"]}
    wall = time.perf_counter() - start
    return experiment.summarise(config, data, result["states"], Path(out), wall)


def curves(metrics: list[dict[str, Any]], kind: str, key: str) -> dict[str, tuple[list, list]]:
    """``{arm: (steps, values)}`` of one metric from the parsed JSONL lines."""
    result: dict[str, tuple[list, list]] = {}
    for m in metrics:
        if m["kind"] == kind and key in m:
            steps, values = result.setdefault(m["arm"], ([], []))
            steps.append(m["step"])
            values.append(m[key])
    return result
