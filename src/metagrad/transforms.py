"""Small optax transformations that meta-learning needs and optax does not ship."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

EPS_ROOT = 1e-8
"""ε *inside* the square root of Adam-type optimisers that are differentiated through (optax's
``eps_root``): ``u = lr · m̂ / (√(v̂ + eps_root) + ε)``. Its derivative in the gradient is bounded by
``lr / √eps_root``. With optax's default ``eps_root=0`` the first step is ≈ ``lr · g / (|g| + ε)``,
whose derivative reaches ``lr / ε`` at near-zero gradients: those coordinates then dominate the
meta-gradient, and its float32 value is noise (``metagrad.check`` reports it). Every inner Adam
that metagrad ships uses this value: ``optax.adam(lr, eps_root=metagrad.EPS_ROOT)``."""


class ScaleByLearningRatesState(NamedTuple):
    """``scale_by_learning_rates`` keeps no state."""


def scale_by_learning_rates(learning_rates: Any) -> optax.GradientTransformation:
    """Scales each update element-wise by ``-learning_rates``: per-parameter learning rates.

    Meta-SGD and learned per-parameter learning rates use this. ``learning_rates`` is typically a
    meta-parameter, so build the transformation inside the traced function. For example,
    ``inner_optimizer=lambda meta: optax.chain(optax.trace(0.9), scale_by_learning_rates(meta["lr"]))``.

    Args:
      learning_rates: a pytree with the structure of the parameters, or a prefix of it. Each leaf
        must broadcast against the matching parameter (scalars give per-tensor learning rates).

    Returns:
      An ``optax.GradientTransformation``. Like ``optax.scale_by_learning_rate``, it flips the sign
      so that the result is a descent update.

    Examples:
      >>> import jax.numpy as jnp
      >>> import metagrad
      >>> params = {"w": jnp.ones(2)}
      >>> opt = metagrad.scale_by_learning_rates({"w": jnp.array([0.5, 0.25])})
      >>> updates, _ = opt.update({"w": jnp.array([1.0, 2.0])}, opt.init(params))
      >>> print(updates["w"])
      [-0.5 -0.5]

    References:
      Li, Zhou, Chen, Li. *Meta-SGD: Learning to Learn Quickly for Few-Shot Learning*. 2017,
      arXiv:1707.09835.
    """

    def init(params: Any) -> ScaleByLearningRatesState:
        del params
        return ScaleByLearningRatesState()

    def update(
        updates: Any, state: ScaleByLearningRatesState, params: Any = None
    ) -> tuple[Any, ScaleByLearningRatesState]:
        del params
        try:
            scaled = jax.tree.map(lambda lr, u: -lr * u, learning_rates, updates)
        except ValueError as err:
            raise ValueError(
                "scale_by_learning_rates: learning_rates must have the structure of the "
                f"parameters (or a prefix of it); {err}. Build it with e.g. "
                "jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)."
            ) from None
        return scaled, state

    return optax.GradientTransformation(init, update)


class ScaleByStepLearningRatesState(NamedTuple):
    """The inner step counter of ``scale_by_step_learning_rates``."""

    # The field shadows tuple.count, as in optax's own states (its name is part of the state).
    count: jax.Array  # type: ignore[assignment]


def scale_by_step_learning_rates(learning_rates: Any) -> optax.GradientTransformation:
    """Scales updates by ``-learning_rates[k]`` at inner step ``k``: per-step learning rates.

    MAML++'s "learning per-layer per-step learning rates" (LSLR) is this with one vector of ``K``
    rates per layer: for a list of layer dicts, ``learning_rates = [jnp.full((K,), 0.4)] * L``
    is a (steps x layers) table stored layer by layer, and a meta-parameter.

    Args:
      learning_rates: a pytree with the structure of the parameters, or a prefix of it, whose
        leaves have a leading step axis of size ``K`` (the rest broadcasts against the parameter).
        Step ``k`` uses ``leaf[k]``; steps beyond ``K - 1`` reuse the last row (clamped), so a
        test-time loop may run longer than the table.

    Returns:
      An ``optax.GradientTransformation`` whose state counts the steps taken.

    References:
      Antoniou, Edwards, Storkey. *How to train your MAML*, ICLR 2019 (LSLR).
    """
    leaves = jax.tree.leaves(learning_rates)
    for leaf in leaves:
        if jnp.ndim(leaf) < 1:
            raise ValueError(
                "scale_by_step_learning_rates: every leaf of learning_rates needs a leading step "
                f"axis (shape (K, ...)); got a leaf of shape {jnp.shape(leaf)}. Use "
                "jnp.full((K,), lr) per layer."
            )

    def init(params: Any) -> ScaleByStepLearningRatesState:
        del params
        return ScaleByStepLearningRatesState(jnp.zeros((), jnp.int32))

    def update(
        updates: Any, state: ScaleByStepLearningRatesState, params: Any = None
    ) -> tuple[Any, ScaleByStepLearningRatesState]:
        del params

        def scale(lr: Any, u: Any) -> Any:
            k = jnp.minimum(state.count, jnp.shape(lr)[0] - 1)
            return jax.tree.map(lambda x: -lr[k] * x, u)

        try:
            scaled = jax.tree.map(scale, learning_rates, updates)
        except ValueError as err:
            raise ValueError(
                "scale_by_step_learning_rates: learning_rates must have the structure of the "
                f"parameters (or a prefix of it); {err}."
            ) from None
        return scaled, ScaleByStepLearningRatesState(state.count + 1)

    return optax.GradientTransformation(init, update)
