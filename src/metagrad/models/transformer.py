"""A small decoder-only transformer language model, as plain pytrees and pure functions.

Everything is written with plain ``jax.numpy`` operations (einsum, a masked softmax with a large
finite negative number) so that every operation has a forward-mode rule: the library differentiates
the inner gradient of this model in forward mode (``jax.jvp`` of ``jax.grad``). Fused attention
kernels (``jax.nn.dot_product_attention``) and anything with a ``jax.custom_vjp`` are avoided for
that reason.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metagrad.models import layers
from metagrad.models.layers import _check_float_dtype, _check_positive_int

Array = jax.Array
Params = dict[str, Any]


def rotary_embedding(x: Array, base: float = 10000.0) -> Array:
    """Rotary position embedding of queries or keys at positions ``0, ..., S - 1``.

    Pairs of features ``(x[..., i], x[..., i + d/2])`` (the "rotate-half" layout) are rotated by the
    angle ``position * base**(-2i / d)``, so that the dot product of a rotated query and key depends
    on their positions only through their offset.

    Args:
      x: array of shape ``(..., S, heads, head_dim)`` with an even ``head_dim``.
      base: the wavelength base.

    Returns:
      The rotated array, same shape and dtype as ``x``.

    References:
      Su et al., *RoFormer: Enhanced Transformer with Rotary Position Embedding*, arXiv 2104.09864,
      2021.
    """
    seq_len, head_dim = x.shape[-3], x.shape[-1]
    if head_dim % 2:
        raise ValueError(
            f"rotary_embedding: head_dim (last axis of x) must be even; got x of shape {x.shape}."
        )
    half = head_dim // 2
    # Angles are trace-time constants: compute them in float64 NumPy, then cast once.
    inv_freq = base ** (-np.arange(half, dtype=np.float64) * 2.0 / head_dim)
    angles = np.arange(seq_len, dtype=np.float64)[:, None] * inv_freq[None, :]  # (S, half)
    cos = jnp.asarray(np.cos(angles)[:, None, :], x.dtype)  # (S, 1, half): broadcast over heads
    sin = jnp.asarray(np.sin(angles)[:, None, :], x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def causal_self_attention(
    p: Params,
    x: Array,
    heads: int,
    rope_base: float = 10000.0,
    logit_scale: float | None = None,
) -> Array:
    """Causal multi-head self-attention with rotary position embeddings.

    Args:
      p: ``{"qkv": {"w": (D, 3D), "b": (3D,)}, "out": {"w": (D, D), "b": (D,)}}``. The columns of
        the fused ``qkv`` projection are ``[q | k | v]``, each split into ``heads`` contiguous
        groups of ``D // heads`` (one per head).
      x: array of shape ``(..., S, D)``.
      heads: number of attention heads; must divide ``D``.
      rope_base: wavelength base of the rotary embedding.
      logit_scale: the multiplier of ``q · k``; ``None`` is ``1 / sqrt(head_dim)``. μP uses
        ``1 / head_dim`` (times a constant), see :class:`DecoderLM`.

    Returns:
      Array of shape ``(..., S, D)``.
    """
    *lead, seq_len, width = x.shape
    if width % heads:
        raise ValueError(
            f"causal_self_attention: heads must divide the width (last axis of x); got "
            f"heads={heads} and x of shape {x.shape}."
        )
    head_dim = width // heads
    qkv = layers.dense(p["qkv"], x)  # one matmul for the three projections
    q, k, v = (t.reshape(*lead, seq_len, heads, head_dim) for t in jnp.split(qkv, 3, axis=-1))
    q = rotary_embedding(q, rope_base)
    k = rotary_embedding(k, rope_base)
    scale = 1.0 / math.sqrt(head_dim) if logit_scale is None else float(logit_scale)
    scores = jnp.einsum("...qhd,...khd->...hqk", q, k) * jnp.asarray(scale, x.dtype)
    causal = np.tril(np.ones((seq_len, seq_len), dtype=bool))  # key position <= query position
    # A large *finite* negative number rather than -inf: exp underflows to exactly 0, and no
    # inf - inf = nan can appear in any derivative (forward or reverse, any order).
    scores = jnp.where(causal, scores, jnp.asarray(jnp.finfo(scores.dtype).min / 2, scores.dtype))
    # Softmax written out (instead of jax.nn.softmax) to keep to plain primitives. Subtracting the
    # row max is only for numerical range; it does not change the value, so no gradient through it.
    scores = scores - jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
    weights = jnp.exp(scores)
    weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    out = jnp.einsum("...hqk,...khd->...qhd", weights, v).reshape(*lead, seq_len, width)
    return layers.dense(p["out"], out)


@dataclasses.dataclass(frozen=True)
class DecoderLM:
    """Decoder-only transformer language model with pre-norm blocks.

    ``x = embed[tokens]``; each block does ``x = x + Attn(RMSNorm(x))`` then
    ``x = x + MLP(RMSNorm(x))`` with causal multi-head self-attention using rotary position
    embeddings and a gelu MLP of hidden size ``mlp_ratio * width``; a final RMSNorm and an untied
    unembedding give the logits. There is no learned position table: ``max_len`` only bounds the
    sequence length.

    Initialisation: embedding ``N(0, 1)``; every dense layer fan-in, ``w ~ N(0, 1 / d_in)``, bias 0,
    except the two projections that write into the residual stream (attention output, MLP down),
    which are further scaled by ``1 / sqrt(2 * depth)`` (as in GPT-2) so that the residual stream
    does not grow with depth; the unembedding ``N(0, 1 / width)``; RMSNorm scales 1.

    The dataclass holds hyper-parameters only (hashable: it can be a static argument of ``jax.jit``).

    Attributes:
      vocab_size: number of token ids; tokens must lie in ``[0, vocab_size)`` (values are not
        checked, since they may be traced: ids ``>= vocab_size`` give NaN embeddings, negative
        ids wrap around as in NumPy).
      width: model width ``D``.
      depth: number of blocks.
      heads: attention heads; must divide ``width``, and ``width // heads`` must be even (RoPE).
      mlp_ratio: MLP hidden size is ``mlp_ratio * width``.
      max_len: the longest sequence ``apply`` accepts.
      rope_base: wavelength base of the rotary embedding.
      attn_logit_scale: the multiplier of the attention logits ``q · k``; ``None`` (default) is
        the standard ``1 / sqrt(head_dim)``. μP (Yang et al. 2022) scales them by
        ``1 / head_dim`` instead: once training has correlated ``q`` and ``k``, their dot
        product grows like ``head_dim``, not ``sqrt(head_dim)``. The width experiments use
        ``sqrt(base_head_dim) / head_dim``, which equals the standard scale at the base width.

    References:
      Yang et al., *Tensor Programs V: Tuning Large Neural Networks via Zero-Shot
      Hyperparameter Transfer*, 2022 (the ``1 / d`` attention scale).
      Su et al., *RoFormer: Enhanced Transformer with Rotary Position Embedding*, 2021 (RoPE).
      Zhang & Sennrich, *Root Mean Square Layer Normalization*, NeurIPS 2019 (RMSNorm).
    """

    vocab_size: int = 256
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    max_len: int = 512
    rope_base: float = 10000.0
    attn_logit_scale: float | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "width", "depth", "heads", "mlp_ratio", "max_len"):
            _check_positive_int(name, getattr(self, name))
        if self.attn_logit_scale is not None and not float(self.attn_logit_scale) > 0:
            raise ValueError(
                "attn_logit_scale must be None (1/sqrt(head_dim)) or a positive number (e.g. "
                f"1/head_dim for μP); got {self.attn_logit_scale!r}."
            )
        if self.width % self.heads:
            raise ValueError(
                f"width must be divisible by heads; got width={self.width}, heads={self.heads}."
            )
        if (self.width // self.heads) % 2:
            raise ValueError(
                f"width // heads (the head dimension) must be even for rotary embeddings; got "
                f"width={self.width}, heads={self.heads} (head dimension {self.width // self.heads})."
            )

    @property
    def head_dim(self) -> int:
        """Dimension of each attention head, ``width // heads``."""
        return self.width // self.heads

    def init(self, key: Array, dtype: Any = jnp.float32) -> Params:
        """Create the parameters.

        Args:
          key: a PRNG key.
          dtype: floating-point dtype of every parameter.

        Returns:
          ``{"embed": (V, D), "blocks": [block, ...], "final_norm": {"scale": (D,)},
          "unembed": (D, V)}`` where each block is ``{"attn_norm": {"scale"}, "attn": {"qkv":
          dense, "out": dense}, "mlp_norm": {"scale"}, "mlp": {"up": dense, "down": dense}}`` and a
          dense is ``{"w", "b"}`` (see :func:`metagrad.models.layers.dense`).
        """
        dtype = _check_float_dtype(dtype)
        d, f = self.width, self.mlp_ratio * self.width
        resid = 1.0 / math.sqrt(2 * self.depth)  # for the projections into the residual stream
        block_specs = [
            ((d, 3 * d), 1.0 / math.sqrt(d)),  # attention qkv
            ((d, d), resid / math.sqrt(d)),  # attention out
            ((d, f), 1.0 / math.sqrt(d)),  # mlp up
            ((f, d), resid / math.sqrt(f)),  # mlp down
        ]
        specs = [
            ((self.vocab_size, d), 1.0),
            *block_specs * self.depth,
            ((d, self.vocab_size), 1.0 / math.sqrt(d)),
        ]
        embed, *block_ws, unembed = layers.scaled_normals(key, specs, dtype)

        def dense(w: Array) -> dict[str, Array]:
            return {"w": w, "b": jnp.zeros(w.shape[1:], dtype)}

        def norm() -> dict[str, Array]:
            return {"scale": jnp.ones((d,), dtype)}

        blocks = []
        for i in range(self.depth):
            qkv, out, up, down = block_ws[4 * i : 4 * i + 4]
            blocks.append(
                {
                    "attn_norm": norm(),
                    "attn": {"qkv": dense(qkv), "out": dense(out)},
                    "mlp_norm": norm(),
                    "mlp": {"up": dense(up), "down": dense(down)},
                }
            )
        return {"embed": embed, "blocks": blocks, "final_norm": norm(), "unembed": unembed}

    def zero_query(self, params: Params) -> Params:
        """The parameters with every block's query projection (the ``q`` columns of ``qkv``,
        weight and bias) set to zero.

        A μP option for transformers (Yang et al. 2022, Tensor Programs V; the ``mup`` package's
        README recommends it with a zero read-out): with ``q = 0`` the attention logits are 0 at
        initialisation (uniform causal attention) instead of a random ``O(1/√head_dim)`` term
        under the ``1/head_dim`` scale, so they too move only by their update. The keys and
        values keep their initialisation, so the query still gets a gradient at the first step.

        Args:
          params: parameters from :meth:`init` (possibly rescaled).

        Returns:
          New parameters (the input is not modified).
        """
        d = self.width
        blocks = []
        for blk in params["blocks"]:
            qkv = blk["attn"]["qkv"]
            qkv = {"w": qkv["w"].at[:, :d].set(0), "b": qkv["b"].at[:d].set(0)}
            blocks.append({**blk, "attn": {**blk["attn"], "qkv": qkv}})
        return {**params, "blocks": blocks}

    @property
    def feature_names(self) -> list[str]:
        """Names of the features returned by ``apply(..., return_features=True)``."""
        names = ["embed"]
        for i in range(self.depth):
            names += [f"block{i}.attn", f"block{i}.mlp"]
        return [*names, "logits"]

    def apply(
        self, params: Params, tokens: Array, return_features: bool = False
    ) -> Array | tuple[Array, list[Array]]:
        """Next-token logits.

        Args:
          params: parameters from :meth:`init`.
          tokens: integer token ids of shape ``(B, S)`` (any leading shape ``(..., S)`` works,
            e.g. ``(S,)`` under ``jax.vmap``), with ``1 <= S <= max_len``.
          return_features: also return the embedding, what every attention and MLP sub-block
            adds to the residual stream, and the logits (named by :attr:`feature_names`), e.g.
            for μP coordinate checks.

        Returns:
          Logits of shape ``(..., S, vocab_size)``; position ``t`` depends on ``tokens[..., :t+1]``
          only. With ``return_features=True`` the pair ``(logits, features)``.
        """
        tokens = jnp.asarray(tokens)
        self._check_tokens(tokens, min_len=1, caller="apply")
        if len(params["blocks"]) != self.depth:
            raise ValueError(
                f"DecoderLM.apply: params['blocks'] must hold depth={self.depth} blocks; got "
                f"{len(params['blocks'])}."
            )
        x = jnp.take(params["embed"], tokens, axis=0)  # ids >= vocab_size -> NaN ("fill" mode)
        features = [x]
        for blk in params["blocks"]:
            h = layers.rms_norm(blk["attn_norm"], x)
            a = causal_self_attention(
                blk["attn"], h, self.heads, self.rope_base, self.attn_logit_scale
            )
            x = x + a
            h = layers.rms_norm(blk["mlp_norm"], x)
            h = jax.nn.gelu(layers.dense(blk["mlp"]["up"], h))
            m = layers.dense(blk["mlp"]["down"], h)
            x = x + m
            features += [a, m]
        x = layers.rms_norm(params["final_norm"], x)
        # Through layers.dense (without bias) so that curvature hooks see the unembedding too.
        logits = layers.dense({"w": params["unembed"]}, x)
        return (logits, [*features, logits]) if return_features else logits

    def sequence_losses(self, params: Params, tokens: Array) -> Array:
        """Mean next-token cross-entropy of each sequence.

        Predicts ``tokens[..., 1:]`` from ``tokens[..., :-1]``.

        Args:
          params: parameters from :meth:`init`.
          tokens: integer token ids of shape ``(B, S)`` (or ``(..., S)``), ``2 <= S <= max_len``.

        Returns:
          Losses of shape ``(B,)`` (``tokens.shape[:-1]``), in nats.
        """
        tokens = jnp.asarray(tokens)
        self._check_tokens(tokens, min_len=2, caller="sequence_losses")
        logits = self.apply(params, tokens[..., :-1])
        targets = tokens[..., 1:]
        # log-softmax written out with plain primitives (see causal_self_attention).
        m = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
        log_z = jnp.log(jnp.sum(jnp.exp(logits - m), axis=-1)) + m[..., 0]
        target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        return jnp.mean(log_z - target_logits, axis=-1)

    def _check_tokens(self, tokens: Array, min_len: int, caller: str) -> None:
        if not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
            raise TypeError(
                f"DecoderLM.{caller}: tokens must be integer token ids (e.g. int32); got dtype "
                f"{jnp.result_type(tokens)}."
            )
        if tokens.ndim < 1 or not min_len <= tokens.shape[-1] <= self.max_len:
            raise ValueError(
                f"DecoderLM.{caller}: tokens must have shape (B, S) with {min_len} <= S <= "
                f"max_len={self.max_len}; got shape {tokens.shape}."
            )
