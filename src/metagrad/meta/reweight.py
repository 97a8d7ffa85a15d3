"""Learned data weighting of a byte-level LM on partly corrupted text (``metagrad meta reweight``).

A fraction p of the training sequences is corrupted (:mod:`metagrad.meta.corruption`). Three arms
train the same decoder LM from the same initialisation with the same number of inner Adam steps:

* ``uniform``: every training sequence counts equally (corrupted ones included);
* ``oracle``: the corrupted sequences are removed (the best a weighting could do);
* ``learned``: example weights (:mod:`metagrad.meta.weighting`) are meta-learned online: every
  window of T inner steps on weighted batches is differentiated (``metagrad.unroll``, ``mode``)
  to get the meta-gradient of the clean validation loss at its end, the weights take an Adam step,
  and training continues from the window's parameters (:mod:`metagrad.meta.online`).

The learned weights are scored against the truth with the ROC AUC (clean = positive).

References:
    Ren, Zeng, Yang, Urtasun. *Learning to Reweight Examples for Robust Deep Learning*, ICML 2018.
    Shu et al. *Meta-Weight-Net: Learning an Explicit Mapping for Sample Weighting*, NeurIPS 2019.
    Kemaev et al. *Scalable Meta-Learning via Mixed-Mode Differentiation*, ICML 2025.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metagrad.data.text import stdlib_prose
from metagrad.meta.auc import roc_auc
from metagrad.meta.corruption import CORRUPTIONS, corrupt
from metagrad.meta.lm_task import (
    LMRunConfig,
    count_params,
    eval_indices,
    load_corpus,
    mean_loss,
    outer_indices,
    outer_tokens,
    sequence_losses,
    window_indices,
)
from metagrad.meta.online import online_meta_step, training_window, window_value_and_grad
from metagrad.meta.runner import Arm, Experiment, meta_window_arm, run_experiment, window_arm
from metagrad.meta.weighting import WEIGHTINGS, WeightModel, make_weight_model, weighted_mean
from metagrad.runs import METRICS, read_metrics
from metagrad.transforms import EPS_ROOT
from metagrad.validation import require_one_of

ARMS: tuple[str, ...] = ("uniform", "oracle", "learned")
#: Adam learning rate of the meta-parameters when ``meta_lr`` is not given, per weight model.
DEFAULT_META_LR = {"per-example": 0.3, "scorer": 0.01}


@dataclasses.dataclass(frozen=True)
class ReweightConfig(LMRunConfig):
    """Everything that defines a reweighting run: :class:`LMRunConfig`'s fields and

    Attributes:
      domain_text: out-of-domain text file for ``corruption="domain"`` (None: the Python
        documentation's prose, :func:`metagrad.data.stdlib_prose`).
      corruption: ``"shuffle"``, ``"random"`` or ``"domain"``.
      fraction: fraction p of corrupted training sequences.
      weights: ``"per-example"`` (one logit per sequence) or ``"scorer"`` (an MLP on features).
      scorer_hidden: hidden units of the scorer.
      train_sequences: size of the (partly corrupted) training pool.
      lr: inner Adam learning rate.
      meta_lr: Adam learning rate of the meta-parameters (None: :data:`DEFAULT_META_LR`).
    """

    meta_steps: int = 300
    eval_every: int = 20
    checkpoint_every: int = 25
    domain_text: str | None = None
    corruption: str = "shuffle"
    fraction: float = 0.3
    weights: str = "scorer"
    scorer_hidden: int = 32
    train_sequences: int = 2048
    lr: float = 3e-3

    POSITIVE_INTS = ("train_sequences", "scorer_hidden")
    POSITIVE_OR_NONE = ("lr", "meta_lr")

    def __post_init__(self) -> None:
        require_one_of("corruption", self.corruption, CORRUPTIONS)
        require_one_of("weights", self.weights, WEIGHTINGS)
        super().__post_init__()
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1); got {self.fraction!r}.")

    @property
    def effective_meta_lr(self) -> float:
        """``meta_lr``, or the weight model's default."""
        return self.meta_lr if self.meta_lr is not None else DEFAULT_META_LR[self.weights]


@dataclasses.dataclass(frozen=True, eq=False)
class ReweightData:
    """The data of a run.

    Attributes:
      train: ``uint8 (n, seq)`` training pool, with the corrupted rows replaced.
      corrupted: ``(n,)`` True for corrupted rows.
      val: validation pool (meta-objective batches are drawn from it).
      val_eval: the fixed validation sequences of every evaluation.
      test_eval: test sequences of the final evaluation.
      source: where the text came from.
    """

    train: np.ndarray
    corrupted: np.ndarray
    val: np.ndarray
    val_eval: np.ndarray
    test_eval: np.ndarray
    source: str

    @property
    def clean_indices(self) -> np.ndarray:
        """Indices of the clean training sequences (the oracle's pool)."""
        return np.flatnonzero(~self.corrupted)


def prepare_data(config: ReweightConfig, *, progress: bool = True) -> ReweightData:
    """Loads the corpus, draws the training pool and corrupts a fraction of it."""
    corpus = load_corpus(config.text, config.seq, progress=progress)
    n = len(corpus.train)
    if n < config.train_sequences:
        raise ValueError(
            f"train_sequences={config.train_sequences} but the corpus has only {n} training "
            f"sequences of {config.seq} bytes; lower it or give more text."
        )
    rng = np.random.default_rng([config.seed, 0x7EA1])
    pool = np.sort(rng.choice(n, size=config.train_sequences, replace=False))
    domain = None
    if config.corruption == "domain":
        if config.domain_text is None:
            domain = stdlib_prose(min_len=config.seq)
        else:
            path = Path(config.domain_text).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"domain_text {config.domain_text!r} is not a file; pass a text file."
                )
            domain = path.read_bytes()
    train, corrupted = corrupt(
        corpus.train.tokens[pool], config.fraction, config.corruption, config.seed,
        domain_text=domain,
    )  # fmt: skip
    val = corpus.val.tokens
    test = corpus.test.tokens
    return ReweightData(
        train=train,
        corrupted=corrupted,
        val=val,
        val_eval=val[eval_indices(config.seed, config.eval_sequences, len(val))],
        test_eval=test[eval_indices(config.seed + 1, config.eval_sequences, len(test))],
        source=corpus.source,
    )


def _init_params(config: ReweightConfig) -> Any:
    return config.spec.model().init(jax.random.PRNGKey(config.seed))


def learned_weights(
    config: ReweightConfig, weight_model: WeightModel, meta: Any, params: Any, train: np.ndarray
) -> np.ndarray:
    """The learned weight of every training sequence (the scorer sees their current losses)."""
    index = jnp.arange(len(train))
    losses = jnp.zeros(len(train))
    if config.weights == "scorer":
        losses = jnp.asarray(sequence_losses(config.spec.model(), params, train))
    return np.asarray(weight_model.weights(meta, jnp.asarray(train, jnp.int32), index, losses))


@functools.lru_cache(maxsize=8)
def _programs(config: ReweightConfig, n: int) -> tuple[Any, Any]:
    """The jitted plain window and online meta-step, shared by runs of one configuration in a
    process (a resumed run, or a test's second run, reuses the compiled programs)."""
    model = config.spec.model()
    weight_model = make_weight_model(config.weights, n, config.scorer_hidden)
    inner_opt = optax.adam(config.lr, eps_root=EPS_ROOT)

    def plain_loss(p: Any, _: Any, batch: dict[str, jax.Array]) -> jax.Array:
        return jnp.mean(model.sequence_losses(p, batch["tokens"]))

    def weighted_loss(p: Any, meta: Any, batch: dict[str, jax.Array]) -> jax.Array:
        losses = model.sequence_losses(p, batch["tokens"])
        w = weight_model.weights(meta, batch["tokens"], batch["index"], losses)
        return weighted_mean(losses, w)

    def outer_loss(p: Any, _: Any, tokens: jax.Array) -> jax.Array:
        return jnp.mean(model.sequence_losses(p, tokens))

    plain_window = training_window(plain_loss, lambda _: inner_opt)
    meta_step = online_meta_step(
        weighted_loss, outer_loss, lambda _: inner_opt, optax.adam(config.effective_meta_lr),
        mode=config.mode, memory_budget=config.memory_budget,
    )  # fmt: skip
    return plain_window, meta_step


def make_arms(config: ReweightConfig, data: ReweightData) -> dict[str, Arm]:
    """The uniform, oracle and learned arms (see the module docstring)."""
    model = config.spec.model()
    n = len(data.train)
    weight_model = make_weight_model(config.weights, n, config.scorer_hidden)
    inner_opt = optax.adam(config.lr, eps_root=EPS_ROOT)
    meta_opt = optax.adam(config.effective_meta_lr)
    clean = data.clean_indices
    train_tokens = jnp.asarray(data.train, jnp.int32)
    val_tokens = jnp.asarray(data.val, jnp.int32)
    # Fields that do not change the programs are normalised out of the cache key.
    key = dataclasses.replace(config, meta_steps=1, eval_every=0, checkpoint_every=0,
                              eval_sequences=1, seed=0, text=None, domain_text=None)  # fmt: skip
    plain_window, meta_step = _programs(key, n)

    def batches(index: np.ndarray) -> dict[str, jax.Array]:
        idx = jnp.asarray(index, jnp.int32)
        return {"tokens": train_tokens[idx], "index": idx}

    def window(pool: np.ndarray | None) -> Callable[[int], dict[str, jax.Array]]:
        """The batches of window ``step``: from the whole training pool, or from ``pool``."""

        def of(step: int) -> dict[str, jax.Array]:
            size = n if pool is None else len(pool)
            index = window_indices(config.seed, step, config.steps, config.batch, size)
            return batches(index if pool is None else pool[index])

        return of

    def plain_init() -> dict[str, Any]:
        params = _init_params(config)
        return {"params": params, "opt_state": inner_opt.init(params)}

    def plain_arm(pool: np.ndarray | None) -> Arm:
        return window_arm(
            plain_window, jnp.zeros(()), init=plain_init, batches=window(pool),
            evaluate=lambda s: {"loss": mean_loss(model, s["params"], data.val_eval)},
        )  # fmt: skip

    def learned_init() -> dict[str, Any]:
        meta = weight_model.init(jax.random.PRNGKey(config.seed + 1))
        return {**plain_init(), "meta": meta, "meta_state": meta_opt.init(meta)}

    def learned_evaluate(state: dict[str, Any]) -> dict[str, float]:
        w = learned_weights(config, weight_model, state["meta"], state["params"], data.train)
        return {
            "loss": mean_loss(model, state["params"], data.val_eval),
            "auc": roc_auc(w, ~data.corrupted),
            "weight_clean": float(np.mean(w[~data.corrupted])),
            "weight_corrupted": float(np.mean(w[data.corrupted])),
        }

    return {
        "uniform": plain_arm(None),
        "oracle": plain_arm(clean),
        "learned": meta_window_arm(
            meta_step,
            init=learned_init,
            batches=window(None),
            evaluate=learned_evaluate,
            outer_batch=lambda step: outer_tokens(config, val_tokens, step),
            metrics=lambda _, w: {"meta_grad_norm": optax.tree.norm(w.meta_grad)},
        ),
    }


def run_reweight(config: ReweightConfig, out: str | Path, **options: Any) -> dict[str, Any]:
    """Trains the uniform, oracle and learned arms in the run folder ``out`` (resuming a run there) and summarises
    (:func:`summarise`, with the learned ``weights`` and the ``corrupted`` mask as arrays). ``options``: ``data``, ``restart``, ``on_nonfinite``,
    ``show_progress``, ``stop_after`` of :func:`metagrad.meta.runner.run_experiment`."""
    return run_experiment(REWEIGHT, config, out, **options)


def summarise(
    config: ReweightConfig,
    data: ReweightData,
    states: dict[str, Any],
    out: Path,
    wall_s: float,
) -> dict[str, Any]:
    """Final figures: validation and test losses per arm, AUC, weights, timings, curves."""
    model = config.spec.model()
    n = len(data.train)
    weight_model = make_weight_model(config.weights, n, config.scorer_hidden)
    learned = states["learned"]
    w = learned_weights(config, weight_model, learned["meta"], learned["params"], data.train)
    metrics = read_metrics(out / METRICS)
    final = {
        arm: {
            "val_loss": mean_loss(model, states[arm]["params"], data.val_eval),
            "test_loss": mean_loss(model, states[arm]["params"], data.test_eval),
        }
        for arm in ARMS
    }
    times = {
        arm: float(np.median([m["time_s"] for m in metrics if m["arm"] == arm and "time_s" in m]))
        for arm in ARMS
    }
    uniform, oracle, mine = (final[a]["val_loss"] for a in ARMS)
    visits = np.zeros(n, np.int64)
    for step in range(1, config.meta_steps + 1):
        np.add.at(visits, window_indices(config.seed, step, config.steps, config.batch, n), 1)
    return {
        "config": dataclasses.asdict(config),
        "source": data.source,
        "n_params": count_params(learned["params"]),
        "inner_steps": config.meta_steps * config.steps,
        "final": final,
        "auc": roc_auc(w, ~data.corrupted),
        "weight_mean_clean": float(np.mean(w[~data.corrupted])),
        "weight_mean_corrupted": float(np.mean(w[data.corrupted])),
        "closer_to_oracle": bool(abs(mine - oracle) < abs(mine - uniform)),
        "gap_closed": float((uniform - mine) / (uniform - oracle)) if uniform != oracle else None,
        "visits_min": int(visits.min()),
        "visits_mean": float(visits.mean()),
        "step_time_s": times,
        "meta_overhead": times["learned"] / times["uniform"],
        "wall_s": wall_s,
        "weights": w,
        "corrupted": data.corrupted,
        "metrics": str(out / METRICS),
    }


def first_window_inputs(config: ReweightConfig, data: ReweightData) -> tuple[Any, ...]:
    """The arguments of the learned arm's first meta-step window, with real data: ``(meta, params,
    inner_state, batches, outer_batch)``, for ``meta_gradient_builder(config)``'s programs (and
    ``metagrad check --case reweight``)."""
    weight_model = make_weight_model(config.weights, len(data.train), config.scorer_hidden)
    params = _init_params(config)
    index = window_indices(config.seed, 1, config.steps, config.batch, len(data.train))
    outer = outer_indices(config.seed, 1, config.outer_batch, len(data.val))
    return (
        weight_model.init(jax.random.PRNGKey(config.seed + 1)),
        params,
        optax.adam(config.lr, eps_root=EPS_ROOT).init(params),
        {
            "tokens": jnp.asarray(data.train[index], jnp.int32),
            "index": jnp.asarray(index, jnp.int32),
        },
        jnp.asarray(data.val[outer], jnp.int32),
    )


def meta_gradient_builder(config: ReweightConfig) -> Any:
    """``(mode, T) -> (jitted meta-gradient, abstract arguments)`` of one window, for the memory
    report (compile only: the arguments are ``jax.ShapeDtypeStruct``s)."""
    model = config.spec.model()
    weight_model = make_weight_model(config.weights, config.train_sequences, config.scorer_hidden)
    inner_opt = optax.adam(config.lr, eps_root=EPS_ROOT)

    def weighted_loss(p: Any, meta: Any, batch: dict[str, jax.Array]) -> jax.Array:
        losses = model.sequence_losses(p, batch["tokens"])
        return weighted_mean(losses, weight_model.weights(meta, batch["tokens"], batch["index"],
                                                          losses))  # fmt: skip

    def outer_loss(p: Any, _: Any, tokens: jax.Array) -> jax.Array:
        return jnp.mean(model.sequence_losses(p, tokens))

    params = jax.eval_shape(lambda: _init_params(config))
    meta = jax.eval_shape(weight_model.init, jax.random.PRNGKey(0))
    opt_state = jax.eval_shape(inner_opt.init, params)

    def build(mode: str, steps: int) -> tuple[Any, tuple[Any, ...]]:
        fn = window_value_and_grad(weighted_loss, outer_loss, lambda _: inner_opt, mode=mode)
        batches = {
            "tokens": jax.ShapeDtypeStruct((steps, config.batch, config.seq), jnp.int32),
            "index": jax.ShapeDtypeStruct((steps, config.batch), jnp.int32),
        }
        outer = jax.ShapeDtypeStruct((config.outer_batch, config.seq), jnp.int32)
        return jax.jit(fn), (meta, params, opt_state, batches, outer)

    return build


REWEIGHT = Experiment(
    prepare_data,
    make_arms,
    summarise,
    title=lambda c: f"meta reweight ({c.weights}, {c.corruption} p={c.fraction})",
)
