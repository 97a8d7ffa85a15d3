"""The 4-block convolutional backbone of few-shot learning ("conv4"), as plain pytrees."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from metagrad.models import layers
from metagrad.models.layers import (
    CONV_IMPLS,
    _check_float_dtype,
    _check_params_len,
    _check_positive_int,
)

Array = jax.Array

# Batch-norm statistics over batch and space of NHWC activations: one mean/variance per channel.
_BN_AXES = (0, 1, 2)


@dataclasses.dataclass(frozen=True)
class Conv4:
    """Conv4: ``n_blocks`` x [3x3 conv -> batch norm -> ReLU -> 2x2 max-pool], then a dense head.

    Each block is a 3x3 convolution (stride 1, 'SAME' padding), batch normalisation with the batch's
    own statistics (no running averages: MAML's per-task 'transductive' batch norm, ``eps = 1e-5``),
    ReLU and 2x2 max-pooling with stride 2 (floor mode, like PyTorch's ``MaxPool2d(2)``). The head
    flattens the ``(s, s, channels)`` feature map (``s = image_size // 2**n_blocks``) and applies a
    dense layer. With the defaults (28x28 Omniglot images) ``s = 1`` and the head sees 64 features.

    Initialisation: convolutions He (``w ~ N(0, 2 / (9 * C_in))``), biases 0, batch-norm
    ``scale = 1`` and ``offset = 0``; the head is fan-in (``w ~ N(0, 1 / feat)``), bias 0.
    Note that a conv bias directly followed by batch norm is cancelled by the mean subtraction; it is
    kept for parity with the reference MAML implementation (its gradient is zero up to rounding).

    The dataclass holds hyper-parameters only (hashable: it can be a static argument of ``jax.jit``).

    Attributes:
      n_classes: number of output logits (the "way" of the task).
      channels: channels of every convolution.
      n_blocks: number of conv blocks.
      in_channels: channels of the input images.
      image_size: height = width of the input images.
      conv_impl: ``"im2col"``, ``"lax"`` or ``"auto"`` (``"im2col"`` on the CPU backend, ``"lax"``
        otherwise, decided when ``apply`` is called); see :func:`metagrad.models.layers.conv2d`.

    References:
      Vinyals et al., *Matching Networks for One Shot Learning*, NeurIPS 2016.
      Finn, Abbeel & Levine, *Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks*,
      ICML 2017.
    """

    n_classes: int = 5
    channels: int = 64
    n_blocks: int = 4
    in_channels: int = 1
    image_size: int = 28
    conv_impl: str = "auto"

    def __post_init__(self) -> None:
        for name in ("n_classes", "channels", "n_blocks", "in_channels", "image_size"):
            _check_positive_int(name, getattr(self, name))
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS}; got {self.conv_impl!r}.")
        if self.image_size < 2**self.n_blocks:
            raise ValueError(
                f"image_size must be at least 2**n_blocks = {2**self.n_blocks} so that every "
                f"2x2 max-pool has an input of size >= 2; got image_size={self.image_size} with "
                f"n_blocks={self.n_blocks}. Use larger images or fewer blocks."
            )

    @property
    def feature_size(self) -> int:
        """Length of the flattened feature vector the head sees: ``channels * s * s``."""
        s = self.image_size // 2**self.n_blocks
        return self.channels * s * s

    def init(self, key: Array, dtype: Any = jnp.float32) -> list[dict[str, Array]]:
        """Create the parameters.

        Args:
          key: a PRNG key.
          dtype: floating-point dtype of every parameter.

        Returns:
          A list of ``n_blocks + 1`` dicts, in forward order: ``n_blocks`` conv blocks
          ``{"w": (3, 3, C_in, C_out), "b": (C_out,), "scale": (C_out,), "offset": (C_out,)}``, then
          the head ``{"w": (feature_size, n_classes), "b": (n_classes,)}``.
        """
        dtype = _check_float_dtype(dtype)
        c, c_ins = self.channels, [self.in_channels] + [self.channels] * (self.n_blocks - 1)
        # He initialisation for the ReLU conv blocks (fan-in 3 * 3 * C_in), LeCun for the head.
        specs = [((3, 3, c_in, c), math.sqrt(2.0 / (9 * c_in))) for c_in in c_ins]
        specs.append(((self.feature_size, self.n_classes), 1.0 / math.sqrt(self.feature_size)))
        *conv_ws, head_w = layers.scaled_normals(key, specs, dtype)
        params: list[dict[str, Array]] = [
            {
                "w": w,
                "b": jnp.zeros((c,), dtype),
                "scale": jnp.ones((c,), dtype),
                "offset": jnp.zeros((c,), dtype),
            }
            for w in conv_ws
        ]
        params.append({"w": head_w, "b": jnp.zeros((self.n_classes,), dtype)})
        return params

    def layer_functions(self) -> list[Callable[[dict[str, Array], Array], Array]]:
        """One function ``(layer_params, h) -> h`` per entry of the parameter list; composing them
        is ``apply``. The few-shot layer splits the forward pass with them (Lambda patterns cache
        the frozen prefix's features)."""
        impl = layers.resolve_conv_impl(self.conv_impl)

        def block(p: dict[str, Array], x: Array) -> Array:
            h = layers.batch_norm(p, layers.conv2d(p, x, impl), _BN_AXES)
            return jax.nn.relu(layers.max_pool_2x2(h))

        def head(p: dict[str, Array], x: Array) -> Array:
            return layers.dense(p, x.reshape(x.shape[0], -1))

        return [block] * self.n_blocks + [head]

    def apply(
        self, params: list[dict[str, Array]], images: Array, return_features: bool = False
    ) -> Array | tuple[Array, list[Array]]:
        """Run the network on a batch of images.

        The batch norm uses the statistics of ``images``: to normalise per task, call ``apply`` once
        per task (e.g. under ``jax.vmap`` or ``jax.lax.map`` over tasks).

        Args:
          params: parameters from :meth:`init`.
          images: NHWC images of shape ``(B, image_size, image_size, in_channels)``.
          return_features: also return every layer's pre-activation output.

        Returns:
          Logits of shape ``(B, n_classes)``; with ``return_features=True`` the pair
          ``(logits, features)`` where ``features`` holds the ``n_blocks`` conv outputs (before batch
          norm), of shapes ``(B, s_l, s_l, channels)``, followed by the logits.
        """
        _check_params_len(params, self.n_blocks + 1, "Conv4")
        expected = (self.image_size, self.image_size, self.in_channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"Conv4.apply: images must be NHWC of shape (B, {expected[0]}, {expected[1]}, "
                f"{expected[2]}) (image_size, image_size, in_channels); got shape {images.shape}."
            )
        # Resolve "auto" once per call, so that every block uses the same implementation.
        impl = layers.resolve_conv_impl(self.conv_impl)
        features = []
        x = images
        for p in params[:-1]:
            h = layers.conv2d(p, x, impl)
            features.append(h)
            x = layers.batch_norm(p, h, _BN_AXES)
            # ReLU and max-pool commute (ReLU is monotone); pooling first applies ReLU to 4x
            # fewer elements.
            x = jax.nn.relu(layers.max_pool_2x2(x))
        logits = layers.dense(params[-1], x.reshape(x.shape[0], -1))
        features.append(logits)
        return (logits, features) if return_features else logits
