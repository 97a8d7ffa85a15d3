"""Multi-layer perceptron as a plain pytree of parameters and a pure ``apply`` function."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from metagrad.models import layers
from metagrad.models.layers import _check_float_dtype, _check_params_len, _check_positive_int

Array = jax.Array

# Activations are plain functions with forward- and reverse-mode rules (jax.nn.relu has a
# custom_jvp, which composes with jvp-of-grad; nothing here uses custom_vjp).
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,  # tanh approximation (JAX's default)
    "silu": jax.nn.silu,
}

# Initialisation gain per activation: He (sqrt 2) for the rectifier-like ones, which zero out about
# half of their input's variance, LeCun (1) for tanh, which is the identity near 0.
_GAINS: dict[str, float] = {
    "relu": math.sqrt(2.0),
    "tanh": 1.0,
    "gelu": math.sqrt(2.0),
    "silu": math.sqrt(2.0),
}


@dataclasses.dataclass(frozen=True)
class MLP:
    """Fully connected network ``dense -> act -> ... -> dense`` (no activation after the last layer).

    The dataclass holds hyper-parameters only (it is hashable, so it can be a static argument of
    ``jax.jit``); the parameters are a list of layer dicts created by :meth:`init`.

    Initialisation: standard fan-in, ``w ~ N(0, gain**2 / d_in)``, ``b = 0``, with gain ``sqrt(2)``
    (He) for hidden layers followed by relu / gelu / silu, ``1`` (LeCun) for tanh and for the last
    layer.

    Attributes:
      sizes: layer widths ``(d_in, h_1, ..., d_out)``; at least two entries.
      activation: one of ``"relu"``, ``"tanh"``, ``"gelu"``, ``"silu"``.
    """

    sizes: Sequence[int]
    activation: str = "relu"

    def __post_init__(self) -> None:
        if isinstance(self.sizes, int | str) or len(tuple(self.sizes)) < 2:
            raise ValueError(
                f"sizes must be a sequence of at least two layer widths (d_in, ..., d_out); "
                f"got {self.sizes!r}."
            )
        for i, s in enumerate(self.sizes):
            _check_positive_int(f"sizes[{i}]", s)
        # Store a tuple of ints so that the dataclass stays hashable (usable as a jit static arg).
        object.__setattr__(self, "sizes", tuple(int(s) for s in self.sizes))
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {tuple(ACTIVATIONS)}; got {self.activation!r}."
            )

    @property
    def n_layers(self) -> int:
        """Number of dense layers (``len(sizes) - 1``)."""
        return len(self.sizes) - 1

    def init(self, key: Array, dtype: Any = jnp.float32) -> list[dict[str, Array]]:
        """Create the parameters.

        Args:
          key: a PRNG key.
          dtype: floating-point dtype of every parameter.

        Returns:
          A list of ``{"w": (d_in, d_out), "b": (d_out,)}`` dicts, in forward order.
        """
        dtype = _check_float_dtype(dtype)
        gains = [_GAINS[self.activation]] * (self.n_layers - 1) + [1.0]
        specs = [
            ((d_in, d_out), gain / math.sqrt(d_in))
            for d_in, d_out, gain in zip(self.sizes[:-1], self.sizes[1:], gains, strict=True)
        ]
        ws = layers.scaled_normals(key, specs, dtype)
        return [{"w": w, "b": jnp.zeros(w.shape[1:], dtype)} for w in ws]

    def layer_functions(self) -> list[Callable[[dict[str, Array], Array], Array]]:
        """One function ``(layer_params, h) -> h`` per layer; composing them is ``apply``."""
        act = ACTIVATIONS[self.activation]

        def hidden(p: dict[str, Array], x: Array) -> Array:
            return act(layers.dense(p, x))

        return [hidden] * (self.n_layers - 1) + [layers.dense]

    def apply(
        self, params: list[dict[str, Array]], x: Array, return_features: bool = False
    ) -> Array | tuple[Array, list[Array]]:
        """Run the network.

        Args:
          params: parameters from :meth:`init`.
          x: inputs of shape ``(..., sizes[0])``.
          return_features: also return the pre-activation output of every layer.

        Returns:
          Logits of shape ``(..., sizes[-1])``; with ``return_features=True`` the pair
          ``(logits, [h_1, ..., h_L])`` where ``h_l`` is layer ``l``'s pre-activation output
          (``h_L`` is the logits), e.g. for μP coordinate checks.
        """
        _check_params_len(params, self.n_layers, "MLP")
        if x.ndim < 1 or x.shape[-1] != self.sizes[0]:
            raise ValueError(
                f"MLP.apply: x must have shape (..., {self.sizes[0]}) (sizes[0]); "
                f"got shape {x.shape}."
            )
        act = ACTIVATIONS[self.activation]
        features = []
        h = x
        for i, p in enumerate(params):
            h = layers.dense(p, h)
            features.append(h)
            if i < self.n_layers - 1:
                h = act(h)
        return (h, features) if return_features else h
