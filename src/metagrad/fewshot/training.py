"""Meta-training: jitted meta-steps, periodic validation, atomic checkpoints, resume, JSONL metrics.

Resuming is exact: the meta-batch of step ``t`` is a function of ``(seed, t)`` only
(``metagrad.data.episodes_at``), the checkpoint holds the meta-parameters and the outer optimiser
state after its step, and on resume the metrics file is cut back to the checkpoint's step. A run
killed at any moment and resumed writes the same metrics as an uninterrupted run (tested).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from metagrad import checkpoints
from metagrad.data import Splits, episodes_at, load_glyphs, miniimagenet_splits, omniglot_splits
from metagrad.fewshot.algorithms import ALGORITHMS, Algorithm, make_algorithm
from metagrad.fewshot.evaluation import evaluate
from metagrad.fewshot.patterns import Pattern
from metagrad.fewshot.sharding import shard_fewshot_meta_step
from metagrad.files import save_figure, write_text
from metagrad.models import Conv4

DATASETS: tuple[str, ...] = ("glyphs", "omniglot", "miniimagenet")
CHECKPOINTS = "checkpoints"
_OLD_CHECKPOINT = "checkpoint.pkl"  # before metagrad.checkpoints used orbax
METRICS = "metrics.jsonl"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a meta-training run (stored in the checkpoint).

    Attributes:
      dataset: ``"glyphs"`` (built in), ``"omniglot"`` or ``"miniimagenet"`` (from ``data_root``).
      data_root: folder of an on-disk dataset.
      ways, shots, queries: episode shape (queries per class).
      steps: inner steps during meta-training.
      test_steps: inner steps at validation / test time (default: ``steps``).
      algorithm: one of ``ALGORITHMS``.
      mode: ``"mixflow"``, ``"remat"`` or ``"reverse"``.
      pattern: a Lambda pattern code (``"00001/11111"``) used during meta-training, or None.
      inner_lr: inner learning rate (initial value when learned).
      outer_lr: Adam learning rate of the meta-parameters (1e-3 as in MAML).
      meta_batch: tasks per meta-step.
      iterations: meta-steps.
      seed: seed of parameters and episodes.
      channels, n_blocks: conv4 size.
      val_every, val_tasks: validation period (steps) and tasks (0: never).
      checkpoint_every: checkpoint period (steps).
    """

    dataset: str = "glyphs"
    data_root: str | None = None
    ways: int = 5
    shots: int = 1
    queries: int = 15
    steps: int = 5
    test_steps: int | None = None
    algorithm: str = "maml"
    mode: str = "mixflow"
    pattern: str | None = None
    inner_lr: float = 0.4
    outer_lr: float = 1e-3
    meta_batch: int = 8
    iterations: int = 1000
    seed: int = 0
    channels: int = 64
    n_blocks: int = 4
    val_every: int = 200
    val_tasks: int = 200
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}; got {self.dataset!r}.")
        if self.dataset != "glyphs" and not self.data_root:
            raise ValueError(
                f"data_root is required for dataset={self.dataset!r}: the folder holding it."
            )
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}; got {self.algorithm!r}.")
        for name in ("ways", "shots", "queries", "steps", "meta_batch", "iterations", "channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}.")
        for name in ("val_every", "val_tasks", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)!r}.")
        self.make_algorithm()  # e.g. --algorithm imaml with a --pattern fails here, by name

    def make_algorithm(self) -> Algorithm:
        """The ``Algorithm`` this configuration names."""
        pattern = Pattern.parse(self.pattern) if self.pattern else None
        return make_algorithm(
            self.algorithm,
            steps=self.steps,
            inner_lr=self.inner_lr,
            mode=self.mode,
            pattern=pattern,
        )


def load_splits(config: TrainConfig) -> Splits:
    """The train / validation / test splits of ``config.dataset``."""
    if config.dataset == "glyphs":
        bench = load_glyphs()
        return Splits(bench.train, bench.val, bench.test)
    if config.dataset == "omniglot":
        return omniglot_splits(config.data_root)
    return miniimagenet_splits(config.data_root)


def make_model(config: TrainConfig, splits: Splits) -> Conv4:
    """The conv4 backbone for the dataset's image shape."""
    _, h, _, c = splits.train.images.shape
    return Conv4(
        n_classes=config.ways,
        channels=config.channels,
        n_blocks=config.n_blocks,
        in_channels=c,
        image_size=h,
    )


@functools.lru_cache(maxsize=8)
def _meta_step(
    model: Conv4, algorithm: Algorithm, outer_lr: float, mesh: Mesh | None, params: str
) -> Any:
    """The jitted meta-step, shared by runs of one configuration in a process (a resumed run
    reuses the compiled program instead of compiling it again). With a mesh, the meta-batch is
    split along its ``"data"`` axis (``metagrad.distributed``); without, the single-device step."""
    return shard_fewshot_meta_step(model, algorithm, optax.adam(outer_lr), mesh, params=params)


def initial_state(
    config: TrainConfig, model: Conv4, algorithm: Algorithm | None = None
) -> dict[str, Any]:
    """The run's state at step 0: ``{"meta": ..., "opt_state": ...}`` (Adam of the meta-parameters).

    It is also the structure of a checkpoint: :func:`load_run_state` restores into it.
    """
    algorithm = algorithm if algorithm is not None else config.make_algorithm()
    meta = algorithm.init_meta(model.init(jax.random.PRNGKey(config.seed)))
    return {"meta": meta, "opt_state": optax.adam(config.outer_lr).init(meta)}


def read_config(out: str | os.PathLike[str]) -> tuple[TrainConfig, int]:
    """The configuration and step of a run's newest checkpoint (``out/checkpoints``), without
    reading its arrays.

    Raises:
      FileNotFoundError: when ``out`` holds no checkpoint; ValueError: when none can be read.
    """
    saved = checkpoints.load_metadata(Path(out) / CHECKPOINTS)
    return TrainConfig(**saved.metadata["config"]), saved.step


def load_run_state(
    out: str | os.PathLike[str], config: TrainConfig, model: Conv4
) -> checkpoints.Checkpoint:
    """Restores a run's newest readable checkpoint into :func:`initial_state`'s structure."""
    target = initial_state(config, model)
    return checkpoints.load_checkpoint(Path(out) / CHECKPOINTS, target=target)


# Fields that may change between a run and its continuation: more iterations extend a run (the
# meta-batch of step t depends on (seed, t) only and the outer optimiser has no schedule), and the
# periods of validation and checkpoints do not change the trajectory.
_EXTENSIBLE = ("iterations", "val_every", "val_tasks", "checkpoint_every")


def _placed(step_fn: Any, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` on the step's mesh when it has one (a restore then reads only each process's
    shards), else as it is."""
    plan = getattr(step_fn, "plan", None)
    return plan.put_params(state) if plan is not None else state


def _resumable(config: dict[str, Any]) -> dict[str, Any]:
    """The configuration fields a resumed run must share with its checkpoint."""
    return {k: v for k, v in config.items() if k not in _EXTENSIBLE}


def _truncate_metrics(path: Path, step: int) -> None:
    """Keeps only metric lines of steps ≤ ``step`` (those the checkpoint already covers)."""
    if not path.exists():
        return
    keep = [
        line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step
    ]
    write_text(path, "".join(line + "\n" for line in keep))


def train(
    config: TrainConfig,
    out: str | os.PathLike[str],
    *,
    splits: Splits | None = None,
    resume: bool = True,
    show_progress: bool = True,
    stop_after: int | None = None,
    mesh: Mesh | None = None,
    params: str = "replicate",
) -> dict[str, Any]:
    """Meta-trains, resuming from the newest checkpoint in ``out/checkpoints`` when there is one.

    Checkpoints (``metagrad.checkpoints``: orbax, the last two kept) hold the meta-parameters and
    the outer optimiser state; with a mesh each process writes its own shards. If the newest
    checkpoint is damaged, the run resumes from the one before (with a warning).

    Args:
      config: the run.
      out: output folder (``checkpoints/``, ``metrics.jsonl``).
      splits: datasets (default: loaded from ``config``).
      resume: continue from an existing checkpoint (else start over and overwrite).
      show_progress: rich progress bar on stderr.
      stop_after: stop after this step without a final checkpoint (simulates a kill; tests).
      mesh: a device mesh (``metagrad.distributed.make_mesh``): the meta-batch of tasks is
        split across its ``"data"`` axis and the meta-gradient reduced by the compiler. ``None``
        (default) is the single-device step. The mesh does not change the trajectory (only the
        order of floating-point sums), so a run may resume on another device count.
      params: ``"replicate"`` the meta-parameters on every device, or shard them ``"fsdp"``-style
        along the mesh's ``"model"`` axis.

    Returns:
      ``{"meta": ..., "step": ..., "last": last train metrics, "val": last validation}``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = splits if splits is not None else load_splits(config)
    model = make_model(config, splits)
    algorithm = config.make_algorithm()
    ckpt_dir, metrics_path = out / CHECKPOINTS, out / METRICS
    # With several processes (hosts) they all compute every step; process 0 alone writes files.
    primary = jax.process_index() == 0
    start = 0
    if resume and checkpoints.latest_step(ckpt_dir) is None and (out / _OLD_CHECKPOINT).exists():
        raise ValueError(
            f"train: {out / _OLD_CHECKPOINT} was written by an older metagrad and cannot be "
            f"resumed (checkpoints are now orbax folders in {CHECKPOINTS}/); use another --out "
            "folder or pass resume=False (--no-resume) to start over."
        )
    fresh = initial_state(config, model, algorithm)
    step_fn = _meta_step(model, algorithm, config.outer_lr, mesh, params)
    if resume and checkpoints.latest_step(ckpt_dir) is not None:
        saved_config = checkpoints.load_metadata(ckpt_dir).metadata["config"]
        if _resumable(saved_config) != _resumable(dataclasses.asdict(config)):
            raise ValueError(
                f"train: {ckpt_dir} was written by a different configuration; use another --out "
                "folder or pass resume=False (--no-resume) to start over."
            )
        # The configuration first: another configuration may have another state structure.
        saved = checkpoints.load_checkpoint(ckpt_dir, target=_placed(step_fn, fresh))
        if saved.step > config.iterations:
            raise ValueError(
                f"train: {ckpt_dir} is at step {saved.step}, beyond iterations="
                f"{config.iterations}; pass more iterations or another --out folder."
            )
        meta, opt_state, start = saved.state["meta"], saved.state["opt_state"], saved.step
        if primary:
            _truncate_metrics(metrics_path, start)
    else:
        meta, opt_state = fresh["meta"], fresh["opt_state"]
        if primary:
            metrics_path.unlink(missing_ok=True)
    last: dict[str, Any] = {}
    val: dict[str, Any] = {}

    saved_step = start if start else None

    def checkpoint(step: int) -> None:
        nonlocal saved_step
        if step == saved_step:  # the final checkpoint falls on a periodic one
            return
        checkpoints.save_checkpoint(
            ckpt_dir,
            {"meta": meta, "opt_state": opt_state},
            step=step,
            metadata={"config": dataclasses.asdict(config)},
        )
        saved_step = step

    from metagrad.progress import progress_bar  # rich; imported lazily

    bar = progress_bar() if show_progress and primary else None
    task_id = None
    if bar is not None:
        bar.start()
        task_id = bar.add_task("meta-train", total=config.iterations, completed=start, status="")
    try:
        with open(metrics_path if primary else os.devnull, "a") as log:
            for step in range(start + 1, config.iterations + 1):
                t0 = time.perf_counter()
                episodes = episodes_at(
                    splits.train,
                    config.ways,
                    config.shots,
                    config.queries,
                    config.meta_batch,
                    config.seed,
                    step - 1,
                )
                meta, opt_state, m = step_fn(meta, opt_state, tuple(episodes))
                last = {
                    "step": step,
                    "kind": "train",
                    "loss": float(m["loss"]),
                    "accuracy": float(m["accuracy"]),
                    "time_s": time.perf_counter() - t0,
                }
                if config.val_every and config.val_tasks and step % config.val_every == 0:
                    ev = evaluate(
                        model,
                        algorithm,
                        meta,
                        splits.val,
                        ways=config.ways,
                        shots=config.shots,
                        queries=config.queries,
                        tasks=config.val_tasks,
                        seed=config.seed + 1,
                        steps=config.test_steps,
                    )
                    val = {"step": step, "kind": "val", **ev.as_dict()}
                    log.write(json.dumps(val) + "\n")
                log.write(json.dumps(last) + "\n")
                log.flush()
                if bar is not None:
                    status = f"loss {last['loss']:.3f} acc {100 * last['accuracy']:.1f}%"
                    if val:
                        status += f" val {val['accuracy_pct']:.1f}%"
                    bar.update(task_id, completed=step, status=status)
                if stop_after is not None and step >= stop_after:
                    return {"meta": meta, "step": step, "last": last, "val": val, "killed": True}
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    checkpoint(step)
        checkpoint(config.iterations)
    finally:
        if bar is not None:
            bar.stop()
    return {"meta": meta, "step": config.iterations, "last": last, "val": val, "model": model}


def plot_metrics(
    metrics: str | os.PathLike[str], path: str | os.PathLike[str], title: str = ""
) -> Path:
    """PNG of a run's ``metrics.jsonl``: training loss and accuracy (moving average over 50
    steps) and validation accuracy ± 95% CI against the meta-step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [json.loads(x) for x in Path(metrics).read_text().splitlines() if x]
    tr = [x for x in lines if x["kind"] == "train"]
    va = [x for x in lines if x["kind"] == "val"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = np.array([x["step"] for x in tr])
    w = min(50, max(1, len(tr)))
    kernel = np.ones(w) / w
    for ax, key in ((ax_l, "loss"), (ax_a, "accuracy")):
        values = np.array([x[key] for x in tr]) * (100 if key == "accuracy" else 1)
        ax.plot(steps, values, color="0.8", lw=0.6)
        if len(values) >= w:
            ax.plot(steps[w - 1 :], np.convolve(values, kernel, "valid"), color="C0",
                    label=f"train (query, {w}-step mean)")  # fmt: skip
        ax.set_xlabel("meta-step")
    if va:
        ax_a.errorbar([x["step"] for x in va], [x["accuracy_pct"] for x in va],
                      yerr=[x["ci95_pct"] for x in va], fmt="o-", color="C1", ms=4,
                      label="validation (± 95% CI)")  # fmt: skip
    ax_l.set_ylabel("query loss")
    ax_a.set_ylabel("query accuracy (%)")
    ax_a.legend(fontsize=8)
    fig.suptitle(title or "meta-training")
    fig.tight_layout()
    return save_figure(fig, path)
