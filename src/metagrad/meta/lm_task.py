"""The language-modelling task both applications share: model, data order and evaluation.

* The model is :class:`metagrad.models.DecoderLM` over bytes (vocabulary 256).
* The data of step ``s`` is a function of ``(seed, s)`` only (so resuming is exact): training
  batches walk through seeded per-epoch permutations of a pool of sequences, so every sequence is
  visited equally often; the outer (validation) batch of step ``s`` is drawn with its own seed.
* Evaluation is the mean next-byte cross-entropy (nats per byte) over a fixed set of sequences.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from metagrad.autodiff import MODES
from metagrad.data.text import TextConfig, TextDataset, load_stdlib_text, load_text
from metagrad.models import DecoderLM
from metagrad.validation import require_one_of


@dataclasses.dataclass(frozen=True)
class LMSpec:
    """The byte-level decoder LM of an experiment.

    Attributes:
      width, depth, heads: transformer sizes.
      seq: bytes per sequence.
    """

    width: int = 64
    depth: int = 2
    heads: int = 4
    seq: int = 128

    def model(self) -> DecoderLM:
        """The ``DecoderLM`` (vocabulary 256, ``max_len = seq``)."""
        return DecoderLM(
            vocab_size=256, width=self.width, depth=self.depth, heads=self.heads, max_len=self.seq
        )


RUN_SIZES = ("steps", "meta_steps", "batch", "outer_batch", "width", "depth", "heads", "seq",
             "eval_sequences")  # fmt: skip
"""The positive integer fields every online meta-learning run has."""


def validate_run_config(
    config: Any, *, positive_ints: tuple[str, ...] = (), positive_or_none: tuple[str, ...] = ()
) -> None:
    """Checks the fields every online meta-learning configuration shares (mode, sizes,
    evaluation and checkpoint intervals) and the named extra ones.

    Args:
      config: a run configuration (``ReweightConfig``, ``LRConfig``).
      positive_ints: fields beyond ``RUN_SIZES`` that must be positive ints.
      positive_or_none: fields that must be ``None`` or > 0 (learning rates).

    Raises:
      ValueError: naming the field, what was expected and the value received.
    """
    require_one_of("mode", config.mode, (*MODES, "auto"))
    if config.memory_budget is not None and (
        config.mode != "auto"
        or not isinstance(config.memory_budget, int)
        or config.memory_budget < 1
    ):
        raise ValueError(
            "memory_budget must be None, or a positive int (bytes) with mode='auto'; got "
            f"memory_budget={config.memory_budget!r} with mode={config.mode!r}."
        )
    for name in (*RUN_SIZES, *positive_ints):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}.")
    if config.seq < 2:
        raise ValueError(f"seq must be >= 2 (an input byte and a target); got {config.seq}.")
    for name in ("eval_every", "checkpoint_every"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must be >= 0; got {getattr(config, name)!r}.")
    for name in positive_or_none:
        value = getattr(config, name)
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0; got {value!r}.")


@dataclasses.dataclass(frozen=True)
class LMRunConfig:
    """What every online meta-learning run on the byte-level LM has (stored in the checkpoint).

    Attributes:
      text: a local text file or folder (None: the Python standard library's sources).
      mode: differentiation mode of the meta-gradient (``"reverse"``, ``"remat"``, ``"mixflow"``,
        or ``"auto"``: the fastest mode and checkpoint schedule whose compiled memory fits
        ``memory_budget``; see ``metagrad.Bilevel``).
      memory_budget: bytes for ``mode="auto"`` (None: no limit); only with ``"auto"``.
      steps: inner steps T per window (truncated unroll).
      meta_steps: windows (meta-steps); every arm takes ``meta_steps * steps`` inner steps.
      batch: training sequences per inner step.
      outer_batch: validation sequences in each meta-objective.
      width, depth, heads, seq: the decoder LM and the sequence length in bytes.
      meta_lr: Adam learning rate of the meta-parameters.
      eval_sequences: validation (and test) sequences of each evaluation.
      eval_every: evaluation period in meta-steps.
      checkpoint_every: checkpoint period in meta-steps.
      seed: seed of the data order and the initialisations.
    """

    text: str | None = None
    mode: str = "mixflow"
    memory_budget: int | None = None
    steps: int = 4
    meta_steps: int = 100
    batch: int = 16
    outer_batch: int = 32
    width: int = 64
    depth: int = 2
    heads: int = 4
    seq: int = 128
    meta_lr: float | None = None
    eval_sequences: int = 512
    eval_every: int = 10
    checkpoint_every: int = 10
    seed: int = 0

    # Fields of a subclass that must be positive ints, or None / > 0 (learning rates).
    POSITIVE_INTS: ClassVar[tuple[str, ...]] = ()
    POSITIVE_OR_NONE: ClassVar[tuple[str, ...]] = ("meta_lr",)

    def __post_init__(self) -> None:
        validate_run_config(
            self, positive_ints=self.POSITIVE_INTS, positive_or_none=self.POSITIVE_OR_NONE
        )

    @property
    def spec(self) -> LMSpec:
        """The decoder LM's sizes."""
        return LMSpec(self.width, self.depth, self.heads, self.seq)


def load_corpus(text: str | None, seq: int, *, progress: bool = True) -> TextDataset:
    """The stdlib corpus (``text=None``) or the user's text file / folder, in ``seq``-byte
    sequences."""
    config = TextConfig(seq_len=seq)
    if text is None:
        return load_stdlib_text(config, progress=progress)
    return load_text(text, config, progress=progress)


def window_indices(seed: int, step: int, steps: int, batch: int, pool: int) -> np.ndarray:
    """Indices ``(steps, batch)`` into a pool of ``pool`` sequences for window ``step`` (from 1).

    Window ``s`` takes positions ``(s-1)·steps·batch ...`` of the infinite sequence formed by
    concatenating seeded permutations of the pool (one per epoch): equal visits, deterministic.
    """
    per_window = steps * batch
    first = (step - 1) * per_window
    positions = np.arange(first, first + per_window)
    epochs = positions // pool
    out = np.empty(per_window, np.int64)
    for epoch in np.unique(epochs):
        perm = np.random.default_rng([seed, int(epoch)]).permutation(pool)
        sel = epochs == epoch
        out[sel] = perm[positions[sel] % pool]
    return out.reshape(steps, batch)


def outer_indices(seed: int, step: int, batch: int, pool: int) -> np.ndarray:
    """Indices ``(batch,)`` of the outer (validation) batch of window ``step``."""
    rng = np.random.default_rng([seed, step, 0x0E7])
    return rng.choice(pool, size=min(batch, pool), replace=False)


def outer_tokens(config: LMRunConfig, val_tokens: jax.Array, step: int) -> jax.Array:
    """The validation sequences of window ``step``'s meta-objective (``config.outer_batch``)."""
    return val_tokens[outer_indices(config.seed, step, config.outer_batch, len(val_tokens))]


def eval_indices(seed: int, n: int, pool: int) -> np.ndarray:
    """A fixed random subset of ``min(n, pool)`` sequences for evaluation (sorted)."""
    rng = np.random.default_rng([seed, 0xE7A1])
    return np.sort(rng.choice(pool, size=min(n, pool), replace=False))


@functools.lru_cache(maxsize=8)
def _eval_fn(model: DecoderLM, chunk: int) -> Any:
    @jax.jit
    def fn(params: Any, tokens: jax.Array) -> jax.Array:
        chunks = tokens.reshape(-1, chunk, tokens.shape[-1])
        return jax.lax.map(lambda t: model.sequence_losses(params, t), chunks).reshape(-1)

    return fn


def sequence_losses(
    model: DecoderLM, params: Any, tokens: np.ndarray, chunk: int = 64
) -> np.ndarray:
    """Per-sequence mean next-byte loss (nats) of ``tokens`` ``(n, seq)``, in chunks."""
    n = len(tokens)
    chunk = max(1, min(chunk, n))
    padded = -(-n // chunk) * chunk
    tok = np.zeros((padded, tokens.shape[1]), np.int32)
    tok[:n] = tokens
    return np.asarray(_eval_fn(model, chunk)(params, jnp.asarray(tok)))[:n]


def mean_loss(model: DecoderLM, params: Any, tokens: np.ndarray) -> float:
    """Mean next-byte cross-entropy (nats per byte) over ``tokens``."""
    return float(np.mean(sequence_losses(model, params, tokens)))


def count_params(params: Any) -> int:
    """Number of scalar parameters."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
