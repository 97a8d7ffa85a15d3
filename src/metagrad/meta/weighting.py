"""Meta-parameters that weight training examples: per-example logits, or a scoring network.

Both map a batch of sequences to weights in (0, 1); the weighted training loss is the
weight-normalised mean ``sum_i w_i l_i / sum_i w_i``. Normalising makes the weights *relative*:
raising every weight together changes nothing, so the meta-gradient only moves weight from some
examples to others, and the inner learning rate keeps its meaning.

* :class:`PerExampleWeights`: one logit per training sequence, ``w_i = sigmoid(logit_i)``.
  Exact and simple, but an example's weight only learns when it is in a batch, and it does not
  generalise to new data.
* :class:`Scorer`: a small MLP maps features of a sequence to its weight, so every batch trains
  it and it scores unseen sequences. Features: the byte histogram, a hashed byte-bigram histogram
  (order: what separates shuffled text from code) and the sequence's current training loss,
  relative to the batch mean and with no gradient through it (as Meta-Weight-Net feeds the loss).

References:
    Ren, Zeng, Yang, Urtasun. *Learning to Reweight Examples for Robust Deep Learning*, ICML 2018.
    Shu, Xie, Yi, Zhao, Zhou, Xu, Meng. *Meta-Weight-Net: Learning an Explicit Mapping for Sample
    Weighting*, NeurIPS 2019.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

WEIGHTINGS: tuple[str, ...] = ("per-example", "scorer")


def weighted_mean(losses: jax.Array, weights: jax.Array) -> jax.Array:
    """``sum_i w_i l_i / sum_i w_i``: the weight-normalised mean loss of a batch."""
    return jnp.sum(weights * losses) / jnp.sum(weights)


@dataclasses.dataclass(frozen=True)
class PerExampleWeights:
    """One learned logit per training sequence: ``w_i = sigmoid(logit_i)``, initialised at 0.5.

    Attributes:
      n: number of training sequences (the batch carries their indices).
    """

    n: int

    def init(self, key: jax.Array) -> dict[str, jax.Array]:
        """Meta-parameters ``{"logits": zeros (n,)}`` (``key`` is unused: no randomness)."""
        del key
        return {"logits": jnp.zeros((self.n,), jnp.float32)}

    def weights(
        self, meta: dict[str, jax.Array], tokens: jax.Array, index: jax.Array, losses: jax.Array
    ) -> jax.Array:
        """Weights ``(B,)`` of the sequences with training-set indices ``index``."""
        del tokens, losses
        return jax.nn.sigmoid(meta["logits"][index])


@dataclasses.dataclass(frozen=True)
class Scorer:
    """An MLP from sequence features to a weight: ``w = sigmoid(MLP(features))``.

    Attributes:
      hidden: hidden units of the one-hidden-layer MLP.
      buckets: buckets of the hashed bigram histogram.
    """

    hidden: int = 32
    buckets: int = 256

    @property
    def n_features(self) -> int:
        """256 byte frequencies + ``buckets`` bigram frequencies + the relative loss."""
        return 256 + self.buckets + 1

    def init(self, key: jax.Array) -> dict[str, Any]:
        """MLP parameters; the output layer starts at zero, so every weight starts at 0.5."""
        # Unit-variance input weights: each histogram sums to one and the relative loss is O(1),
        # so pre-activations are O(1) (a 1/sqrt(fan-in) scale would make them ~0.05).
        w1 = jax.random.normal(key, (self.n_features, self.hidden), jnp.float32)
        return {
            "w1": w1,
            "b1": jnp.zeros((self.hidden,), jnp.float32),
            "w2": jnp.zeros((self.hidden,), jnp.float32),
            "b2": jnp.zeros((), jnp.float32),
        }

    def features(self, tokens: jax.Array, losses: jax.Array) -> jax.Array:
        """Features ``(B, n_features)`` of byte sequences ``(B, S)`` and their losses ``(B,)``."""
        tokens = jnp.asarray(tokens, jnp.int32)
        # Hashed bigrams: a cheap fixed-size summary of byte order.
        pairs = (tokens[..., :-1] * 257 + tokens[..., 1:]) % self.buckets
        unigram = _frequencies(tokens, 256)
        bigram = _frequencies(pairs, self.buckets)
        losses = jax.lax.stop_gradient(losses)
        relative = losses - jnp.mean(losses)
        return jnp.concatenate([unigram, bigram, relative[..., None]], axis=-1)

    def logits(self, meta: dict[str, Any], features: jax.Array) -> jax.Array:
        """The MLP's output (the weight's logit), ``(B,)``."""
        h = jnp.tanh(features @ meta["w1"] + meta["b1"])
        return h @ meta["w2"] + meta["b2"]

    def weights(
        self, meta: dict[str, Any], tokens: jax.Array, index: jax.Array, losses: jax.Array
    ) -> jax.Array:
        """Weights ``(B,)`` of the sequences ``tokens`` (``index`` is unused)."""
        del index
        return jax.nn.sigmoid(self.logits(meta, self.features(tokens, losses)))


WeightModel = PerExampleWeights | Scorer


def _frequencies(ids: jax.Array, size: int) -> jax.Array:
    """Relative frequencies ``(..., size)`` of the integer ids along the last axis.

    Counted with ``bincount`` rather than a mean of one-hot vectors, which would materialise a
    ``(..., S, size)`` array (half a gigabyte for 2,048 sequences).
    """
    flat = ids.reshape(-1, ids.shape[-1])
    counts = jax.vmap(lambda row: jnp.bincount(row, length=size))(flat)
    return (counts / ids.shape[-1]).astype(jnp.float32).reshape(*ids.shape[:-1], size)


def make_weight_model(kind: str, n_train: int, hidden: int = 32) -> WeightModel:
    """The weight model called ``kind`` (one of :data:`WEIGHTINGS`)."""
    if kind == "per-example":
        return PerExampleWeights(n_train)
    if kind == "scorer":
        return Scorer(hidden=hidden)
    raise ValueError(f"weights must be one of {', '.join(WEIGHTINGS)}; got {kind!r}.")
