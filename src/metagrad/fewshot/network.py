"""The layer protocol of the few-shot layer: a model is the list of its layers' functions.

Lambda patterns need the forward pass split at a layer: the prefix of layers that no inner step
updates is computed once per task (feature caching, as in ANIL), and only the suffix runs inside
the inner loop. So the few-shot layer asks one thing of a model: ``model.layer_functions()``, one
function ``(layer_params, h) -> h`` per entry of its parameter list (a list with one pytree per
layer, in forward order). ``metagrad.models.Conv4`` and ``MLP`` have it; any other model, e.g. an
Equinox or Flax network, is wrapped in a :class:`LayerStack` of its layers' functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

Array = jax.Array
LayerFn = Callable[[Any, Array], Array]


@runtime_checkable
class Layered(Protocol):
    """What the few-shot layer needs of a model: its layers as functions."""

    def layer_functions(self) -> Sequence[LayerFn]:
        """One function ``(layer_params, h) -> h`` per entry of the parameter list."""
        ...


Model = Layered


@dataclasses.dataclass(frozen=True)
class LayerStack:
    """Any network as the few-shot layer sees it: the functions of its layers, in forward order.

    Its parameters are a list with one pytree per layer (``params[l]`` goes to
    ``functions[l]``). Hashable, so it can be a static argument of ``jax.jit``.

    Example (Equinox: split each layer into its arrays and the rest)::

        convs = [eqx.nn.Conv2d(1, 8, 3, key=k1), eqx.nn.Conv2d(8, 8, 3, key=k2)]
        parts = [eqx.partition(layer, eqx.is_array) for layer in convs]
        params = [p for p, _ in parts]
        model = LayerStack(tuple(
            (lambda p, h, s=static: jax.vmap(eqx.combine(p, s))(h)) for _, static in parts
        ))

    Attributes:
      functions: one function ``(layer_params, h) -> h`` per layer.
    """

    functions: tuple[LayerFn, ...]

    def __post_init__(self) -> None:
        if not self.functions or not all(callable(f) for f in self.functions):
            raise TypeError(
                "LayerStack: functions must be a non-empty tuple of callables "
                "(layer_params, h) -> h, one per layer."
            )
        object.__setattr__(self, "functions", tuple(self.functions))

    def layer_functions(self) -> list[LayerFn]:
        """The layers' functions."""
        return list(self.functions)


def layer_functions(model: Model) -> list[LayerFn]:
    """One function ``(layer_params, h) -> h`` per layer; composing them is the forward pass."""
    if not isinstance(model, Layered):
        raise TypeError(
            "model must expose its layers: a method layer_functions() returning one function "
            "(layer_params, h) -> h per entry of its parameter list (metagrad.models.Conv4 and "
            f"MLP have it); got {type(model).__name__}. Wrap other networks (Equinox, Flax, "
            "plain functions) in metagrad.fewshot.LayerStack(functions)."
        )
    return list(model.layer_functions())


def n_layers(model: Model) -> int:
    """Number of entries in the model's parameter list (the columns of a Lambda pattern)."""
    return len(layer_functions(model))


def apply_layers(
    model: Model, params: Sequence[dict[str, Array]], x: Array, start: int = 0
) -> Array:
    """Runs layers ``start .. start + len(params) - 1`` of ``model`` on ``x``.

    Args:
      model: a model with ``layer_functions()`` (``Conv4``, ``MLP``, a ``LayerStack``).
      params: the parameters of those layers (a slice of the full parameter list).
      x: the input of layer ``start`` (images for ``start = 0``, cached features otherwise).
      start: index of the first layer to run.

    Returns:
      The output of the last layer run (``x`` itself when ``params`` is empty).
    """
    fns = layer_functions(model)
    if start < 0 or start + len(params) > len(fns):
        raise ValueError(
            f"apply_layers: layers {start}..{start + len(params) - 1} do not exist in a model with "
            f"{len(fns)} layers; pass a slice params[start:stop] of the full parameter list."
        )
    for fn, p in zip(fns[start : start + len(params)], params, strict=True):
        x = fn(p, x)
    return x


def split_apply(
    model: Model, params: Sequence[dict[str, Array]], x: Array, at: int
) -> tuple[Array, Callable[[Sequence[dict[str, Array]]], Array]]:
    """Splits the forward pass at layer ``at``: cached prefix features and a suffix function.

    Args:
      model: a model with ``layer_functions()``.
      params: the full parameter list.
      x: the model's input.
      at: the number of leading layers in the prefix (0 .. number of layers).

    Returns:
      ``(features, suffix)``: the prefix's output and ``suffix(params[at:]) -> outputs``.
    """
    features = apply_layers(model, params[:at], x, 0)
    return features, lambda suffix_params: apply_layers(model, suffix_params, features, at)


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy with integer labels."""
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.mean(logz - picked)


def accuracy(logits: Array, labels: Array) -> Array:
    """Fraction of correct arg-max predictions."""
    return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(logits.dtype))


def task_losses(kind: str) -> tuple[Callable[[Array, Array], Array], Callable[..., Array] | None]:
    """``(loss, metric)`` for ``kind`` ``"classification"`` (cross-entropy, accuracy) or
    ``"regression"`` (mean squared error, no metric)."""
    if kind == "classification":
        return cross_entropy, accuracy
    if kind == "regression":
        return (lambda out, y: jnp.mean((out - y) ** 2)), None
    raise ValueError(f"task kind must be 'classification' or 'regression'; got {kind!r}.")
