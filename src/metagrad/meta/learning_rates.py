"""Learned per-layer learning rates of the inner Adam of a byte-level LM (``metagrad meta lr``).

The meta-parameters are one log-learning-rate per layer group of the decoder LM (embedding; each
block's attention; each block's MLP; the output head), the updates of the inner optimiser being
``-exp(log_lr[group]) * adam_direction`` (``optax.scale_by_adam(eps_root=EPS_ROOT)`` followed by
:func:`metagrad.scale_by_learning_rates`). They are meta-learned online: each window of T inner
steps is differentiated (``metagrad.unroll``, ``mode``) to get the meta-gradient of the validation
loss at its end with respect to the log-rates, which take an Adam step, and training continues
from the window's parameters (:mod:`metagrad.meta.online`). How the rates move over training is
the learned schedule.

The baselines are a grid of fixed learning rates of the same Adam, run for the same number of
inner steps on the same batches; the meta-overhead (the extra wall-clock of a meta-step over a
plain window) is reported separately.

References:
    Baydin, Cornish, Martínez Rubio, Schmidt, Wood. *Online Learning Rate Adaptation with
    Hypergradient Descent*, ICLR 2018.
    Franceschi, Donini, Frasconi, Pontil. *Forward and Reverse Gradient-Based Hyperparameter
    Optimization*, ICML 2017.
    Kemaev et al. *Scalable Meta-Learning via Mixed-Mode Differentiation*, ICML 2025.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metagrad.meta import lm_task
from metagrad.meta.online import online_meta_step, training_window, window_value_and_grad
from metagrad.meta.runner import Arm, Experiment, meta_window_arm, run_experiment, window_arm
from metagrad.runs import METRICS, read_metrics
from metagrad.transforms import EPS_ROOT, scale_by_learning_rates

DEFAULT_GRID: tuple[float, ...] = (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2)


@dataclasses.dataclass(frozen=True)
class LRConfig(lm_task.LMRunConfig):
    """Everything that defines a learned-learning-rate run: :class:`LMRunConfig`'s fields and

    Attributes:
      grid: the fixed learning rates of the baselines.
      init_lr: initial learned learning rate of every group (None: the grid's geometric middle).
      meta_lr: Adam learning rate of the log-learning-rates.
    """

    steps: int = 16
    meta_steps: int = 75
    meta_lr: float | None = 0.1
    eval_every: int = 5
    grid: tuple[float, ...] = DEFAULT_GRID
    init_lr: float | None = None

    POSITIVE_OR_NONE = ("init_lr", "meta_lr")

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(float(x) for x in self.grid))
        super().__post_init__()
        if not self.grid or any(not lr > 0 for lr in self.grid):
            raise ValueError(f"grid must be positive learning rates; got {self.grid!r}.")

    @property
    def initial_lr(self) -> float:
        """``init_lr``, or the geometric middle of the grid."""
        if self.init_lr is not None:
            return self.init_lr
        return float(math.exp(np.mean(np.log(self.grid))))


def layer_groups(params: dict[str, Any]) -> tuple[tuple[str, ...], Any]:
    """Layer groups of a :class:`~metagrad.models.DecoderLM`'s parameters.

    Returns:
      ``(names, groups)``: the group names (``embed``, ``block{i}.attn``, ``block{i}.mlp``,
      ``head``) and a pytree with the structure of ``params`` whose leaves are group indices. A
      block's norms belong to the sub-layer they feed; the final norm to the head.
    """
    names = ["embed"]
    blocks = []
    for i in range(len(params["blocks"])):
        attn, mlp = len(names), len(names) + 1
        names += [f"block{i}.attn", f"block{i}.mlp"]
        blk = params["blocks"][i]
        blocks.append(
            {
                "attn_norm": jax.tree.map(lambda _, g=attn: g, blk["attn_norm"]),
                "attn": jax.tree.map(lambda _, g=attn: g, blk["attn"]),
                "mlp_norm": jax.tree.map(lambda _, g=mlp: g, blk["mlp_norm"]),
                "mlp": jax.tree.map(lambda _, g=mlp: g, blk["mlp"]),
            }
        )
    head = len(names)
    names.append("head")
    groups = {
        "embed": 0,
        "blocks": blocks,
        "final_norm": jax.tree.map(lambda _: head, params["final_norm"]),
        "unembed": head,
    }
    return tuple(names), groups


def learned_optimizer(groups: Any) -> Any:
    """``meta -> optax.GradientTransformation``: Adam's direction scaled by each group's learned
    rate ``exp(meta["log_lr"][group])``."""

    def optimizer_of(meta: dict[str, jax.Array]) -> optax.GradientTransformation:
        rates = jnp.exp(meta["log_lr"])
        per_leaf = jax.tree.map(lambda g: rates[g], groups)
        return optax.chain(
            optax.scale_by_adam(eps_root=EPS_ROOT), scale_by_learning_rates(per_leaf)
        )

    return optimizer_of


def grid_name(lr: float) -> str:
    """The arm name of a fixed learning rate, e.g. ``lr=0.004``."""
    return f"lr={lr:g}"


@dataclasses.dataclass(frozen=True, eq=False)
class LRData:
    """Training pool, validation pool and the fixed evaluation sets."""

    train: np.ndarray
    val: np.ndarray
    val_eval: np.ndarray
    test_eval: np.ndarray
    source: str


def prepare_data(config: LRConfig, *, progress: bool = True) -> LRData:
    """Loads the corpus (the whole training split is the pool)."""
    corpus = lm_task.load_corpus(config.text, config.seq, progress=progress)
    val, test = corpus.val.tokens, corpus.test.tokens
    return LRData(
        train=corpus.train.tokens,
        val=val,
        val_eval=val[lm_task.eval_indices(config.seed, config.eval_sequences, len(val))],
        test_eval=test[lm_task.eval_indices(config.seed + 1, config.eval_sequences, len(test))],
        source=corpus.source,
    )


def make_arms(config: LRConfig, data: LRData) -> dict[str, Arm]:
    """One arm per fixed learning rate of the grid, and the ``learned`` arm."""
    model = config.spec.model()
    train_tokens = jnp.asarray(data.train, jnp.int32)
    val_tokens = jnp.asarray(data.val, jnp.int32)
    params0 = model.init(jax.random.PRNGKey(config.seed))
    names, groups = layer_groups(params0)
    optimizer_of = learned_optimizer(groups)
    meta_opt = optax.adam(config.meta_lr)

    def loss(p: Any, _: Any, tokens: jax.Array) -> jax.Array:
        return jnp.mean(model.sequence_losses(p, tokens))

    # One compiled program serves every grid point: the rate is an argument, not a constant.
    plain_window = training_window(loss, lambda lr: optax.adam(lr, eps_root=EPS_ROOT))
    meta_step = online_meta_step(
        loss, loss, optimizer_of, meta_opt, mode=config.mode, memory_budget=config.memory_budget
    )

    def batches(step: int) -> jax.Array:
        index = lm_task.window_indices(
            config.seed, step, config.steps, config.batch, len(data.train)
        )
        return train_tokens[jnp.asarray(index, jnp.int32)]

    def evaluate(state: dict[str, Any]) -> dict[str, float]:
        return {"loss": lm_task.mean_loss(model, state["params"], data.val_eval)}

    def grid_arm(lr: float) -> Arm:
        opt = optax.adam(lr, eps_root=EPS_ROOT)
        return window_arm(
            plain_window, jnp.asarray(lr, jnp.float32), batches=batches, evaluate=evaluate,
            init=lambda: {"params": params0, "opt_state": opt.init(params0)},
        )  # fmt: skip

    def learned_init() -> dict[str, Any]:
        meta = {"log_lr": jnp.full((len(names),), math.log(config.initial_lr), jnp.float32)}
        return {
            "params": params0,
            "opt_state": optimizer_of(meta).init(params0),
            "meta": meta,
            "meta_state": meta_opt.init(meta),
        }

    def rates(state: dict[str, Any], _: Any) -> dict[str, float]:
        values = np.exp(np.asarray(state["meta"]["log_lr"]))
        return {f"lr/{n}": float(r) for n, r in zip(names, values, strict=True)}

    arms = {grid_name(lr): grid_arm(lr) for lr in config.grid}
    arms["learned"] = meta_window_arm(
        meta_step, init=learned_init, batches=batches, evaluate=evaluate, metrics=rates,
        outer_batch=lambda step: lm_task.outer_tokens(config, val_tokens, step),
    )  # fmt: skip
    return arms


def run_learning_rates(config: LRConfig, out: str | Path, **options: Any) -> dict[str, Any]:
    """Trains the grid and the learned arm in the run folder ``out`` (resuming a run there) and summarises
    (:func:`summarise`, with the learned rates). ``options``: ``data``, ``restart``, ``on_nonfinite``,
    ``show_progress``, ``stop_after`` of :func:`metagrad.meta.runner.run_experiment`."""
    return run_experiment(LEARNING_RATES, config, out, **options)


def summarise(
    config: LRConfig, data: LRData, states: dict[str, Any], out: Path, wall_s: float
) -> dict[str, Any]:
    """Final validation and test losses per arm, the best grid point, learned rates, timings."""
    model = config.spec.model()
    metrics = read_metrics(out / METRICS)
    final = {
        arm: {
            "val_loss": lm_task.mean_loss(model, s["params"], data.val_eval),
            "test_loss": lm_task.mean_loss(model, s["params"], data.test_eval),
        }
        for arm, s in states.items()
    }
    times = {
        arm: float(np.median([m["time_s"] for m in metrics if m["arm"] == arm and "time_s" in m]))
        for arm in states
    }
    grid = {grid_name(lr): lr for lr in config.grid}
    best = min(grid, key=lambda a: final[a]["val_loss"])
    names, _ = layer_groups(states["learned"]["params"])
    rates = np.exp(np.asarray(states["learned"]["meta"]["log_lr"]))
    grid_time = float(np.median([times[a] for a in grid]))
    return {
        "config": dataclasses.asdict(config),
        "source": data.source,
        "n_params": lm_task.count_params(states["learned"]["params"]),
        "inner_steps": config.meta_steps * config.steps,
        "final": final,
        "best_grid": {"arm": best, "lr": grid[best], **final[best]},
        "learned_lrs": dict(zip(names, rates.tolist(), strict=True)),
        "learned_beats_best": bool(final["learned"]["val_loss"] <= final[best]["val_loss"]),
        "margin_vs_best": float(final[best]["val_loss"] - final["learned"]["val_loss"]),
        "step_time_s": times,
        "meta_step_s": times["learned"],
        "plain_window_s": grid_time,
        "meta_overhead": times["learned"] / grid_time,
        "wall_s": wall_s,
        "metrics": str(out / METRICS),
    }


def first_window_inputs(config: LRConfig, data: LRData) -> tuple[Any, ...]:
    """The arguments of the learned arm's first meta-step window, with real data: ``(meta, params,
    inner_state, batches, outer_batch)``, for ``meta_gradient_builder(config)``'s programs (and
    ``metagrad check --case lr``)."""
    params = config.spec.model().init(jax.random.PRNGKey(config.seed))
    names, groups = layer_groups(params)
    meta = {"log_lr": jnp.full((len(names),), math.log(config.initial_lr), jnp.float32)}
    index = lm_task.window_indices(config.seed, 1, config.steps, config.batch, len(data.train))
    outer = lm_task.outer_indices(config.seed, 1, config.outer_batch, len(data.val))
    return (
        meta,
        params,
        learned_optimizer(groups)(meta).init(params),
        jnp.asarray(data.train[index], jnp.int32),
        jnp.asarray(data.val[outer], jnp.int32),
    )


def meta_gradient_builder(config: LRConfig) -> Any:
    """``(mode, T) -> (jitted meta-gradient, abstract arguments)`` of one window, for the memory
    report (compile only)."""
    model = config.spec.model()
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0)))
    names, groups = layer_groups(params)
    optimizer_of = learned_optimizer(groups)
    meta = {"log_lr": jax.ShapeDtypeStruct((len(names),), jnp.float32)}
    opt_state = jax.eval_shape(lambda p: optimizer_of({"log_lr": jnp.zeros(len(names))}).init(p),
                               params)  # fmt: skip

    def loss(p: Any, _: Any, tokens: jax.Array) -> jax.Array:
        return jnp.mean(model.sequence_losses(p, tokens))

    def build(mode: str, steps: int) -> tuple[Any, tuple[Any, ...]]:
        fn = window_value_and_grad(loss, loss, optimizer_of, mode=mode)
        batches = jax.ShapeDtypeStruct((steps, config.batch, config.seq), jnp.int32)
        outer = jax.ShapeDtypeStruct((config.outer_batch, config.seq), jnp.int32)
        return jax.jit(fn), (meta, params, opt_state, batches, outer)

    return build


LEARNING_RATES = Experiment(
    prepare_data, make_arms, summarise, title=lambda c: f"meta lr (T={c.steps}, {c.mode})"
)
