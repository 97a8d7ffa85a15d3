"""K-FAC as an optax ``GradientTransformation``.

For every dense or convolutional layer found by :func:`metagrad.optim.curvature.find_layers`, the
update of its weight matrix ``W`` (``in_features x out_features``) is

    ΔW = (A + ρ_A I)^-1 ∇W (B + ρ_B I)^-1,

with ``A = E[a aᵀ]`` over the layer inputs and ``B = E[δ δᵀ]`` over the pre-activation
gradients, both exponential moving averages refreshed every ``stats_every`` steps; the damped
inverses are refreshed every ``inverse_every`` steps. A bias is preconditioned by ``B`` alone:
``Δb = (B + ρ_B I)^-1 ∇b``. Parameters that belong to no layer pass through unchanged.

The statistics come from the loss itself through :func:`metagrad.optim.curvature.capture`, and
reach the transformation as an optax extra argument::

    layers = find_layers(loss_fn, params, batch)
    opt = optax.chain(kfac(layers, damping=1e-3), optax.scale(-learning_rate))
    state = opt.init(params)
    loss, grads, stats = capture(loss_fn)(params, batch)
    updates, state = opt.update(grads, state, params, curvature=stats)

Damping rules (``ρ`` is the ``damping`` argument; every rule splits it as ``√ρ`` per factor):

* ``"trace"``: ``ρ_A = √ρ tr(A)``, ``ρ_B = √ρ tr(B)``. The trace grows like the factor's non-zero
  eigenvalues (``∝ fan_in`` for ``A`` of a layer with a wide input, ``∝ 1/width`` for ``B`` of a
  layer below a μP read-out), so the damping keeps the same size *relative to the curvature* at
  every width and in every layer, which is what the μP analysis asks for. With ``b_trace_floor``,
  ``ρ_B = √ρ max(tr(B), floor)``: a layer whose backward signal starts at zero (every layer
  below a zero-initialised read-out) is then damped like one below a random read-out instead of
  being blown up by a near-zero ``B`` (the update is of degree -1 in the backward signal).
* ``"pi"``: Martens & Grosse's factored Tikhonov damping, ``π = sqrt((tr A / d_A) / (tr B / d_B))``,
  ``ρ_A = π √ρ``, ``ρ_B = √ρ / π``. It balances the two factors but keeps ``ρ_A ρ_B = ρ`` fixed,
  which is right for hidden layers only: at the input layer ``ρ_A`` grows like ``width`` while
  ``A``'s eigenvalues do not, at the output layer ``ρ_A`` stays O(1) while ``A`` grows.
* ``"absolute"``: ``ρ_A = ρ_B = √ρ``, optionally multiplied per layer by ``damping_scales``
  (the μP parameterisation supplies ``(fan_in_mult, 1 / fan_out_mult)``).

References:
  Martens & Grosse, *Optimizing Neural Networks with Kronecker-factored Approximate Curvature*,
  ICML 2015.
  Grosse & Martens, *A Kronecker-factored approximate Fisher matrix for convolution layers*,
  ICML 2016.
  Ishikawa & Karakida, *On the Parameterization of Second-Order Optimization Effective Towards
  the Infinite Width*, ICLR 2024.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from metagrad.optim import linalg
from metagrad.optim.curvature import CurvatureStats, LayerInfo, Layers

Array = jax.Array

DAMPING_RULES = ("trace", "pi", "absolute")

# Smallest damping used when a factor is exactly zero (e.g. a layer whose outputs get no
# gradient): keeps the inverse finite, and the update is zero anyway.
_MIN_DAMPING = 1e-30


class KFACState(NamedTuple):
    """State of :func:`kfac`.

    Attributes:
      count: number of updates done.
      stats_count: number of factor refreshes done (for the moving average's bias correction).
      a_factors: per layer, the moving average of ``A`` (``in_features x in_features``).
      b_factors: per layer, the moving average of ``B`` (``out_features x out_features``).
      a_inverses: per layer, ``(A + ρ_A I)^-1`` as of the last inverse refresh.
      b_inverses: per layer, ``(B + ρ_B I)^-1`` as of the last inverse refresh.
    """

    count: Array
    stats_count: Array
    a_factors: tuple[Array, ...]
    b_factors: tuple[Array, ...]
    a_inverses: tuple[Array, ...]
    b_inverses: tuple[Array, ...]


def factor_damping(
    a: Array,
    b: Array,
    damping: float | Array,
    rule: str = "trace",
    scale_a: float = 1.0,
    scale_b: float = 1.0,
    b_trace_floor: float = 0.0,
) -> tuple[Array, Array]:
    """The per-factor damping ``(ρ_A, ρ_B)`` of one layer under a damping rule.

    Args:
      a: the layer's ``A`` factor.
      b: the layer's ``B`` factor.
      damping: ``ρ``; each factor gets ``√ρ`` times the rule's scale.
      rule: ``"trace"``, ``"pi"`` or ``"absolute"`` (see the module docstring).
      scale_a: extra multiplier of ``ρ_A`` (width scaling of the μP parameterisation).
      scale_b: extra multiplier of ``ρ_B``.
      b_trace_floor: ``"trace"`` rule only: the smallest ``tr(B)`` used for ``ρ_B``.

    Returns:
      ``(ρ_A, ρ_B)`` as scalars of the factors' dtype.

    References:
      Martens & Grosse, ICML 2015, section 6.3 (the π heuristic).
      Ishikawa & Karakida, ICLR 2024 (width scaling of the damping).
    """
    if rule not in DAMPING_RULES:
        raise ValueError(
            f"damping_rule must be one of {DAMPING_RULES}; got {rule!r}. Use 'trace' for "
            "width-consistent damping."
        )
    dtype = a.dtype
    root = jnp.sqrt(jnp.asarray(damping, dtype))
    tr_a = jnp.trace(a)
    tr_b = jnp.trace(b)
    if rule == "trace":
        rho_a, rho_b = root * tr_a, root * jnp.maximum(tr_b, b_trace_floor)
    elif rule == "pi":
        mean_a = tr_a / a.shape[0]
        mean_b = tr_b / b.shape[0]
        ok = (mean_a > 0) & (mean_b > 0)
        pi = jnp.where(ok, jnp.sqrt(mean_a / jnp.where(ok, mean_b, 1.0)), 1.0)
        rho_a, rho_b = root * pi, root / pi
    else:
        rho_a, rho_b = root, root
    rho_a = jnp.maximum(rho_a * scale_a, _MIN_DAMPING)
    rho_b = jnp.maximum(rho_b * scale_b, _MIN_DAMPING)
    return rho_a.astype(dtype), rho_b.astype(dtype)


def _check_layers(layers: Any) -> Layers:
    if not isinstance(layers, tuple | list) or not all(isinstance(x, LayerInfo) for x in layers):
        raise TypeError(
            "kfac: layers must be the tuple of LayerInfo returned by "
            f"find_layers(loss_fn, params, batch); got {type(layers).__name__}."
        )
    return tuple(layers)


def _check_known_layers(option: str, per_layer: Mapping[str, Any], names: tuple[str, ...]) -> None:
    unknown = sorted(set(per_layer) - set(names))
    if unknown:
        raise ValueError(
            f"kfac: {option} has entries for unknown layers {unknown}; the layers are "
            f"{list(names)}."
        )


def _b_trace_floors(
    floor: float | Mapping[str, float], names: tuple[str, ...], rule: str
) -> tuple[float, ...]:
    """Per-layer floors of ``tr(B)`` (``kfac``'s ``b_trace_floor``), checked."""
    if isinstance(floor, Mapping):
        _check_known_layers("b_trace_floor", floor, names)
        values = tuple(float(floor.get(name, 0.0)) for name in names)
    elif isinstance(floor, int | float) and not isinstance(floor, bool):
        values = (float(floor),) * len(names)
    else:
        raise TypeError(
            "kfac: b_trace_floor must be a number or a {layer name: number} mapping; got "
            f"{type(floor).__name__}."
        )
    if not all(math.isfinite(v) and v >= 0.0 for v in values):
        raise ValueError(f"kfac: b_trace_floor must be finite and >= 0; got {floor!r}.")
    if rule != "trace" and any(values):
        raise ValueError(
            f"kfac: b_trace_floor is an option of the 'trace' damping rule; got damping_rule="
            f"{rule!r}. Remove b_trace_floor or use damping_rule='trace'."
        )
    return values


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"kfac: {name} must be a positive int (e.g. 10); got {value!r}.")
    return value


def kfac(
    layers: Layers,
    damping: float | Array = 1e-2,
    *,
    damping_rule: str = "trace",
    damping_scales: Mapping[str, tuple[float, float]] | None = None,
    b_trace_floor: float | Mapping[str, float] = 0.0,
    decay: float = 0.95,
    stats_every: int = 1,
    inverse_every: int = 10,
    inverse_method: str = "auto",
    refresh_groups: int = 1,
) -> optax.GradientTransformationExtraArgs:
    """K-FAC preconditioning of the gradient (no learning rate: chain ``optax.scale``).

    Args:
      layers: the layers to precondition, from :func:`metagrad.optim.find_layers`.
      damping: ``ρ`` (see the module docstring for how each rule uses it).
      damping_rule: ``"trace"`` (default, width consistent), ``"pi"`` or ``"absolute"``.
      damping_scales: optional per-layer multipliers ``{layer name: (scale_A, scale_B)}`` of the
        damping, e.g. from :func:`metagrad.optim.parameterization.kfac_damping_scales`.
      b_trace_floor: ``"trace"`` rule only: the smallest ``tr(B)`` the damping uses,
        ``ρ_B = √ρ max(tr(B), floor)``; one value or ``{layer name: floor}`` (layers not named
        get 0). For a zero-initialised read-out, whose layers below get no backward signal at
        first (the μP width scaling of the floor, ``∝ 1 / fan_out_mult``, comes from
        :func:`metagrad.optim.parameterization.kfac_b_trace_floors`).
      decay: moving-average decay of the factors (bias corrected, so early steps are not biased
        towards zero).
      stats_every: refresh the factors every this many steps.
      inverse_every: recompute the damped inverses every this many steps.
      inverse_method: ``"auto"`` (default: ``"cholesky"`` on CPU, the Newton-Schulz iteration
        on GPU and TPU; see :func:`metagrad.optim.linalg.resolve_inverse_method`),
        ``"cholesky"``, ``"eigh"`` or ``"newton"`` (matmuls only, checked, falling back to
        ``"eigh"``). Same-shaped factors are inverted in one batched call.
      refresh_groups: stagger the inverse refreshes over the interval in this many groups of
        about equal cost (as Shampoo's ``refresh_groups``); every inverse is still recomputed
        once per ``inverse_every`` steps, all of them at the first step. At most
        ``inverse_every``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its ``update`` needs ``curvature=stats``
      from :func:`metagrad.optim.capture`. When the batch has fewer rows than the layer is wide,
      the update is computed as ``((A+ρ_A)^-1 aᵀ)(g (B+ρ_B)^-1)`` instead of multiplying the full
      gradient, after checking that the gradient is the captured one
      (:func:`metagrad.optim.linalg.precondition`).

    References:
      Martens & Grosse, *Optimizing Neural Networks with Kronecker-factored Approximate
      Curvature*, ICML 2015.
      Grosse & Martens, *A Kronecker-factored approximate Fisher matrix for convolution layers*,
      ICML 2016.
    """
    layers = _check_layers(layers)
    if damping_rule not in DAMPING_RULES:
        raise ValueError(
            f"kfac: damping_rule must be one of {DAMPING_RULES}; got {damping_rule!r}. Use "
            "'trace' for width-consistent damping, 'pi' for Martens & Grosse's heuristic."
        )
    if inverse_method not in linalg.INVERSE_METHODS:
        raise ValueError(
            f"kfac: inverse_method must be one of {linalg.INVERSE_METHODS}; got {inverse_method!r}."
        )
    if not 0.0 <= float(decay) < 1.0:
        raise ValueError(f"kfac: decay must be in [0, 1) (e.g. 0.95); got {decay!r}.")
    stats_every = _positive_int("stats_every", stats_every)
    inverse_every = _positive_int("inverse_every", inverse_every)
    if (
        isinstance(refresh_groups, bool)
        or not isinstance(refresh_groups, int)
        or not 1 <= refresh_groups <= inverse_every
    ):
        raise ValueError(
            "kfac: refresh_groups must be an int between 1 and inverse_every "
            f"({inverse_every}); got {refresh_groups!r}. Use 1 for no staggering."
        )
    if isinstance(damping, int | float) and not damping > 0:
        raise ValueError(f"kfac: damping must be positive (e.g. 1e-3); got {damping!r}.")
    if not layers:  # checked after the options, so that their errors come first
        raise ValueError(
            "kfac: layers is empty (find_layers found no dense or convolution layer), so K-FAC "
            "would be plain SGD. Pass the layers of the model's loss, or use optax.sgd if SGD is "
            "what you want."
        )
    names = tuple(layer.name for layer in layers)
    floors = _b_trace_floors(b_trace_floor, names, damping_rule)
    scales = []
    for layer in layers:
        s = (1.0, 1.0)
        if damping_scales is not None and layer.name in damping_scales:
            s = tuple(float(v) for v in damping_scales[layer.name])
        scales.append(s)
    if damping_scales is not None:
        _check_known_layers("damping_scales", damping_scales, names)

    def init_fn(params: Any) -> KFACState:
        leaves = jax.tree_util.tree_leaves(params)
        for layer in layers:
            if layer.weight_index >= len(leaves) or (
                tuple(jnp.shape(leaves[layer.weight_index])) != layer.weight_shape
            ):
                raise ValueError(
                    f"kfac.init: layer {layer.name!r} expects a weight of shape "
                    f"{layer.weight_shape} at leaf {layer.weight_index}, but params do not match "
                    "(different model or width?). Call find_layers on these params."
                )
        a_f, b_f, a_i, b_i = [], [], [], []
        for layer in layers:
            dtype = leaves[layer.weight_index].dtype
            d_in, d_out = layer.in_features, layer.out_features
            a_f.append(jnp.zeros((d_in, d_in), dtype))
            b_f.append(jnp.zeros((d_out, d_out), dtype))
            a_i.append(jnp.eye(d_in, dtype=dtype))
            b_i.append(jnp.eye(d_out, dtype=dtype))
        # Two separate buffers: the state may be donated, and a buffer cannot be donated twice.
        count, stats_count = jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32)
        return KFACState(count, stats_count, tuple(a_f), tuple(b_f), tuple(a_i), tuple(b_i))

    def update_fn(
        updates: Any,
        state: KFACState,
        params: Any = None,
        *,
        curvature: CurvatureStats | None = None,
        **extra_args: Any,
    ) -> tuple[Any, KFACState]:
        del params, extra_args
        stats = _check_curvature(curvature, names)
        count = state.count

        def refresh_factors():
            a_new, b_new = [], []
            for i in range(len(layers)):
                a_batch, b_batch = stats.factors(i)
                a_old, b_old = state.a_factors[i], state.b_factors[i]
                a_new.append(decay * a_old + (1.0 - decay) * a_batch.astype(a_old.dtype))
                b_new.append(decay * b_old + (1.0 - decay) * b_batch.astype(b_old.dtype))
            return tuple(a_new), tuple(b_new), state.stats_count + 1

        def keep_factors():
            return state.a_factors, state.b_factors, state.stats_count

        a_fac, b_fac, stats_count = lax.cond(
            count % stats_every == 0, refresh_factors, keep_factors
        )

        # One item per factor (A and B of every layer); items of one stagger group are inverted
        # together, same-shaped ones in one batched call.
        items = [(i, side) for i in range(len(layers)) for side in (0, 1)]
        sizes = [(a_fac if side == 0 else b_fac)[i].shape[0] for i, side in items]
        groups = linalg.stagger_groups(sizes, refresh_groups)
        phase = count % inverse_every
        new_inv: dict[tuple[int, int], Array] = {}
        for g in range(refresh_groups):
            members = [it for it, gi in zip(items, groups, strict=True) if gi == g]
            if not members:
                continue

            def compute(members=members):
                mats, damps = [], []
                for i, side in members:
                    dtype = a_fac[i].dtype
                    correction = 1.0 - jnp.asarray(decay, dtype) ** stats_count.astype(dtype)
                    a_hat = a_fac[i] / correction
                    b_hat = b_fac[i] / correction
                    rho = factor_damping(
                        a_hat, b_hat, damping, damping_rule, scales[i][0], scales[i][1], floors[i]
                    )
                    mats.append(a_hat if side == 0 else b_hat)
                    damps.append(rho[side])
                return tuple(linalg.damped_inverses(mats, damps, inverse_method))

            def keep(members=members):
                return tuple(
                    (state.a_inverses if side == 0 else state.b_inverses)[i] for i, side in members
                )

            due = (count == 0) | (phase == linalg.group_offset(g, refresh_groups, inverse_every))
            for it, inv in zip(members, lax.cond(due, compute, keep), strict=True):
                new_inv[it] = inv
        a_inv = tuple(new_inv[(i, 0)] for i in range(len(layers)))
        b_inv = tuple(new_inv[(i, 1)] for i in range(len(layers)))

        leaves, treedef = jax.tree_util.tree_flatten(updates)
        leaves = list(leaves)
        for i, layer in enumerate(layers):
            grad = leaves[layer.weight_index]
            g_mat = layer.weight_to_matrix(grad)
            rows = None
            out_grad = stats.output_grads[i]
            n_rows = out_grad.size // layer.out_features
            if n_rows * (layer.in_features + layer.out_features) < (
                layer.in_features * layer.out_features
            ):
                rows = (
                    layer.input_rows(stats.inputs[i]).astype(g_mat.dtype),
                    layer.output_rows(out_grad).astype(g_mat.dtype),
                )
            new = linalg.precondition(g_mat, a_inv[i], b_inv[i], rows)
            leaves[layer.weight_index] = layer.matrix_to_weight(new).astype(grad.dtype)
            if layer.bias_index is not None:
                g_b = leaves[layer.bias_index]
                new_b = b_inv[i] @ g_b.reshape(-1)
                leaves[layer.bias_index] = new_b.reshape(g_b.shape).astype(g_b.dtype)
        new_state = KFACState(count + 1, stats_count, a_fac, b_fac, a_inv, b_inv)
        return jax.tree_util.tree_unflatten(treedef, leaves), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_curvature(curvature: Any, names: tuple[str, ...]) -> CurvatureStats:
    if curvature is None:
        raise TypeError(
            "kfac.update needs the curvature statistics: call "
            "`loss, grads, stats = capture(loss_fn)(params, batch)` and then "
            "`opt.update(grads, state, params, curvature=stats)`."
        )
    if not isinstance(curvature, CurvatureStats):
        raise TypeError(
            "kfac.update: curvature must be the CurvatureStats returned by "
            f"capture(loss_fn)(params, batch); got {type(curvature).__name__}."
        )
    got = tuple(layer.name for layer in curvature.layers)
    if got != names:
        raise ValueError(
            f"kfac.update: curvature was captured for layers {list(got)}, but the optimiser was "
            f"built for layers {list(names)}. Build it with find_layers() on the same loss "
            "function and parameters you capture."
        )
    return curvature
