"""Curvature capture: the inputs ``a`` and pre-activation gradients ``δ`` of every layer.

K-FAC needs, for every dense or convolutional layer ``s = a W (+ b)``, the layer inputs ``a`` and
the gradients ``δ = ∂ℓ/∂s`` of the loss with respect to the layer's outputs. This module obtains
both **without hooks in the model**: it traces the loss function to a jaxpr, finds the layers
there, and re-evaluates the jaxpr with a zero "perturbation" added to each layer's output. The
gradient with respect to a perturbation is exactly ``∂L/∂s`` (the perturbation trick), and the
layer input is recorded on the way. Because the search works on the jaxpr, it sees through any
model library: plain functions, the reference models of :mod:`metagrad.models`, Flax (linen and
nnx) and Equinox modules all lower to the same primitives.

How a layer is recognised (all at trace time, so it costs nothing at run time):

* a ``dot_general`` whose one operand is a parameter leaf (possibly transposed, reshaped so that
  axes merge, or cast) and whose other operand does not depend on parameters only: a **dense**
  layer. This covers ``x @ w`` (Flax, metagrad), ``w @ x`` under ``vmap`` (Equinox), ``einsum``
  and im2col convolutions (``patches @ w.reshape(-1, c_out)``, metagrad's CPU ``conv2d``);
* a ``conv_general_dilated`` whose kernel is a parameter leaf (no feature groups): a **conv**
  layer, whose inputs are turned into patches with ``lax.conv_general_dilated_patches``
  (Grosse & Martens 2016);
* a bias: a parameter with one non-singleton axis, broadcast and added to a layer's output
  (possibly after a transpose or singleton reshape, as ``vmap`` produces) on its feature axis.

The search follows nested ``jit`` / ``checkpoint`` calls. It does not look inside ``scan``,
``while``, ``cond`` or custom-derivative functions, and a weight used by more than one layer
(weight sharing) is left out: such parameters are simply not preconditioned by K-FAC.

Convention for the scale of the statistics: the loss is assumed to be a **mean over the
examples** of the batch, and the number of examples is the size of the leading axis of the first
array argument after ``params`` (override with ``num_examples``). Then, with ``R`` rows
(examples x locations, e.g. pixels of a convolution or tokens of a sequence) per batch, the
Kronecker factors are ``A = aᵀa / R`` and ``B = N gᵀg`` with ``g = ∂L/∂s`` per row, which gives
the usual ``A = E[a aᵀ]``, ``B = E[δ δᵀ]`` for dense layers and ``Ω ⊗ Γ`` of Grosse & Martens
(2016) for convolutions.

References:
  Martens & Grosse, *Optimizing Neural Networks with Kronecker-factored Approximate Curvature*,
  ICML 2015.
  Grosse & Martens, *A Kronecker-factored approximate Fisher matrix for convolution layers*,
  ICML 2016.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jex_core

Array = jax.Array

# Call-like primitives whose body is inlined by the search (the body is a jaxpr we can read).
_CALL_PRIMITIVES = ("jit", "pjit", "closed_call", "core_call", "checkpoint", "remat")
# Primitives that do not change a value's content, only its dtype or identity.
_PASS_THROUGH = ("convert_element_type", "copy", "copy_p", "optimization_barrier_p")


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """The static geometry of a ``conv_general_dilated`` layer (what patch extraction needs)."""

    lhs_spec: tuple[int, ...]
    rhs_spec: tuple[int, ...]
    out_spec: tuple[int, ...]
    window_strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    lhs_dilation: tuple[int, ...]
    rhs_dilation: tuple[int, ...]
    filter_shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One layer found in a loss function: which parameter leaves it uses and how.

    The weight is seen as a matrix ``W`` of shape ``(in_features, out_features)`` (fan-in axes
    first), whatever its storage layout: ``(d_in, d_out)`` in Flax and metagrad, ``(d_out, d_in)``
    in Equinox, ``(kh, kw, c_in, c_out)`` or ``(c_out, c_in, kh, kw)`` for convolutions.

    Attributes:
      name: the weight leaf's path, e.g. ``"0/w"`` or ``"params/Dense_0/kernel"``.
      kind: ``"dense"`` or ``"conv"``.
      weight_index: index of the weight in ``jax.tree_util.tree_leaves(params)``.
      weight_shape: shape of the weight leaf.
      fan_in_axes: weight axes that are contracted with the input, in the order in which the
        input features are flattened.
      fan_out_axes: weight axes that index the output features.
      bias_index: index of the bias leaf, or ``None``.
      bias_name: path of the bias leaf, or ``None``.
      input_axes: axes of the layer input that are contracted (dense layers), paired with
        ``fan_in_axes`` after axis merges are undone.
      output_axes: axes of the layer output that hold the output features.
      conv: the convolution geometry (``kind == "conv"`` only).
    """

    name: str
    kind: str
    weight_index: int
    weight_shape: tuple[int, ...]
    fan_in_axes: tuple[int, ...]
    fan_out_axes: tuple[int, ...]
    bias_index: int | None
    bias_name: str | None
    input_axes: tuple[int, ...]
    output_axes: tuple[int, ...]
    conv: ConvGeometry | None = None

    @property
    def in_features(self) -> int:
        """Size of the K-FAC ``A`` factor: the product of the fan-in axes."""
        return math.prod(self.weight_shape[i] for i in self.fan_in_axes)

    @property
    def out_features(self) -> int:
        """Size of the K-FAC ``B`` factor: the product of the fan-out axes."""
        return math.prod(self.weight_shape[i] for i in self.fan_out_axes)

    @property
    def _perm(self) -> tuple[int, ...]:
        # Singleton axes of the weight that the layer does not use go last (they have size 1).
        used = self.fan_in_axes + self.fan_out_axes
        return used + tuple(i for i in range(len(self.weight_shape)) if i not in used)

    def weight_to_matrix(self, w: Array) -> Array:
        """Reshapes a weight-shaped array to its ``(in_features, out_features)`` matrix."""
        return jnp.transpose(w, self._perm).reshape(self.in_features, self.out_features)

    def matrix_to_weight(self, m: Array) -> Array:
        """Inverse of :meth:`weight_to_matrix`."""
        perm = self._perm
        shaped = m.reshape(tuple(self.weight_shape[i] for i in perm))
        return jnp.transpose(shaped, _inverse_perm(perm))

    def input_rows(self, x: Array) -> Array:
        """The layer input as a ``(rows, in_features)`` matrix (patches for convolutions)."""
        if self.conv is not None:
            return _conv_patch_rows(x, self.conv)
        free = tuple(i for i in range(x.ndim) if i not in self.input_axes)
        return jnp.transpose(x, free + self.input_axes).reshape(-1, self.in_features)

    def output_rows(self, g: Array) -> Array:
        """A layer-output-shaped array (e.g. ``∂L/∂s``) as a ``(rows, out_features)`` matrix."""
        free = tuple(i for i in range(g.ndim) if i not in self.output_axes)
        return jnp.transpose(g, free + self.output_axes).reshape(-1, self.out_features)


Layers = tuple[LayerInfo, ...]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CurvatureStats:
    """What one capture returns for K-FAC: per layer, its input and its output gradient.

    The arrays are kept in the layer's own layout (not yet as rows or outer products) so that the
    optimiser pays for patch extraction and ``aᵀa`` only on the steps where it refreshes factors.

    Attributes:
      inputs: per layer (in the order of ``layers``), the input ``a`` of the layer.
      output_grads: per layer, ``∂L/∂s`` for the layer's output ``s`` (same shape as ``s``).
      layers: the static description of the layers.
      num_examples: the number of examples ``N`` the loss averages over.
    """

    inputs: tuple[Array, ...]
    output_grads: tuple[Array, ...]
    layers: Layers = dataclasses.field(metadata={"static": True})
    num_examples: int = dataclasses.field(metadata={"static": True})

    def factors(self, index: int) -> tuple[Array, Array]:
        """The batch Kronecker factors ``(A, B)`` of layer ``index`` (see the module docstring)."""
        layer = self.layers[index]
        a = layer.input_rows(self.inputs[index])
        g = layer.output_rows(self.output_grads[index])
        a_fac = (a.T @ a) / a.shape[0]
        b_fac = (g.T @ g) * self.num_examples
        return a_fac, b_fac


# --------------------------------------------------------------------------------------------
# Provenance of jaxpr variables: what a variable is, in terms of parameter leaves and layers.


@dataclasses.dataclass(frozen=True)
class _Param:
    """The variable equals a parameter leaf, transposed and with some axes merged.

    ``groups[i]`` lists the leaf axes merged (row-major) into axis ``i`` of the variable.
    """

    leaf: int
    groups: tuple[tuple[int, ...], ...]


@dataclasses.dataclass(frozen=True)
class _Vector:
    """The variable is a broadcast of a vector-like leaf (one non-singleton axis) along ``axis``."""

    leaf: int
    axis: int


@dataclasses.dataclass(frozen=True)
class _LayerOut:
    """The variable is (a transpose / singleton reshape of) a layer output.

    ``axes`` are the positions of the output-feature axes in the variable.
    """

    layer: int
    axes: tuple[int, ...]


@dataclasses.dataclass
class _Found:
    """A layer found during the search, before weight-sharing and bias checks."""

    path: tuple[int, ...]
    kind: str
    weight_leaf: int
    fan_in_axes: tuple[int, ...]
    fan_out_axes: tuple[int, ...]
    input_operand: int
    input_axes: tuple[int, ...]
    output_axes: tuple[int, ...]
    conv: ConvGeometry | None = None
    bias_candidates: list[int] = dataclasses.field(default_factory=list)


def _inverse_perm(perm: Sequence[int]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def _non_singleton(shape: Sequence[int]) -> list[int]:
    return [i for i, s in enumerate(shape) if s != 1]


def _merge_groups(old_shape: Sequence[int], new_shape: Sequence[int]) -> list[list[int]] | None:
    """Old axes that make up each new axis when a reshape only merges consecutive axes.

    Size-1 axes may appear or disappear anywhere. Returns ``None`` for any other reshape (a split
    of an axis, or a reordering), which the search does not follow.
    """
    old = [i for i in range(len(old_shape)) if old_shape[i] != 1]
    groups: list[list[int]] = []
    k = 0
    for size in new_shape:
        if size == 1:
            groups.append([])
            continue
        group: list[int] = []
        prod = 1
        while prod < size and k < len(old):
            prod *= old_shape[old[k]]
            group.append(old[k])
            k += 1
        if prod != size:
            return None
        groups.append(group)
    return groups if k == len(old) else None


def _vector_axis(prov: _Param, leaf_shapes: Sequence[tuple[int, ...]]) -> int | None:
    """If ``prov`` is a vector-like leaf (one non-singleton axis), the variable axis holding it."""
    leaf_shape = leaf_shapes[prov.leaf]
    if len(_non_singleton(leaf_shape)) != 1:
        return None
    axes = [i for i, g in enumerate(prov.groups) if any(leaf_shape[a] != 1 for a in g)]
    return axes[0] if len(axes) == 1 else None


class _Search:
    """Walks a jaxpr once and records layers (dense / conv), biases and weight uses."""

    def __init__(self, leaf_shapes: Sequence[tuple[int, ...]]):
        self.leaf_shapes = list(leaf_shapes)
        self.found: list[_Found] = []
        self.uses: dict[int, int] = {}

    def run(self, jaxpr, provs: Sequence[Any], prefix: tuple[int, ...] = ()) -> list[Any]:
        env: dict[Any, Any] = {}

        def read(v):
            if isinstance(v, jex_core.Literal):
                return None
            return env.get(v)

        for v, p in zip(jaxpr.invars, provs, strict=True):
            if p is not None:
                env[v] = p
        for k, eqn in enumerate(jaxpr.eqns):
            path = (*prefix, k)
            ins = [read(v) for v in eqn.invars]
            outs = self._eqn(eqn, ins, path)
            for v, p in zip(eqn.outvars, outs, strict=True):
                if p is not None and not isinstance(v, jex_core.DropVar):
                    env[v] = p
        return [read(v) for v in jaxpr.outvars]

    def _eqn(self, eqn, ins: list[Any], path: tuple[int, ...]) -> list[Any]:
        name = eqn.primitive.name
        params = eqn.params
        none = [None] * len(eqn.outvars)
        if name in _CALL_PRIMITIVES:
            sub = _sub_jaxpr(eqn)
            if sub is None:
                return none
            return self.run(sub[0], ins, path)
        if name in _PASS_THROUGH and len(ins) == 1:
            return [ins[0]]
        if name == "transpose":
            return [self._transpose(ins[0], params["permutation"])]
        if name in ("reshape", "squeeze", "expand_dims"):
            old = eqn.invars[0].aval.shape
            new = eqn.outvars[0].aval.shape
            return [self._reshape(ins[0], old, new)]
        if name == "broadcast_in_dim":
            return [self._broadcast(ins[0], eqn.invars[0].aval.shape, params)]
        if name == "add":
            return [self._add(ins)]
        if name == "dot_general":
            return [self._dot(eqn, ins, path)]
        if name == "conv_general_dilated":
            return [self._conv(eqn, ins, path)]
        return none

    # Provenance rules -----------------------------------------------------------------------

    def _transpose(self, p: Any, perm: Sequence[int]) -> Any:
        if isinstance(p, _Param):
            return _Param(p.leaf, tuple(p.groups[i] for i in perm))
        if isinstance(p, _Vector):
            return _Vector(p.leaf, list(perm).index(p.axis))
        if isinstance(p, _LayerOut):
            return _LayerOut(p.layer, tuple(list(perm).index(a) for a in p.axes))
        return None

    def _reshape(self, p: Any, old: Sequence[int], new: Sequence[int]) -> Any:
        if p is None:
            return None
        groups = _merge_groups(old, new)
        if groups is None:
            return None
        if isinstance(p, _Param):
            new_groups = tuple(tuple(a for o in g for a in p.groups[o]) for g in groups)
            # Singleton axes of the leaf that the reshape dropped do not matter for the matrix.
            return _Param(p.leaf, new_groups)
        # For vectors and layer outputs only singleton insertions / removals keep the meaning.
        where = {o: i for i, g in enumerate(groups) for o in g if len(g) == 1}
        if isinstance(p, _Vector):
            return _Vector(p.leaf, where[p.axis]) if p.axis in where else None
        if isinstance(p, _LayerOut) and all(a in where for a in p.axes):
            return _LayerOut(p.layer, tuple(where[a] for a in p.axes))
        return None

    def _broadcast(self, p: Any, old_shape: Sequence[int], params: dict) -> Any:
        dims = tuple(int(d) for d in params["broadcast_dimensions"])
        if isinstance(p, _Param):
            axis = _vector_axis(p, self.leaf_shapes)
            return None if axis is None else _Vector(p.leaf, dims[axis])
        if isinstance(p, _Vector):
            return _Vector(p.leaf, dims[p.axis])
        return None

    def _add(self, ins: list[Any]) -> Any:
        if len(ins) != 2:
            return None
        for out, other in ((ins[0], ins[1]), (ins[1], ins[0])):
            if not isinstance(out, _LayerOut):
                continue
            vec = other
            if isinstance(other, _Param):
                # ``s + b`` with equal ranks needs no broadcast_in_dim.
                axis = _vector_axis(other, self.leaf_shapes)
                vec = None if axis is None else _Vector(other.leaf, axis)
            if isinstance(vec, _Vector) and len(out.axes) == 1 and vec.axis == out.axes[0]:
                layer = self.found[out.layer]
                d_out = math.prod(
                    self.leaf_shapes[layer.weight_leaf][a] for a in layer.fan_out_axes
                )
                if math.prod(self.leaf_shapes[vec.leaf]) == d_out:
                    layer.bias_candidates.append(vec.leaf)
            # Adding anything to a layer output leaves ∂L/∂s unchanged, so the sum still counts
            # as that layer's output for bias detection (e.g. a residual added before the bias).
            return out
        return None

    def _dot(self, eqn, ins: list[Any], path: tuple[int, ...]) -> Any:
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        if lb or rb:
            return None
        lhs, rhs = ins
        w_pos = None
        if isinstance(rhs, _Param) and not isinstance(lhs, _Param | _Vector):
            w_pos = 1
        elif isinstance(lhs, _Param) and not isinstance(rhs, _Param | _Vector):
            w_pos = 0
        for p in (lhs, rhs):
            if isinstance(p, _Param):
                self.uses[p.leaf] = self.uses.get(p.leaf, 0) + 1
        if w_pos is None:
            return None
        w = ins[w_pos]
        w_c = tuple(int(a) for a in (rc if w_pos == 1 else lc))
        x_c = tuple(int(a) for a in (lc if w_pos == 1 else rc))
        w_ndim = eqn.invars[w_pos].aval.ndim
        x_ndim = eqn.invars[1 - w_pos].aval.ndim
        w_free = tuple(i for i in range(w_ndim) if i not in w_c)
        n_x_free = x_ndim - len(x_c)
        # dot_general's output is (lhs free axes..., rhs free axes...).
        if w_pos == 1:
            out_axes = tuple(range(n_x_free, n_x_free + len(w_free)))
        else:
            out_axes = tuple(range(len(w_free)))
        fan_in = tuple(a for i in w_c for a in w.groups[i])
        fan_out = tuple(a for i in w_free for a in w.groups[i])
        self.found.append(_Found(path, "dense", w.leaf, fan_in, fan_out, 1 - w_pos, x_c, out_axes))
        return _LayerOut(len(self.found) - 1, out_axes)

    def _conv(self, eqn, ins: list[Any], path: tuple[int, ...]) -> Any:
        lhs, rhs = ins
        params = eqn.params
        if isinstance(lhs, _Param):
            self.uses[lhs.leaf] = self.uses.get(lhs.leaf, 0) + 1
        if not isinstance(rhs, _Param):
            return None
        self.uses[rhs.leaf] = self.uses.get(rhs.leaf, 0) + 1
        if isinstance(lhs, _Param | _Vector):
            return None
        if params["feature_group_count"] != 1 or params["batch_group_count"] != 1:
            return None
        if any(len(g) != 1 for g in rhs.groups):
            return None  # a merged-axes kernel is not a plain conv kernel
        dn = params["dimension_numbers"]
        rhs_shape = eqn.invars[1].aval.shape
        geom = ConvGeometry(
            lhs_spec=tuple(int(a) for a in dn.lhs_spec),
            rhs_spec=tuple(int(a) for a in dn.rhs_spec),
            out_spec=tuple(int(a) for a in dn.out_spec),
            window_strides=tuple(int(s) for s in params["window_strides"]),
            padding=tuple((int(lo), int(hi)) for lo, hi in params["padding"]),
            lhs_dilation=tuple(int(d) for d in params["lhs_dilation"]),
            rhs_dilation=tuple(int(d) for d in params["rhs_dilation"]),
            filter_shape=tuple(int(rhs_shape[a]) for a in dn.rhs_spec[2:]),
        )
        # Patches are flattened as (c_in, spatial...) in the rhs spec's spatial order.
        fan_in = (rhs.groups[dn.rhs_spec[1]][0],) + tuple(rhs.groups[a][0] for a in dn.rhs_spec[2:])
        fan_out = (rhs.groups[dn.rhs_spec[0]][0],)
        out_axes = (int(dn.out_spec[1]),)
        self.found.append(_Found(path, "conv", rhs.leaf, fan_in, fan_out, 0, (), out_axes, geom))
        return _LayerOut(len(self.found) - 1, out_axes)


def _sub_jaxpr(eqn) -> tuple[Any, Sequence[Any]] | None:
    """The body of a call-like equation as ``(jaxpr, consts)``, or ``None``."""
    for key in ("jaxpr", "call_jaxpr"):
        body = eqn.params.get(key)
        if body is None:
            continue
        if isinstance(body, jex_core.ClosedJaxpr):
            return body.jaxpr, body.consts
        if isinstance(body, jex_core.Jaxpr):
            return body, ()
    return None


def _conv_patch_rows(x: Array, geom: ConvGeometry) -> Array:
    """Patches of a convolution's input as ``(rows, c_in * prod(filter_shape))``.

    The input is first brought to the canonical ``(N, C, spatial...)`` layout so that the patch
    features come out ordered ``(c_in, spatial...)``, matching :meth:`LayerInfo.weight_to_matrix`.
    """
    n_sp = len(geom.filter_shape)
    x = jnp.transpose(x, geom.lhs_spec)
    sp = "HWDXYZ"[:n_sp]
    dn = ("NC" + sp, "OI" + sp, "NC" + sp)
    patches = lax.conv_general_dilated_patches(
        x,
        filter_shape=geom.filter_shape,
        window_strides=geom.window_strides,
        padding=geom.padding,
        lhs_dilation=geom.lhs_dilation,
        rhs_dilation=geom.rhs_dilation,
        dimension_numbers=dn,
        precision=lax.Precision.HIGHEST,
    )
    d = patches.shape[1]
    perm = (0, *range(2, patches.ndim), 1)
    return jnp.transpose(patches, perm).reshape(-1, d)


# --------------------------------------------------------------------------------------------
# Public functions.


def _leaf_name(path: Sequence[Any]) -> str:
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def leaf_names(tree: Any) -> list[str]:
    """The path of every leaf of ``tree`` as ``"a/b/0"`` strings, in ``tree_leaves`` order."""
    return [_leaf_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _trace(fn: Callable[..., Any], params: Any, args: Sequence[Any], has_aux: bool):
    """Traces ``fn(params, *args)``; returns the closed jaxpr, leaf counts and output tree."""
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(params, *args)
    if has_aux:
        if not (isinstance(out_shape, tuple) and len(out_shape) == 2):
            raise TypeError(
                "capture(has_aux=True): the loss function must return a pair (loss, aux); got "
                f"{type(out_shape).__name__}. Return (loss, aux) or pass has_aux=False."
            )
        loss_shape = out_shape[0]
    else:
        loss_shape = out_shape
    if not (hasattr(loss_shape, "shape") and loss_shape.shape == ()):
        raise TypeError(
            "capture: the loss function must return a scalar loss"
            + (" as the first element of (loss, aux)" if has_aux else "")
            + f"; got {loss_shape!r}. Reduce the loss to a scalar (e.g. a mean over the batch)"
            + (" or pass has_aux=True if the function returns (loss, aux)." if not has_aux else ".")
        )
    return closed, out_shape


def _search(closed, params: Any) -> tuple[Layers, list[_Found]]:
    path_leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    leaf_shapes = [tuple(jnp.shape(leaf)) for _, leaf in path_leaves]
    names = [_leaf_name(p) for p, _ in path_leaves]
    n = len(leaf_shapes)
    provs: list[Any] = [
        _Param(i, tuple((a,) for a in range(len(leaf_shapes[i])))) for i in range(n)
    ]
    provs += [None] * (len(closed.jaxpr.invars) - n)
    search = _Search(leaf_shapes)
    search.run(closed.jaxpr, provs)
    # A weight contracted in more than one place (weight sharing) gets no Kronecker factors.
    kept = [f for f in search.found if search.uses.get(f.weight_leaf, 0) == 1]
    weight_leaves = {f.weight_leaf for f in kept}
    bias_counts: dict[int, int] = {}
    for f in kept:
        for b in set(f.bias_candidates):
            bias_counts[b] = bias_counts.get(b, 0) + 1
    layers = []
    for f in kept:
        cands = [
            b for b in set(f.bias_candidates) if bias_counts[b] == 1 and b not in weight_leaves
        ]
        bias = cands[0] if len(cands) == 1 else None
        layers.append(
            LayerInfo(
                name=names[f.weight_leaf],
                kind=f.kind,
                weight_index=f.weight_leaf,
                weight_shape=leaf_shapes[f.weight_leaf],
                fan_in_axes=f.fan_in_axes,
                fan_out_axes=f.fan_out_axes,
                bias_index=bias,
                bias_name=None if bias is None else names[bias],
                input_axes=f.input_axes,
                output_axes=f.output_axes,
                conv=f.conv,
            )
        )
    return tuple(layers), kept


def find_layers(fn: Callable[..., Any], params: Any, *args: Any, has_aux: bool = False) -> Layers:
    """Finds the dense and convolutional layers of a loss function.

    Args:
      fn: the loss, ``fn(params, *args)`` returning a scalar (or ``(scalar, aux)`` with
        ``has_aux=True``). Any model library works: the search reads the traced program.
      params: the parameters (any pytree of arrays, or of ``jax.ShapeDtypeStruct``).
      *args: example arguments (e.g. a batch); only their shapes and dtypes matter.
      has_aux: whether ``fn`` returns ``(loss, aux)``.

    Returns:
      A tuple of :class:`LayerInfo`, in the order the layers are evaluated. Parameters that
      belong to no layer (normalisation scales, embeddings, shared weights) are not listed.

    References:
      Martens & Grosse, *Optimizing Neural Networks with Kronecker-factored Approximate
      Curvature*, ICML 2015.
    """
    if not callable(fn):
        raise TypeError(f"find_layers: fn must be a callable loss fn(params, *args); got {fn!r}.")
    closed, _ = _trace(fn, params, args, has_aux)
    layers, _ = _search(closed, params)
    if not layers:
        # K-FAC would then precondition nothing (plain SGD): say so rather than run silently.
        warnings.warn(
            "find_layers: the loss multiplies no parameter matrix by an activation (no dense or "
            "convolution layer found), so K-FAC has nothing to precondition. Check that the "
            "loss applies the model to the batch with these params.",
            RuntimeWarning,
            stacklevel=2,
        )
    return layers


def _default_num_examples(args: Sequence[Any]) -> int:
    for leaf in jax.tree_util.tree_leaves(args):
        shape = jnp.shape(leaf)
        if len(shape) >= 1:
            return int(shape[0])
    raise ValueError(
        "capture: cannot tell the number of examples the loss averages over: no argument after "
        "params has a leading (batch) axis. Pass num_examples=N to capture()."
    )


def capture(
    fn: Callable[..., Any],
    *,
    has_aux: bool = False,
    num_examples: int | Callable[..., int] | None = None,
) -> Callable[..., tuple[Any, Any, CurvatureStats]]:
    """Wraps a loss so that one call gives the loss, its gradient and K-FAC's statistics.

    Example::

      grad_and_stats = capture(loss_fn)
      loss, grads, stats = grad_and_stats(params, batch)
      updates, state = kfac_opt.update(grads, state, params, curvature=stats)

    One forward and one backward pass produce everything: the layer inputs are recorded during
    the forward pass and ``∂L/∂s`` is the gradient with respect to a zero perturbation added to
    every layer output (it costs the same backward pass that computes ``grads``).

    Args:
      fn: the loss ``fn(params, *args)``; a scalar mean over examples (see the module docstring),
        or ``(scalar, aux)`` with ``has_aux=True``.
      has_aux: whether ``fn`` returns ``(loss, aux)``.
      num_examples: the number of examples the loss averages over: an int, a function of
        ``(*args)`` returning an int, or ``None`` for the leading axis of the first array in
        ``args``. Only the scale of K-FAC's ``B`` factor depends on it.

    Returns:
      A function ``(params, *args) -> (value, grads, stats)`` where ``value`` is what ``fn``
      returns, ``grads`` is the gradient with respect to ``params`` and ``stats`` is a
      :class:`CurvatureStats`. It can be ``jax.jit``-ed.

    References:
      Martens & Grosse, *Optimizing Neural Networks with Kronecker-factored Approximate
      Curvature*, ICML 2015.
      Grosse & Martens, *A Kronecker-factored approximate Fisher matrix for convolution layers*,
      ICML 2016.
    """
    if not callable(fn):
        raise TypeError(f"capture: fn must be a callable loss fn(params, *args); got {fn!r}.")
    bad_int = (
        isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1
    )
    if num_examples is not None and not callable(num_examples) and bad_int:
        raise ValueError(
            "capture: num_examples must be a positive int, a function of the batch "
            f"arguments, or None; got {num_examples!r}."
        )

    def wrapped(params: Any, *args: Any) -> tuple[Any, Any, CurvatureStats]:
        closed, out_shape = _trace(fn, params, args, has_aux)
        out_tree = jax.tree_util.tree_structure(out_shape)
        layers, found = _search(closed, params)
        if num_examples is None:
            n_ex = _default_num_examples(args)
        elif callable(num_examples):
            n_ex = int(num_examples(*args))
        else:
            n_ex = num_examples
        by_path = {f.path: i for i, f in enumerate(found)}
        avals = _layer_output_avals(closed.jaxpr, by_path)
        perturb0 = tuple(jnp.zeros(a.shape, a.dtype) for a in avals)

        def perturbed_loss(params_, perturb):
            flat = jax.tree_util.tree_leaves((params_, *args))
            inputs: list[Any] = [None] * len(found)
            outs = _evaluate(closed.jaxpr, closed.consts, flat, by_path, found, perturb, inputs, ())
            value = jax.tree_util.tree_unflatten(out_tree, outs)
            loss = value[0] if has_aux else value
            return loss, (value, tuple(inputs))

        (_, (value, inputs)), (grads, out_grads) = jax.value_and_grad(
            perturbed_loss, argnums=(0, 1), has_aux=True
        )(params, perturb0)
        stats = CurvatureStats(
            inputs=tuple(inputs), output_grads=tuple(out_grads), layers=layers, num_examples=n_ex
        )
        return value, grads, stats

    return wrapped


def _layer_output_avals(jaxpr, by_path: dict[tuple[int, ...], int]) -> list[Any]:
    shapes: list[Any] = [None] * len(by_path)

    def walk(jx, prefix):
        for k, eqn in enumerate(jx.eqns):
            path = (*prefix, k)
            if path in by_path:
                shapes[by_path[path]] = eqn.outvars[0].aval
            elif eqn.primitive.name in _CALL_PRIMITIVES:
                sub = _sub_jaxpr(eqn)
                if sub is not None:
                    walk(sub[0], path)

    walk(jaxpr, ())
    return shapes


def _has_layer_below(path: tuple[int, ...], by_path: dict[tuple[int, ...], int]) -> bool:
    n = len(path)
    return any(len(p) > n and p[:n] == path for p in by_path)


def _evaluate(jaxpr, consts, args, by_path, found, perturb, inputs, prefix) -> list[Any]:
    """Evaluates a jaxpr, adding ``perturb`` to the layers' outputs and recording their inputs."""
    env: dict[Any, Any] = {}

    def read(v):
        return v.val if isinstance(v, jex_core.Literal) else env[v]

    for v, x in zip(jaxpr.constvars, consts, strict=True):
        env[v] = x
    for v, x in zip(jaxpr.invars, args, strict=True):
        env[v] = x
    for k, eqn in enumerate(jaxpr.eqns):
        path = (*prefix, k)
        invals = [read(v) for v in eqn.invars]
        if path in by_path:
            i = by_path[path]
            inputs[i] = invals[found[i].input_operand]
            outs = [_bind(eqn, invals) + perturb[i]]
        elif eqn.primitive.name in _CALL_PRIMITIVES and _has_layer_below(path, by_path):
            sub_jaxpr, sub_consts = _sub_jaxpr(eqn)
            outs = _evaluate(sub_jaxpr, sub_consts, invals, by_path, found, perturb, inputs, path)
        else:
            ans = _bind(eqn, invals)
            outs = ans if eqn.primitive.multiple_results else [ans]
        for v, x in zip(eqn.outvars, outs, strict=True):
            if not isinstance(v, jex_core.DropVar):
                env[v] = x
    return [read(v) for v in jaxpr.outvars]


def _bind(eqn, invals: list[Any]) -> Any:
    params = eqn.primitive.get_bind_params(eqn.params)
    ctx = getattr(eqn, "ctx", None)
    if ctx is not None and hasattr(ctx, "manager"):
        with ctx.manager:
            return eqn.primitive.bind(*invals, **params)
    return eqn.primitive.bind(*invals, **params)
