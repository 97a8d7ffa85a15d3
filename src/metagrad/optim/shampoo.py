"""Shampoo as an optax ``GradientTransformation``.

For a parameter seen as a matrix ``G`` (``d_1 x d_2``), Shampoo keeps the statistics
``L = E[G Gᵀ]`` and ``R = E[Gᵀ G]`` and preconditions the gradient as

    ΔW = (L + ε_L I)^(-e) G (R + ε_R I)^(-e),     e = 1/4 by default,

with ``e = 1/2`` as the square-root variant. Tensors with more than two non-singleton axes are
seen as matrices ``(prod(shape[:-1]), shape[-1])`` (fan-in axes first, as in Flax and metagrad
kernels), or by their layer's own fan-in / fan-out split when ``layers`` is given. Dimensions
larger than ``block_size`` are split into blocks, each with its own statistics (see
``block_rescale`` for why blocks are rescaled). One-dimensional
parameters (biases, norm scales) are left alone or get a diagonal (AdaGrad-like) preconditioner.
Grafting takes the direction from Shampoo and the per-parameter step size (norm) from SGD or
RMSprop.

The ridge ``ε`` is either relative to the largest eigenvalue of the statistic (scale invariant,
and therefore already consistent across widths) or absolute; an absolute ``ε`` must grow like
``fan_in / fan_out`` with width to stay consistent, which ``eps_scales`` provides (see
:func:`metagrad.optim.parameterization.shampoo_eps_scales`).

References:
  Gupta, Koren & Singer, *Shampoo: Preconditioned Stochastic Tensor Optimization*, ICML 2018.
  Anil, Gupta, Koren, Regan & Singer, *Scalable Second Order Optimization for Deep Learning*,
  2020 (blocking, grafting, coupled Newton roots).
  Ishikawa & Karakida, *On the Parameterization of Second-Order Optimization Effective Towards
  the Infinite Width*, ICLR 2024.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from metagrad.optim import linalg
from metagrad.optim.curvature import CurvatureStats, LayerInfo, Layers

Array = jax.Array

ONE_D_MODES = ("none", "diagonal")
GRAFTS = ("none", "sgd", "rmsprop")
EPS_MODES = ("relative", "absolute")


class ShampooState(NamedTuple):
    """State of :func:`shampoo`; per-leaf entries follow ``jax.tree_util.tree_leaves(params)``.

    Attributes:
      count: number of updates done.
      stats_count: number of statistics refreshes (for the moving average's bias correction).
      stats: per leaf, a tuple of ``(L, R)`` pairs, one per block (matrices), ``(v,)`` (diagonal
        preconditioning of a 1-D parameter) or ``()``.
      roots: per leaf, a tuple of ``(L^-e, R^-e)`` pairs, one per block, or ``()``.
      graft: per leaf, the RMSprop second moment when ``graft="rmsprop"``, else ``()``.
    """

    count: Array
    stats_count: Array
    stats: tuple[Any, ...]
    roots: tuple[Any, ...]
    graft: tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class _Plan:
    kind: str  # "matrix", "diag" or "none"
    rows: tuple[tuple[int, int], ...] = ()  # (start, size) of each row block
    cols: tuple[tuple[int, int], ...] = ()
    layer: LayerInfo | None = None

    def to_matrix(self, x: Array) -> Array:
        if self.layer is not None:
            return self.layer.weight_to_matrix(x)
        d2 = x.shape[-1] if x.ndim else 1
        return x.reshape(-1, d2)

    def from_matrix(self, m: Array, shape: Sequence[int]) -> Array:
        if self.layer is not None:
            return self.layer.matrix_to_weight(m)
        return m.reshape(shape)


def _blocks(d: int, block_size: int) -> tuple[tuple[int, int], ...]:
    n = max(1, math.ceil(d / block_size))
    # Equal-ish blocks rather than (block_size, ..., remainder): similar costs per block.
    base, extra = divmod(d, n)
    out, start = [], 0
    for k in range(n):
        size = base + (1 if k < extra else 0)
        out.append((start, size))
        start += size
    return tuple(out)


def _plan(shape: Sequence[int], block_size: int, one_d: str, layer: LayerInfo | None) -> _Plan:
    if layer is not None:
        d1, d2 = layer.in_features, layer.out_features
    elif sum(1 for s in shape if s != 1) >= 2:
        d1, d2 = math.prod(shape[:-1]), shape[-1]
    else:
        return _Plan("diag" if one_d == "diagonal" else "none")
    return _Plan("matrix", _blocks(d1, block_size), _blocks(d2, block_size), layer)


def shampoo(
    *,
    decay: float = 0.99,
    exponent: float = 0.25,
    eps: float = 1e-4,
    eps_mode: str = "relative",
    eps_scales: Any = None,
    stats_every: int = 1,
    precond_every: int = 10,
    precond_warmup: int = 0,
    block_size: int = 1024,
    block_rescale: bool = True,
    one_d: str = "none",
    graft: str = "none",
    graft_decay: float = 0.999,
    graft_eps: float = 1e-8,
    root_method: str = "auto",
    refresh_groups: int = 1,
    layers: Layers | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Shampoo preconditioning of the gradient (no learning rate: chain ``optax.scale``).

    Args:
      decay: moving-average decay of ``L`` and ``R`` (bias corrected); ``1.0`` sums them as in
        the original (AdaGrad-style) Shampoo.
      exponent: the power ``e`` of each side, ``1/4`` (Shampoo) or ``1/2`` (square-root
        variant). A diagonal statistic of a 1-D parameter gets ``2 e``.
      eps: the ridge ``ε``. The default ``1e-4`` (relative) is larger than the common ``1e-6``:
        in the width sweep of ``docs/width.md`` the smaller ridge let directions the statistics
        have not seen yet (the gradients of a small batch have low rank, more so the wider the
        layer) be amplified ~30x, which made the stable learning-rate range shrink with width.
      eps_mode: ``"relative"`` (``ε`` times the largest eigenvalue of each statistic) or
        ``"absolute"``.
      eps_scales: optional pytree like ``params`` of per-parameter multipliers of an absolute
        ``ε`` (width scaling from the μP parameterisation); ``None`` means 1.
      stats_every: refresh ``L`` and ``R`` every this many steps.
      precond_every: recompute the inverse roots every this many steps.
      precond_warmup: also recompute them at every one of the first this many steps. Early
        statistics have low rank (a batch of ``B`` examples adds rank ``≤ B``), and a root
        computed from them scales every direction they have not seen yet by ``ε^(-e)`` per
        side (100x for ``ε = 1e-4``, ``e = 1/4``) until the next refresh. Refreshing every step
        keeps the current gradient inside the statistics; once they have full rank, stale
        roots are harmless. In the width sweep of ``docs/width.md`` this removed the
        divergence of wide μP models at the base width's optimal learning rate.
      block_size: dimensions larger than this are split into blocks of at most this size.
      block_rescale: multiply the update of a matrix split into ``n`` blocks by ``n^(-2e)``.
        Each block normalises its own part of the gradient: for a gradient spread evenly over
        the blocks, the blocked update is ``n^(2e)`` times the unblocked one (``√n`` for
        ``e = 1/4``). Without the correction the update grows with the number of blocks, i.e.
        with width, which breaks μP as soon as a layer is wider than ``block_size``.
      one_d: ``"none"`` (1-D parameters pass through unchanged) or ``"diagonal"``.
      graft: ``"none"``, ``"sgd"`` or ``"rmsprop"``: rescale each parameter's update to the norm
        of that optimiser's step. Grafting changes the width scaling (use Adam's exponents for
        ``"rmsprop"``, SGD's for ``"sgd"``).
      graft_decay: second-moment decay of the RMSprop graft.
      graft_eps: ``ε`` of the RMSprop graft.
      root_method: ``"auto"`` (default: by backend and size, see
        :func:`metagrad.optim.linalg.resolve_root_method`: eigendecomposition on CPU, coupled
        Newton iteration on GPU and TPU), ``"eigh"`` or ``"newton"`` (matmuls only, checked
        against its target and falling back to ``"eigh"``). Same-shaped statistics (across
        layers and blocks) are computed in one batched call.
      refresh_groups: stagger the root refreshes: the roots are split into this many groups of
        about equal cost (:func:`metagrad.optim.linalg.stagger_groups`), and group ``g`` is refreshed at the steps
        ``t`` with ``t % precond_every == g * precond_every // refresh_groups``, so that no
        single step pays for all roots. Every root is still refreshed once per interval; at the
        first step (and during ``precond_warmup``) all are. ``1`` (default) refreshes all at
        once. At most ``precond_every``.
      layers: optional :func:`metagrad.optim.find_layers` result: registered weights are seen as
        ``(fan_in, fan_out)`` matrices, and when ``update`` also gets ``curvature=stats`` the
        product is formed from the captured rows when that is cheaper.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` (``curvature`` is optional).

    References:
      Gupta, Koren & Singer, *Shampoo: Preconditioned Stochastic Tensor Optimization*, ICML 2018.
      Anil et al., *Scalable Second Order Optimization for Deep Learning*, 2020.
    """
    _check_choice("one_d", one_d, ONE_D_MODES)
    _check_choice("graft", graft, GRAFTS)
    _check_choice("eps_mode", eps_mode, EPS_MODES)
    _check_choice("root_method", root_method, linalg.ROOT_METHODS)
    if not 0.0 <= float(decay) <= 1.0:
        raise ValueError(f"shampoo: decay must be in [0, 1] (e.g. 0.99); got {decay!r}.")
    if not exponent > 0:
        raise ValueError(f"shampoo: exponent must be positive (0.25 or 0.5); got {exponent!r}.")
    if not eps > 0:
        raise ValueError(f"shampoo: eps must be positive (e.g. 1e-4); got {eps!r}.")
    for name, v in (
        ("stats_every", stats_every),
        ("precond_every", precond_every),
        ("block_size", block_size),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"shampoo: {name} must be a positive int; got {v!r}.")
    if (
        isinstance(precond_warmup, bool)
        or not isinstance(precond_warmup, int)
        or precond_warmup < 0
    ):
        raise ValueError(
            f"shampoo: precond_warmup must be a non-negative int (e.g. 10); got {precond_warmup!r}."
        )
    if (
        isinstance(refresh_groups, bool)
        or not isinstance(refresh_groups, int)
        or not 1 <= refresh_groups <= precond_every
    ):
        raise ValueError(
            "shampoo: refresh_groups must be an int between 1 and precond_every "
            f"({precond_every}); got {refresh_groups!r}. Use 1 for no staggering."
        )
    by_leaf = {}
    if layers is not None:
        if not all(isinstance(x, LayerInfo) for x in layers):
            raise TypeError(
                "shampoo: layers must be the tuple returned by find_layers(loss_fn, params, "
                f"batch); got {type(layers).__name__}."
            )
        by_leaf = {layer.weight_index: (i, layer) for i, layer in enumerate(layers)}
    relative = eps_mode == "relative"

    def plans(leaves: Sequence[Any]) -> list[_Plan]:
        return [
            _plan(tuple(jnp.shape(x)), block_size, one_d, by_leaf.get(k, (None, None))[1])
            for k, x in enumerate(leaves)
        ]

    def eps_per_leaf(n: int) -> list[float | Array]:
        if eps_scales is None:
            return [eps] * n
        scales = jax.tree_util.tree_leaves(eps_scales)
        if len(scales) != n:
            raise ValueError(
                f"shampoo: eps_scales must have one entry per parameter ({n}); got {len(scales)}."
                " Build it with shampoo_eps_scales(shapes) from the same params."
            )
        return [eps * s for s in scales]

    def init_fn(params: Any) -> ShampooState:
        leaves = jax.tree_util.tree_leaves(params)
        for k, (_, layer) in by_leaf.items():
            if k >= len(leaves) or tuple(jnp.shape(leaves[k])) != layer.weight_shape:
                raise ValueError(
                    f"shampoo.init: layer {layer.name!r} expects a weight of shape "
                    f"{layer.weight_shape} at leaf {k}; params do not match. Call find_layers on "
                    "these params."
                )
        stats, roots, grafts = [], [], []
        for x, plan in zip(leaves, plans(leaves), strict=True):
            dtype = x.dtype
            if plan.kind == "matrix":
                st, rt = [], []
                for _, r in plan.rows:
                    for _, c in plan.cols:
                        st.append((jnp.zeros((r, r), dtype), jnp.zeros((c, c), dtype)))
                        rt.append((jnp.eye(r, dtype=dtype), jnp.eye(c, dtype=dtype)))
                stats.append(tuple(st))
                roots.append(tuple(rt))
            elif plan.kind == "diag":
                stats.append((jnp.zeros(jnp.shape(x), dtype),))
                roots.append(())
            else:
                stats.append(())
                roots.append(())
            grafts.append(jnp.zeros(jnp.shape(x), dtype) if graft == "rmsprop" else ())
        # Two separate buffers: the state may be donated, and a buffer cannot be donated twice.
        count, stats_count = jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32)
        return ShampooState(count, stats_count, tuple(stats), tuple(roots), tuple(grafts))

    def update_fn(
        updates: Any,
        state: ShampooState,
        params: Any = None,
        *,
        curvature: CurvatureStats | None = None,
        **extra_args: Any,
    ) -> tuple[Any, ShampooState]:
        del params, extra_args
        if curvature is not None and not isinstance(curvature, CurvatureStats):
            raise TypeError(
                "shampoo.update: curvature must be None or the CurvatureStats from capture(); "
                f"got {type(curvature).__name__}."
            )
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        leaf_plans = plans(leaves)
        eps_leaf = eps_per_leaf(len(leaves))
        count = state.count
        mats = [
            p.to_matrix(g) if p.kind == "matrix" else None
            for g, p in zip(leaves, leaf_plans, strict=True)
        ]

        def refresh_stats():
            new = []
            for g, m, p, st in zip(leaves, mats, leaf_plans, state.stats, strict=True):
                if p.kind == "matrix":
                    blocks = []
                    k = 0
                    for r0, r in p.rows:
                        for c0, c in p.cols:
                            gb = m[r0 : r0 + r, c0 : c0 + c]
                            l_old, r_old = st[k]
                            blocks.append(
                                (_ema(l_old, gb @ gb.T, decay), _ema(r_old, gb.T @ gb, decay))
                            )
                            k += 1
                    new.append(tuple(blocks))
                elif p.kind == "diag":
                    new.append((_ema(st[0], g * g, decay),))
                else:
                    new.append(())
            return tuple(new), state.stats_count + 1

        stats, stats_count = lax.cond(
            count % stats_every == 0, refresh_stats, lambda: (state.stats, state.stats_count)
        )

        def correction(dtype):
            if decay == 1.0:
                return jnp.asarray(1.0, dtype)
            return 1.0 - jnp.asarray(decay, dtype) ** stats_count.astype(dtype)

        # Every root (side of a block of a matrix leaf) is one item; items of one stagger group
        # are refreshed together, same-shaped ones in one batched call.
        items = [
            (k, b, side)
            for k, p in enumerate(leaf_plans)
            if p.kind == "matrix"
            for b in range(len(state.stats[k]))
            for side in (0, 1)
        ]
        sizes = [state.stats[k][b][side].shape[0] for k, b, side in items]
        groups = linalg.stagger_groups(sizes, refresh_groups)
        first = (count == 0) | (count < precond_warmup)
        phase = count % precond_every
        new_roots: dict[tuple[int, int, int], Array] = {}
        for g in range(refresh_groups):
            members = [it for it, gi in zip(items, groups, strict=True) if gi == g]
            if not members:
                continue

            def compute(members=members):
                mats, eps_g = [], []
                for k, b, side in members:
                    stat = stats[k][b][side]
                    mats.append(stat / correction(stat.dtype))
                    eps_g.append(eps_leaf[k])
                return tuple(
                    linalg.inverse_roots(
                        mats, exponent, eps_g, relative_eps=relative, method=root_method
                    )
                )

            def keep(members=members):
                return tuple(state.roots[k][b][side] for k, b, side in members)

            due = first | (phase == linalg.group_offset(g, refresh_groups, precond_every))
            for it, root in zip(members, lax.cond(due, compute, keep), strict=True):
                new_roots[it] = root
        roots = tuple(
            tuple((new_roots[(k, b, 0)], new_roots[(k, b, 1)]) for b in range(len(state.roots[k])))
            if p.kind == "matrix"
            else ()
            for k, p in enumerate(leaf_plans)
        )

        out, new_grafts = [], []
        for k, (g, m, p) in enumerate(zip(leaves, mats, leaf_plans, strict=True)):
            if p.kind == "matrix":
                rows = _rows_for(k, curvature, by_leaf, m.dtype)
                parts = []
                b = 0
                for r0, r in p.rows:
                    row_parts = []
                    for c0, c in p.cols:
                        gb = m[r0 : r0 + r, c0 : c0 + c]
                        lr, rr = roots[k][b]
                        sub_rows = None
                        if rows is not None:
                            sub_rows = (rows[0][:, r0 : r0 + r], rows[1][:, c0 : c0 + c])
                        row_parts.append(linalg.precondition(gb, lr, rr, sub_rows))
                        b += 1
                    parts.append(
                        jnp.concatenate(row_parts, axis=1) if len(row_parts) > 1 else row_parts[0]
                    )
                mat = jnp.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
                n_blocks = len(p.rows) * len(p.cols)
                if block_rescale and n_blocks > 1:
                    mat = mat * jnp.asarray(n_blocks ** (-2.0 * exponent), mat.dtype)
                direction = p.from_matrix(mat, g.shape).astype(g.dtype)
            elif p.kind == "diag":
                v = stats[k][0] / correction(g.dtype)
                ridge = eps_leaf[k] * (jnp.max(v) if relative else 1.0)
                ridge = jnp.maximum(ridge, jnp.finfo(g.dtype).tiny ** 0.5)
                direction = g * (v + ridge) ** (-2.0 * exponent)
            else:
                direction = g
            if graft == "none":
                new_grafts.append(())
            else:
                if graft == "sgd":
                    graft_dir = g
                    new_grafts.append(())
                else:
                    v_g = graft_decay * state.graft[k] + (1.0 - graft_decay) * g * g
                    new_grafts.append(v_g)
                    hat = v_g / (
                        1.0 - jnp.asarray(graft_decay, g.dtype) ** (count + 1).astype(g.dtype)
                    )
                    graft_dir = g / (jnp.sqrt(hat) + graft_eps)
                norm_dir = jnp.linalg.norm(direction)
                direction = direction * (
                    jnp.linalg.norm(graft_dir) / jnp.maximum(norm_dir, jnp.finfo(g.dtype).tiny)
                )
            out.append(direction)
        new_state = ShampooState(count + 1, stats_count, stats, roots, tuple(new_grafts))
        return jax.tree_util.tree_unflatten(treedef, out), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _rows_for(
    k: int, curvature: CurvatureStats | None, by_leaf: dict, dtype
) -> tuple[Array, Array] | None:
    if curvature is None or k not in by_leaf:
        return None
    i, layer = by_leaf[k]
    if i >= len(curvature.layers) or curvature.layers[i].name != layer.name:
        raise ValueError(
            f"shampoo.update: curvature does not match the layers given to shampoo() (expected "
            f"{layer.name!r} at position {i}). Capture with the same loss and parameters."
        )
    return (
        layer.input_rows(curvature.inputs[i]).astype(dtype),
        layer.output_rows(curvature.output_grads[i]).astype(dtype),
    )


def _ema(old: Array, new: Array, decay: float) -> Array:
    if decay == 1.0:
        return old + new
    return decay * old + (1.0 - decay) * new.astype(old.dtype)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"shampoo: {name} must be one of {choices}; got {value!r}.")
