"""Meta-training: jitted meta-steps, periodic validation, atomic checkpoints, resume, JSONL metrics.

The run folder behaves as every training command's (:mod:`metagrad.runs`). Resuming is exact:
the meta-batch of step ``t`` is a function of ``(seed, t)`` only
(``metagrad.data.episodes_at``), the checkpoint holds the meta-parameters and the outer optimiser
state after its step, and on resume the metrics file is cut back to the checkpoint's step. A run
killed at any moment and resumed writes the same metrics as an uninterrupted run (tested).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from metagrad import checkpoints
from metagrad.data import (
    ClassDataset,
    Splits,
    episodes_at,
    load_glyphs,
    miniimagenet_splits,
    omniglot_splits,
)
from metagrad.fewshot.adaptation import FINITE, GRAD_NORM
from metagrad.fewshot.algorithms import ALGORITHMS, IMPLICIT_OPTIONS, Algorithm, make_algorithm
from metagrad.fewshot.evaluation import evaluate
from metagrad.fewshot.network import n_layers
from metagrad.fewshot.patterns import Pattern
from metagrad.fewshot.sharding import shard_fewshot_meta_step
from metagrad.files import save_figure
from metagrad.implicit import NEGATIVE_CURVATURE
from metagrad.models import Conv4
from metagrad.nonfinite import NonFiniteError, raise_if_nonfinite
from metagrad.runs import CHECKPOINTS, METRICS, MetricsLog, read_metrics, start_run
from metagrad.validation import require_one_of

DATASETS: tuple[str, ...] = ("glyphs", "omniglot", "miniimagenet")
OUTER_LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")


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
      mode: ``"mixflow"``, ``"remat"``, ``"reverse"`` or ``"auto"`` (with ``memory_budget``).
      memory_budget: bytes of one task's inner loop for ``mode="auto"`` (None: no limit).
      pattern: a Lambda pattern code (``"00001/11111"``) used during meta-training, or None.
      inner_lr: inner learning rate (initial value when learned).
      outer_lr: Adam learning rate of the meta-parameters (1e-3 as in MAML).
      outer_lr_schedule: ``"constant"`` (MAML's; stored as None) or ``"cosine"``: ``outer_lr``
        decayed to 0 over ``iterations`` along a half cosine (Loshchilov & Hutter, ICLR 2017),
        so that the final meta-parameters come from small steps rather than from wherever the
        last large step left them. A cosine run cannot be extended with more iterations (its
        schedule depends on them).
      outer_clip: clip the meta-gradient to this global norm before Adam (None: no clipping).
        Adam's normalised step makes one outlier meta-gradient (e.g. an implicit one from a
        near-singular system, or one through an inner loop that blew up) a step of
        ~3 × ``outer_lr`` along it that its momentum carries for ~10 steps; clipping bounds it.
        The norm before clipping is logged as ``grad_norm``.
      meta_batch: tasks per meta-step.
      iterations: meta-steps.
      seed: seed of parameters and episodes.
      channels, n_blocks: conv4 size.
      val_every, val_tasks: validation period (steps) and tasks (0: never).
      checkpoint_every: checkpoint period (steps).
      proximal: λ of the proximal term ``λ/2 ‖θ − θ₀‖²`` in the inner loss (None: the
        algorithm's, 2 for imaml, 0 for the others).
      cg_steps: conjugate-gradient steps of the implicit meta-gradient (None: the algorithm's,
        5); only for an implicit algorithm (imaml).
      cg_damping: ridge δ ≥ 0 of the implicit system (None: 0; see ``Algorithm.cg_damping``);
        only for an implicit algorithm (imaml).
      inner_momentum: β in [0, 1) of heavy-ball momentum in the inner optimiser (None: 0, plain
        gradient descent); not for learned learning rates (metasgd, mamlpp).
      cg_negative_curvature: ``"stop"``: the implicit solve stops at the first direction of
        non-positive curvature (None: ``"continue"``, plain CG; see
        ``Algorithm.cg_negative_curvature``); only for an implicit algorithm (imaml).
      stationarity_tol: tasks whose inner loop ended with ``‖∇ inner loss‖`` above it give no
        meta-gradient (None: every task does; see ``Algorithm.stationarity_tol``); only for an
        implicit algorithm (imaml). The fraction of tasks kept is logged as ``stationary``.
      cg_max_gain: cap of a task's implicit meta-gradient at this multiple of its query
        gradient's norm (None: no cap; see ``Algorithm.cg_max_gain``); only for an implicit
        algorithm (imaml).
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
    # None is "constant": a checkpoint written before this field existed (it has none) then
    # compares equal to a constant-rate run of today, and resumes.
    outer_lr_schedule: str | None = None
    meta_batch: int = 8
    iterations: int = 1000
    seed: int = 0
    channels: int = 64
    n_blocks: int = 4
    val_every: int = 200
    val_tasks: int = 200
    checkpoint_every: int = 100
    # None: the algorithm's own value. Absent from older checkpoints, which then read as None.
    proximal: float | None = None
    cg_steps: int | None = None
    cg_damping: float | None = None
    inner_momentum: float | None = None
    memory_budget: int | None = None
    cg_negative_curvature: str | None = None
    stationarity_tol: float | None = None
    outer_clip: float | None = None
    cg_max_gain: float | None = None

    def __post_init__(self) -> None:
        require_one_of("dataset", self.dataset, DATASETS)
        if self.dataset != "glyphs" and not self.data_root:
            raise ValueError(
                f"data_root is required for dataset={self.dataset!r}: the folder holding it."
            )
        require_one_of("algorithm", self.algorithm, ALGORITHMS)
        if self.outer_lr_schedule is not None:
            require_one_of("outer_lr_schedule", self.outer_lr_schedule, OUTER_LR_SCHEDULES)
            if self.outer_lr_schedule == "constant":
                object.__setattr__(self, "outer_lr_schedule", None)
        for name in ("ways", "shots", "queries", "steps", "meta_batch", "iterations", "channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}.")
        for name in ("val_every", "val_tasks", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)!r}.")
        if self.test_steps is not None and (
            not isinstance(self.test_steps, int) or self.test_steps < 1
        ):
            raise ValueError(
                f"test_steps must be a positive int (or None: steps); got {self.test_steps!r}."
            )
        for name in ("inner_lr", "outer_lr"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0; got {value!r}.")
        clip = self.outer_clip
        if clip is not None and not (isinstance(clip, int | float) and 0 < clip < math.inf):
            raise ValueError(
                f"outer_clip must be a finite number > 0 (a global norm of the meta-gradient); "
                f"got {clip!r}."
            )
        self._check_inner_options()
        self.make_algorithm()  # e.g. --algorithm imaml with a --pattern fails here, by name

    def _check_inner_options(self) -> None:
        """The inner-loop options (``proximal``, ``cg_*``, ``stationarity_tol``, ``inner_momentum``):
        their values, and whether the algorithm has any use for them (errors start with the
        field's name)."""
        base = make_algorithm(self.algorithm)
        if self.proximal is not None:
            value = self.proximal
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"proximal must be a finite number >= 0; got {value!r}.")
            if base.method == "implicit" and not value > 0:
                raise ValueError(
                    f"proximal must be > 0 for algorithm={self.algorithm!r} (implicit "
                    "meta-gradient: without the proximal term the adapted parameters do not "
                    f"depend on θ₀); got {value!r}."
                )
        if self.cg_steps is not None and (not isinstance(self.cg_steps, int) or self.cg_steps < 1):
            raise ValueError(f"cg_steps must be a positive int; got {self.cg_steps!r}.")
        damping = self.cg_damping
        if damping is not None and not (
            isinstance(damping, int | float) and math.isfinite(damping) and damping >= 0
        ):
            raise ValueError(f"cg_damping must be a finite number >= 0; got {damping!r}.")
        for name in ("stationarity_tol", "cg_max_gain"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and 0 < value < math.inf):
                raise ValueError(f"{name} must be a finite number > 0; got {value!r}.")
        if self.cg_negative_curvature is not None:
            require_one_of("cg_negative_curvature", self.cg_negative_curvature, NEGATIVE_CURVATURE)
        # options of the implicit meta-gradient only
        for name in ("cg_steps", *IMPLICIT_OPTIONS):
            if getattr(self, name) is not None and base.method != "implicit":
                raise ValueError(
                    f"{name} applies to the implicit meta-gradient (algorithm 'imaml') only; "
                    f"algorithm={self.algorithm!r} differentiates its inner steps."
                )
        if self.inner_momentum is not None:
            value = self.inner_momentum
            if not (isinstance(value, int | float) and 0 <= value < 1):
                raise ValueError(f"inner_momentum must be a number in [0, 1); got {value!r}.")
            if value and base.learned_lr is not None:
                raise ValueError(
                    f"inner_momentum needs a fixed inner learning rate; algorithm="
                    f"{self.algorithm!r} learns its learning rates ({base.learned_lr})."
                )

    def outer_optimizer(self) -> optax.GradientTransformation:
        """Adam of the meta-parameters, at ``outer_lr`` or along its ``outer_lr_schedule``."""
        return _outer_optimizer(*self._outer_key())

    def _outer_key(self) -> tuple[float, str, int, float | None]:
        # What the outer optimiser depends on (the iterations only through a schedule), so that
        # a constant-rate run extended with more iterations reuses its compiled meta-step.
        schedule = self.outer_lr_schedule or "constant"
        decay_steps = self.iterations if schedule == "cosine" else 0
        return self.outer_lr, schedule, decay_steps, self.outer_clip

    def make_algorithm(self) -> Algorithm:
        """The ``Algorithm`` this configuration names."""
        pattern = Pattern.parse(self.pattern) if self.pattern else None
        overrides = {
            name: getattr(self, name)
            for name in (
                "proximal",
                "cg_steps",
                "cg_damping",
                "inner_momentum",
                "memory_budget",
                "cg_negative_curvature",
                "stationarity_tol",
                "cg_max_gain",
            )
            if getattr(self, name) is not None
        }
        return make_algorithm(
            self.algorithm,
            steps=self.steps,
            inner_lr=self.inner_lr,
            mode=self.mode,
            pattern=pattern,
            **overrides,
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


def _outer_optimizer(
    lr: float, schedule: str, decay_steps: int, clip: float | None
) -> optax.GradientTransformation:
    rate = optax.cosine_decay_schedule(lr, decay_steps) if schedule == "cosine" else lr
    if clip is None:  # plain Adam: the optimiser state of every run before outer_clip existed
        return optax.adam(rate)
    return optax.chain(optax.clip_by_global_norm(clip), optax.adam(rate))


@functools.lru_cache(maxsize=8)
def _meta_step(
    model: Conv4,
    algorithm: Algorithm,
    outer: tuple[float, str, int, float | None],
    mesh: Mesh | None,
    params: str,
) -> Any:
    """The jitted meta-step, shared by runs of one configuration in a process (a resumed run
    reuses the compiled program instead of compiling it again). With a mesh, the meta-batch is
    split along its ``"data"`` axis (``metagrad.distributed``); without, the single-device step."""
    optimizer = _outer_optimizer(*outer)
    return shard_fewshot_meta_step(model, algorithm, optimizer, mesh, params=params)


def initial_state(
    config: TrainConfig, model: Conv4, algorithm: Algorithm | None = None
) -> dict[str, Any]:
    """The run's state at step 0: ``{"meta": ..., "opt_state": ...}`` (Adam of the meta-parameters).

    It is also the structure of a checkpoint: :func:`load_run_state` restores into it.
    """
    algorithm = algorithm if algorithm is not None else config.make_algorithm()
    meta = algorithm.init_meta(model.init(jax.random.PRNGKey(config.seed)))
    return {"meta": meta, "opt_state": config.outer_optimizer().init(meta)}


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


class TrainedRun(NamedTuple):
    """A trained run read back from its folder (:func:`load_trained`)."""

    config: TrainConfig
    step: int
    splits: Splits
    model: Conv4
    meta: Any


def load_trained(out: str | os.PathLike[str]) -> TrainedRun:
    """A run's configuration, data splits, model and meta-parameters of its newest checkpoint:
    what ``eval``, ``select`` and the diagnostics start from.

    Raises:
      FileNotFoundError: when ``out`` holds no checkpoint; ValueError: when none can be read.
    """
    config, step = read_config(out)
    splits = load_splits(config)
    model = make_model(config, splits)
    meta = load_run_state(out, config, model).state["meta"]
    return TrainedRun(config, step, splits, model, meta)


def _extensible(config: TrainConfig) -> tuple[str, ...]:
    """Fields that may change between a run and its continuation: the periods of validation and
    checkpoints (they do not change the trajectory) and, at a constant outer learning rate, the
    iterations (the meta-batch of step t depends on (seed, t) only, so more iterations extend a
    run; a cosine schedule would decay differently)."""
    periods = ("val_every", "val_tasks", "checkpoint_every")
    return periods if config.outer_lr_schedule == "cosine" else ("iterations", *periods)


def _placed(step_fn: Any, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` on the step's mesh when it has one (a restore then reads only each process's
    shards), else as it is."""
    plan = getattr(step_fn, "plan", None)
    return plan.put_params(state) if plan is not None else state


def train(
    config: TrainConfig,
    out: str | os.PathLike[str],
    *,
    splits: Splits | None = None,
    restart: bool = False,
    on_nonfinite: str = "stop",
    show_progress: bool = True,
    stop_after: int | None = None,
    mesh: Mesh | None = None,
    params: str = "replicate",
) -> dict[str, Any]:
    """Meta-trains in the run folder ``out``, resuming the run there if it holds one.

    The folder behaves as every training command's (:mod:`metagrad.runs`): resumed from the
    newest readable checkpoint (orbax, the last two kept; a damaged newest one falls back to the
    one before, with a warning), the metrics log cut back to it, nothing of an earlier run
    deleted. With a mesh each process writes its own shards.

    Args:
      config: the run.
      out: the run folder (``checkpoints/``, ``metrics.jsonl``).
      splits: datasets (default: loaded from ``config``).
      restart: start over; the earlier run's files move to ``out/previous/<n>/``.
      on_nonfinite: a step with a non-finite loss or meta-gradient is not applied, and then
        ``"stop"`` raises ``metagrad.NonFiniteError`` (the checkpoints on disk are the last finite
        ones) or ``"skip"`` logs a ``"skipped"`` line and goes on.
      show_progress: rich progress bar on stderr.
      stop_after: stop after this step without a final checkpoint (simulates a kill; tests).
      mesh: a device mesh (``metagrad.distributed.make_mesh``): the meta-batch of tasks is
        split across its ``"data"`` axis and the meta-gradient reduced by the compiler. ``None``
        (default) is the single-device step. The mesh does not change the trajectory (only the
        order of floating-point sums), so a run may resume on another device count.
      params: ``"replicate"`` the meta-parameters on every device, or shard them ``"fsdp"``-style
        along the mesh's ``"model"`` axis.

    Returns:
      ``{"meta": ..., "step": ..., "last": last train metrics, "val": last validation,
      "skipped": steps skipped}``.
    """
    require_one_of("on_nonfinite", on_nonfinite, ("stop", "skip"))
    out = Path(out)
    splits = splits if splits is not None else load_splits(config)
    model = make_model(config, splits)
    check_run_fits(config, splits, model)
    algorithm = config.make_algorithm()
    ckpt_dir = out / CHECKPOINTS
    # With several processes (hosts) they all compute every step; process 0 alone writes files.
    primary = jax.process_index() == 0
    step_fn = _meta_step(model, algorithm, config._outer_key(), mesh, params)
    start = start_run(
        out,
        config=dataclasses.asdict(config),
        fresh=lambda: _placed(step_fn, initial_state(config, model, algorithm)),
        extensible=_extensible(config),
        restart=restart,
        primary=primary,
    )
    meta, opt_state = start.state["meta"], start.state["opt_state"]
    last: dict[str, Any] = {}
    val: dict[str, Any] = {}
    skipped = 0
    saved_step = start.step if start.step else None

    from metagrad.progress import progress_bar  # rich; imported lazily

    bar = progress_bar() if show_progress and primary else None
    task_id = None
    if bar is not None:
        bar.start()
        task_id = bar.add_task(
            "meta-train", total=config.iterations, completed=start.step, status=""
        )
    try:
        with MetricsLog(out / METRICS, enabled=primary) as log:

            def checkpoint(step: int) -> None:
                nonlocal saved_step
                if step == saved_step:  # the final checkpoint falls on a periodic one
                    return
                log.sync()  # the log covers the checkpoint before the checkpoint exists
                checkpoints.save_checkpoint(
                    ckpt_dir,
                    {"meta": meta, "opt_state": opt_state},
                    step=step,
                    metadata={"config": dataclasses.asdict(config)},
                )
                saved_step = step

            for step in range(start.step + 1, config.iterations + 1):
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
                try:
                    raise_if_nonfinite(
                        step, {"outer (query) loss": m["loss"]}, meta_grad_flags=m[FINITE]
                    )
                except NonFiniteError as err:
                    if on_nonfinite == "stop":
                        raise
                    skipped += 1  # the meta-step did not apply it: meta is unchanged
                    log.write({"step": step, "kind": "skipped", "reason": "; ".join(err.what)})
                    continue
                last = {
                    "step": step,
                    "kind": "train",
                    "loss": float(m["loss"]),
                    "accuracy": float(m["accuracy"]),
                    "grad_norm": float(m[GRAD_NORM]),
                    **({"stationary": float(m["stationary"])} if "stationary" in m else {}),
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
                    log.write(val)
                log.write(last)
                log.flush()
                if bar is not None:
                    status = f"loss {last['loss']:.3f} acc {100 * last['accuracy']:.1f}%"
                    if val:
                        status += f" val {val['accuracy_pct']:.1f}%"
                    bar.update(task_id, completed=step, status=status)
                if stop_after is not None and step >= stop_after:
                    return {"meta": meta, "step": step, "last": last, "val": val, "killed": True,
                            "skipped": skipped}  # fmt: skip
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    checkpoint(step)
            if checkpoints.latest_step(ckpt_dir) != config.iterations:
                checkpoint(config.iterations)
    finally:
        if bar is not None:
            bar.stop()
    return {"meta": meta, "step": config.iterations, "last": last, "val": val, "model": model,
            "skipped": skipped}  # fmt: skip


def check_run_fits(config: TrainConfig, splits: Splits, model: Conv4) -> None:
    """Fails before any work when an episode does not fit a split the run samples (training,
    validation if it validates, and test, which ``fewshot eval`` samples), or the pattern does not
    fit the model.

    Raises:
      ValueError: naming the split or the pattern, the flag and what would fit.
    """
    if config.pattern is not None:
        check_pattern_fits(Pattern.parse(config.pattern), model)
    for name, split in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        if name != "val" or (config.val_every and config.val_tasks):
            check_episodes_fit(split, name, config.ways, config.shots, config.queries)


def check_pattern_fits(pattern: Pattern, model: Conv4) -> None:
    """Raises a ``ValueError`` unless ``pattern`` has one column per layer of ``model``."""
    layers = n_layers(model)
    if pattern.layers != layers:
        raise ValueError(
            f"pattern has {pattern.layers} column(s) but the model has {layers} layers "
            f"({layers - 1} blocks and the head): give one column per layer, e.g. "
            f"{Pattern.full(pattern.steps, layers).code!r} (all layers at every step)."
        )


def check_episodes_fit(split: ClassDataset, name: str, ways: int, shots: int, queries: int) -> None:
    """Raises a ``ValueError`` unless ``split`` has ``ways`` classes with ``shots + queries``
    images each, naming the split, the flags and the largest values that fit."""
    if ways > split.n_classes:
        raise ValueError(
            f"ways={ways} but the {name} split ({split.name or 'dataset'}) has {split.n_classes} "
            f"classes; use --ways {split.n_classes} or fewer."
        )
    smallest = int(np.min(split.class_sizes))
    if shots + queries > smallest:
        raise ValueError(
            f"shots + queries = {shots + queries} but the smallest class of the {name} split "
            f"({split.name or 'dataset'}) has {smallest} images; lower --shots or --queries so "
            f"that they sum to at most {smallest}."
        )


def plot_metrics(
    metrics: str | os.PathLike[str], path: str | os.PathLike[str], title: str = ""
) -> Path:
    """PNG of a run's ``metrics.jsonl``: training loss and accuracy (moving average over 50
    steps) and validation accuracy ± 95% CI against the meta-step; when the metrics have it
    (runs since ``grad_norm`` is logged), a third panel with the meta-gradient's norm (log
    scale), where outlier meta-gradients show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = read_metrics(metrics)
    tr = [x for x in lines if x["kind"] == "train"]
    va = [x for x in lines if x["kind"] == "val"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = ["loss", "accuracy"] + (
        ["grad_norm"] if tr and all("grad_norm" in x for x in tr) else []
    )
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.8))
    ax_l, ax_a = axes[0], axes[1]
    steps = np.array([x["step"] for x in tr])
    w = min(50, max(1, len(tr)))
    kernel = np.ones(w) / w
    for ax, key in zip(axes, keys, strict=True):
        values = np.array([x[key] for x in tr]) * (100 if key == "accuracy" else 1)
        ax.plot(steps, values, color="0.8", lw=0.6)
        if len(values) >= w:
            ax.plot(steps[w - 1 :], np.convolve(values, kernel, "valid"), color="C0",
                    label=f"train (query, {w}-step mean)")  # fmt: skip
        ax.set_xlabel("meta-step")
    if len(keys) == 3:
        axes[2].set_yscale("log")
        axes[2].set_ylabel("meta-gradient norm")
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
