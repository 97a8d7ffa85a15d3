"""Standard (SP) and maximal-update (μP) parameterisations for SGD, Adam, K-FAC and Shampoo.

The user story is three lines::

    params = MLP(sizes=(784, 2048, 2048, 10)).init(key)                    # 1. the model
    params, shapes = set_base_shapes(params, base=jax.eval_shape(          # 2. its base shapes
        MLP(sizes=(784, 64, 64, 10)).init, key))
    opt = make_optimizer("kfac", 0.1, shapes, layers=find_layers(loss, params, batch))  # 3.

:func:`set_base_shapes` compares every parameter's shape with the base model's: axes that differ
are *width* axes. With the fan-in / fan-out split of each weight (the layout convention, or the
layer found by :func:`metagrad.optim.find_layers`) that gives each parameter a role and width
multipliers ``m = width / base width``:

========  ==========================================  ===========================
role      width axes                                  example
========  ==========================================  ===========================
input     fan-out only                                first layer ``(784, M)``
hidden    fan-in and fan-out                          ``(M, M)``
output    fan-in only                                 read-out ``(M, 10)``
vector    its one non-singleton axis                  bias ``(M,)``, norm scale
finite    none                                        read-out bias ``(10,)``
========  ==========================================  ===========================

With init variance ``∝ width^(-2b)`` and learning rate ``∝ width^(-c)`` per role, relative to
the base model (so that μP equals SP at the base width, as in the ``mup`` package), the exponents
are (methods.md, section 3; Yang et al. 2022 table 3; Ishikawa & Karakida 2024):

=============================  =====  =====  =====  =====  =====  =====  ======
optimiser                      b_in   b_hid  b_out  c_in   c_hid  c_out  c_vec
=============================  =====  =====  =====  =====  =====  =====  ======
SP (any)                       0      1/2    1/2    0      0      0      0
μP SGD                         0      1/2    1      -1     0      1      -1
μP Adam                        0      1/2    1      0      1      1      0
μP Shampoo (e = 1/4)           0      1/2    1      -1/2   0      1/2    -1 [*]
μP K-FAC                       0      1/2    1      0      0      0      0
=============================  =====  =====  =====  =====  =====  =====  ======

[*] Shampoo leaves 1-D parameters unpreconditioned by default, so they follow SGD (``-1``);
with ``one_d="diagonal"`` a diagonal power ``2e`` gives ``c_vec = 4e - 1``. For a general
Shampoo exponent ``e`` the matrix exponents follow the general rule for
``(B + ρ_B)^-e_B ∇W (A + ρ_A)^-e_A`` with ``e_A = e_B = 2e``: ``c_in = e_B - 1``,
``c_hid = e_B - e_A``, ``c_out = 1 - e_A``. With grafting, Shampoo takes the exponents of the
grafted optimiser (SGD or Adam for RMSprop). Vector-like parameters keep their init (``b = 0``);
the ``finite`` role is never rescaled. Parameters that K-FAC does not precondition follow SGD.

The damping of K-FAC under the ``"absolute"`` rule gets the μP width scaling
``ρ_A ∝ fan_in_mult``, ``ρ_B ∝ 1 / fan_out_mult`` (Θ(1)/Θ(M) and Θ(1/M)/Θ(1) at the
input/hidden/output layers); an absolute Shampoo ``ε`` gets ``fan_in_mult / fan_out_mult``.

Transformers (the decoder LM, :class:`metagrad.models.DecoderLM`) need one rule beyond the
table: the attention logits ``q · k`` are scaled by ``1 / head_dim`` instead of
``1 / sqrt(head_dim)`` (:func:`attention_logit_scale`; with the number of heads fixed, the head
dimension grows with width). Once training has correlated ``q`` and ``k`` their dot product grows
like ``head_dim``; the standard scale would let the logits grow like ``sqrt(width)``. Everything
else follows from the roles: the token embedding ``(vocab, D)`` is an *input* weight, the
projections ``qkv``, ``out``, ``up``, ``down`` are *hidden*, the unembedding ``(D, vocab)`` is the
*output* (read-out) weight, and the RMSNorm scales and the biases are *vectors*. The embedding is a
table look-up, not a layer that K-FAC or Shampoo precondition (K-FAC: SGD's exponents; Shampoo
treats it as a matrix like any other 2-D parameter); norm scales are never preconditioned
(SGD's exponents, or Adam's for Adam). Two μP options for transformers, used by the decoder LM's
Adam and Shampoo width experiments (docs/width.md): a zero read-out
(``set_base_shapes(..., zero_readout=True)``, see :func:`scale_init`) and zero queries
(:meth:`metagrad.models.DecoderLM.zero_query`), as the ``mup`` package recommends. K-FAC's
update is of degree -1 in the backward signal, so from a zero read-out its hidden-layer updates
blow up under the plain trace damping; with a floor on ``tr(B)`` in that damping
(``kfac(..., b_trace_floor=...)``, μP-scaled per layer by :func:`kfac_b_trace_floors`) the
layers below the read-out are damped as if the read-out were random until it has learned, and
K-FAC takes the zero read-out too (the decoder LM's K-FAC runs in docs/width.md).

References:
  Yang & Hu, *Feature Learning in Infinite-Width Neural Networks*, ICML 2021.
  Yang et al., *Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter
  Transfer*, NeurIPS 2021 / arXiv 2022.
  Ishikawa & Karakida, *On the Parameterization of Second-Order Optimization Effective Towards
  the Infinite Width*, ICLR 2024.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from metagrad.optim.curvature import LayerInfo, Layers, leaf_names
from metagrad.optim.kfac import kfac
from metagrad.optim.shampoo import shampoo

Array = jax.Array

ROLES = ("input", "hidden", "output", "vector", "finite")
OPTIMIZERS = ("sgd", "adam", "kfac", "shampoo")
PARAMETERIZATIONS = ("sp", "mup")
LAYOUTS = ("in_out", "out_in")


@dataclasses.dataclass(frozen=True)
class LeafWidth:
    """Width information of one parameter.

    Attributes:
      name: the parameter's path, e.g. ``"0/w"``.
      role: one of ``"input"``, ``"hidden"``, ``"output"``, ``"vector"``, ``"finite"``.
      fan_in_mult: fan-in of the parameter over the base's (1 for vectors and finite ones).
      fan_out_mult: fan-out over the base's (the size ratio for vectors).
    """

    name: str
    role: str
    fan_in_mult: float
    fan_out_mult: float

    @property
    def width_mult(self) -> float:
        """The multiplier ``m`` that the role's exponents apply to."""
        if self.role in ("hidden", "output"):
            return self.fan_in_mult
        if self.role in ("input", "vector"):
            return self.fan_out_mult
        return 1.0


@dataclasses.dataclass(frozen=True)
class BaseShapes:
    """Per-parameter width information of a model relative to its base model.

    Attributes:
      treedef: the tree structure of the parameters.
      leaves: one :class:`LeafWidth` per parameter leaf, in ``tree_leaves`` order.
    """

    treedef: Any
    leaves: tuple[LeafWidth, ...]

    def tree(self, fn: Callable[[LeafWidth], Any]) -> Any:
        """A pytree like the parameters with ``fn(leaf_width)`` at every leaf."""
        return jax.tree_util.tree_unflatten(self.treedef, [fn(w) for w in self.leaves])

    def roles(self) -> dict[str, str]:
        """``{parameter name: role}``."""
        return {w.name: w.role for w in self.leaves}

    def by_name(self) -> dict[str, LeafWidth]:
        """``{parameter name: LeafWidth}``."""
        return {w.name: w for w in self.leaves}


@dataclasses.dataclass(frozen=True)
class Exponents:
    """Width exponents per role: init variance ``∝ m^(-2 b)``, learning rate ``∝ m^(-c)``.

    Attributes:
      b: ``{role: b}`` (missing roles: the SP value).
      c: ``{role: c}`` (missing roles: 0).
      c_unregistered: ``c`` for parameters that K-FAC does not precondition, per role.
    """

    b: Mapping[str, float]
    c: Mapping[str, float]
    c_unregistered: Mapping[str, float] | None = None


_B_SP = {"input": 0.0, "hidden": 0.5, "output": 0.5, "vector": 0.0, "finite": 0.0}
_B_MUP = {"input": 0.0, "hidden": 0.5, "output": 1.0, "vector": 0.0, "finite": 0.0}
_C_SGD = {"input": -1.0, "hidden": 0.0, "output": 1.0, "vector": -1.0, "finite": 0.0}
_C_ADAM = {"input": 0.0, "hidden": 1.0, "output": 1.0, "vector": 0.0, "finite": 0.0}


def _check_choice(fn: str, name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{fn}: {name} must be one of {tuple(choices)}; got {value!r}.")


def exponents(
    optimizer: str,
    param: str = "mup",
    *,
    shampoo_exponent: float = 0.25,
    graft: str = "none",
    one_d: str = "none",
) -> Exponents:
    """The width exponents of an optimiser under a parameterisation (the module's table).

    Args:
      optimizer: ``"sgd"``, ``"adam"``, ``"kfac"`` or ``"shampoo"``.
      param: ``"sp"`` or ``"mup"``.
      shampoo_exponent: Shampoo's power ``e`` (``1/4`` or ``1/2``).
      graft: Shampoo's grafting (``"none"``, ``"sgd"``, ``"rmsprop"``).
      one_d: Shampoo's treatment of 1-D parameters (``"none"`` or ``"diagonal"``).

    Returns:
      An :class:`Exponents`.

    References:
      Yang et al., *Tensor Programs V*, 2022, table 3 (SGD, Adam).
      Ishikawa & Karakida, ICLR 2024 (K-FAC, Shampoo).
    """
    _check_choice("exponents", "optimizer", optimizer, OPTIMIZERS)
    _check_choice("exponents", "param", param, PARAMETERIZATIONS)
    zero = dict.fromkeys(ROLES, 0.0)
    if param == "sp":
        return Exponents(dict(_B_SP), zero, zero)
    if optimizer == "sgd":
        return Exponents(dict(_B_MUP), dict(_C_SGD))
    if optimizer == "adam":
        return Exponents(dict(_B_MUP), dict(_C_ADAM))
    if optimizer == "kfac":
        return Exponents(dict(_B_MUP), zero, dict(_C_SGD))
    if graft == "sgd":
        return Exponents(dict(_B_MUP), dict(_C_SGD))
    if graft == "rmsprop":
        return Exponents(dict(_B_MUP), dict(_C_ADAM))
    e = 2.0 * float(shampoo_exponent)  # factor exponent e_A = e_B of the general rule
    c_vec = 4.0 * float(shampoo_exponent) - 1.0 if one_d == "diagonal" else -1.0
    c = {"input": e - 1.0, "hidden": 0.0, "output": 1.0 - e, "vector": c_vec, "finite": 0.0}
    return Exponents(dict(_B_MUP), c)


def attention_logit_scale(head_dim: int, base_head_dim: int, param: str = "mup") -> float | None:
    """The multiplier of the attention logits ``q · k`` under a parameterisation.

    μP: ``sqrt(base_head_dim) / head_dim`` (``∝ 1 / head_dim``, and equal to the standard
    ``1 / sqrt(head_dim)`` at the base width, so that hyper-parameters tuned there transfer);
    SP: ``None`` (the model's default ``1 / sqrt(head_dim)``). Pass it as
    ``DecoderLM(attn_logit_scale=...)``.

    >>> attention_logit_scale(16, 16)
    0.25
    >>> attention_logit_scale(64, 16)
    0.0625
    >>> attention_logit_scale(64, 16, "sp") is None
    True

    References:
      Yang et al., *Tensor Programs V*, 2022 (section on attention, "1/d attention").
    """
    _check_choice("attention_logit_scale", "param", param, PARAMETERIZATIONS)
    for name, v in (("head_dim", head_dim), ("base_head_dim", base_head_dim)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"attention_logit_scale: {name} must be a positive int; got {v!r}.")
    if param == "sp":
        return None
    return math.sqrt(base_head_dim) / head_dim


def _fan_axes(
    shape: tuple[int, ...], layout: str, layer: LayerInfo | None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if layer is not None:
        return layer.fan_in_axes, layer.fan_out_axes
    nd = len(shape)
    if layout == "in_out":
        return tuple(range(nd - 1)), (nd - 1,)
    return tuple(range(1, nd)), (0,)


def base_shapes(
    params: Any,
    base: Any,
    *,
    layout: str = "in_out",
    roles: Mapping[str, str] | Callable[[str, tuple[int, ...]], str | None] | None = None,
    layers: Layers | None = None,
) -> BaseShapes:
    """Width multipliers and roles of every parameter, from a base model's shapes.

    Args:
      params: the model's parameters (any pytree of arrays or ``ShapeDtypeStruct``).
      base: the base model's parameters or shapes, with the same tree structure (e.g.
        ``jax.eval_shape(model_at_base_width.init, key)``).
      layout: where the fan-out axis of a weight is when no layer says otherwise: ``"in_out"``
        (last axis; Flax, Haiku, metagrad, HWIO kernels) or ``"out_in"`` (first axis; Equinox,
        PyTorch, OIHW kernels).
      roles: optional overrides, ``{name: role}`` or a function ``(name, shape) -> role or
        None``.
      layers: optional :func:`metagrad.optim.find_layers` result; its weights' fan-in /
        fan-out axes are used instead of ``layout``.

    Returns:
      A :class:`BaseShapes`.
    """
    _check_choice("base_shapes", "layout", layout, LAYOUTS)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    base_leaves, base_def = jax.tree_util.tree_flatten(base)
    if base_def != treedef:
        raise ValueError(
            "base_shapes: base must have the same tree structure as params (the same model at "
            f"another width); got {base_def} for base and {treedef} for params."
        )
    names = leaf_names(params)
    by_leaf = {layer.weight_index: layer for layer in (layers or ())}
    out = []
    for k, (x, b, name) in enumerate(zip(leaves, base_leaves, names, strict=True)):
        shape, bshape = tuple(jnp.shape(x)), tuple(jnp.shape(b))
        if len(shape) != len(bshape):
            raise ValueError(
                f"base_shapes: parameter {name!r} has shape {shape} but its base has shape "
                f"{bshape}; they must have the same number of axes."
            )
        nontrivial = [i for i, s in enumerate(shape) if s != 1 or bshape[i] != 1]
        if len(nontrivial) <= 1:
            mult = math.prod(shape) / math.prod(bshape)
            role = "vector" if mult != 1.0 else "finite"
            w = LeafWidth(name, role, 1.0, mult)
        else:
            fan_in, fan_out = _fan_axes(shape, layout, by_leaf.get(k))
            in_mult = math.prod(shape[i] for i in fan_in) / math.prod(bshape[i] for i in fan_in)
            out_mult = math.prod(shape[i] for i in fan_out) / math.prod(bshape[i] for i in fan_out)
            wide_in, wide_out = in_mult != 1.0, out_mult != 1.0
            role = {
                (True, True): "hidden",
                (False, True): "input",
                (True, False): "output",
                (False, False): "finite",
            }[(wide_in, wide_out)]
            w = LeafWidth(name, role, in_mult, out_mult)
        override = None
        if callable(roles):
            override = roles(name, shape)
        elif roles is not None:
            override = roles.get(name)
        if override is not None:
            _check_choice("base_shapes", f"roles[{name!r}]", override, ROLES)
            w = dataclasses.replace(w, role=override)
        out.append(w)
    _check_one_width_multiplier(out, roles)
    if isinstance(roles, Mapping):
        unknown = sorted(set(roles) - set(names))
        if unknown:
            raise ValueError(
                f"base_shapes: roles names unknown parameters {unknown}; parameter names are "
                f"{names}."
            )
    return BaseShapes(treedef, tuple(out))


def init_multipliers(shapes: BaseShapes, param: str = "mup") -> Any:
    """Per-parameter multipliers that turn a standard (fan-in) init into ``param``'s init.

    Returns a pytree of floats ``m^-(b - b_SP)`` (all 1 under SP).
    """
    _check_choice("init_multipliers", "param", param, PARAMETERIZATIONS)
    b = _B_MUP if param == "mup" else _B_SP
    return shapes.tree(lambda w: w.width_mult ** -(b[w.role] - _B_SP[w.role]))


def scale_init(
    params: Any, shapes: BaseShapes, param: str = "mup", *, zero_readout: bool = False
) -> Any:
    """Rescales a standard fan-in initialisation to the parameterisation's initialisation.

    Under μP only the read-out changes: its standard deviation is multiplied by ``m^-1/2``
    (variance ``1 / (fan_in m)``). By default it is *not* zeroed, because one K-FAC step from a
    zero read-out of the MLP collapses to a kernel-regression solution.

    ``zero_readout=True`` (μP only) initialises every *output* weight at zero instead. That is
    still μP: μP needs a read-out variance of at most ``O(1 / width²)``, and zero is the limit
    ``b_out → ∞`` (Yang et al. 2022, Tensor Programs V; the ``mup`` package's
    ``MuReadout(readout_zero_init=True)``, which its README recommends for transformers). It
    removes the term ``W_outᵀ Δh`` of the output update, whose size at initialisation is the
    ``1/√width`` random part that makes the network output's coordinate check shrink with width
    at finite width; the output then moves only by ``ΔW_outᵀ h``, which is width independent.
    At the base width itself no axis is wide and every role is ``"finite"``: give the read-out
    its role there with ``roles={"readout/w": "output"}`` (as :func:`metagrad.optim.experiment.build`
    does), or it keeps its initialisation at that one width.

    Args:
      params: parameters from the model's own (standard, fan-in) initialiser.
      shapes: from :func:`base_shapes`.
      param: ``"mup"`` or ``"sp"``.
      zero_readout: μP only: initialise the output-role weights at zero.

    Returns:
      The rescaled parameters.
    """
    if zero_readout and param != "mup":
        raise ValueError(
            "scale_init: zero_readout is a μP rule (SP keeps the standard read-out "
            f"initialisation); got param={param!r}."
        )
    mults = init_multipliers(shapes, param)
    if zero_readout:
        leaves = jax.tree_util.tree_leaves(mults)
        mults = jax.tree_util.tree_unflatten(
            shapes.treedef,
            [0.0 if w.role == "output" else m for w, m in zip(shapes.leaves, leaves, strict=True)],
        )
    return jax.tree_util.tree_map(
        lambda x, s: x * jnp.asarray(s, jnp.result_type(x)), params, mults
    )


def _check_one_width_multiplier(widths: list[LeafWidth], roles: Any) -> None:
    """The base must differ from the model in width only: every fan-in and fan-out multiplier is
    1 or the one width multiplier m. Another input size (or number of classes) in the base would
    change the input (output) layer's role to "hidden" without a word."""
    mults = [m for w in widths for m in (w.fan_in_mult, w.fan_out_mult) if m != 1.0]
    if not mults:
        return
    width = max(set(mults), key=mults.count)
    for w in widths:
        overridden = roles is not None and (callable(roles) or w.name in roles)
        odd = [m for m in (w.fan_in_mult, w.fan_out_mult) if m not in (1.0, width)]
        if odd and not overridden:
            raise ValueError(
                f"base_shapes: parameter {w.name!r} changes by a factor {odd[0]:g} against the "
                f"base, but the width changes by {width:g}: the base must be the same model at "
                "another width (same input size and number of outputs). Build the base with the "
                f"model's input and output sizes, or give {w.name!r} its role with roles=."
            )


def set_base_shapes(
    params: Any,
    base: Any,
    *,
    param: str = "mup",
    layout: str = "in_out",
    roles: Any = None,
    layers: Layers | None = None,
    zero_readout: bool = False,
) -> tuple[Any, BaseShapes]:
    """Declares a model's base shapes and applies the parameterisation's initialisation.

    Args:
      params: the model's freshly initialised parameters (standard fan-in init).
      base: the base model's parameters or shapes (same structure).
      param: ``"mup"`` or ``"sp"``.
      layout: see :func:`base_shapes`.
      roles: see :func:`base_shapes`.
      layers: see :func:`base_shapes`.
      zero_readout: μP only: initialise the read-out (output-role weights) at zero, see
        :func:`scale_init`.

    Returns:
      ``(params, shapes)``: rescaled parameters and their :class:`BaseShapes`.
    """
    shapes = base_shapes(params, base, layout=layout, roles=roles, layers=layers)
    return scale_init(params, shapes, param, zero_readout=zero_readout), shapes


def lr_multipliers(shapes: BaseShapes, exps: Exponents, layers: Layers | None = None) -> Any:
    """Per-parameter learning-rate multipliers ``m^-c`` (a pytree of floats).

    Args:
      shapes: from :func:`base_shapes`.
      exps: from :func:`exponents`.
      layers: for K-FAC, the preconditioned layers; other parameters use
        ``exps.c_unregistered``.
    """
    registered = None
    if exps.c_unregistered is not None and layers is not None:
        registered = {layer.name for layer in layers} | {
            layer.bias_name for layer in layers if layer.bias_name is not None
        }

    def mult(w: LeafWidth) -> float:
        c = exps.c
        if registered is not None and w.name not in registered:
            c = exps.c_unregistered
        return w.width_mult ** -c.get(w.role, 0.0)

    return shapes.tree(mult)


def kfac_damping_scales(
    shapes: BaseShapes, layers: Layers, param: str = "mup"
) -> dict[str, tuple[float, float]]:
    """Width scaling ``{layer: (scale_A, scale_B)}`` of K-FAC's absolute damping.

    Under μP ``ρ_A ∝ fan_in_mult`` (``A``'s eigenvalues grow with the fan-in) and
    ``ρ_B ∝ 1 / fan_out_mult`` (``δ`` of a wide layer shrinks like ``1/width``); under SP 1.
    """
    _check_choice("kfac_damping_scales", "param", param, PARAMETERIZATIONS)
    by_name = shapes.by_name()
    out = {}
    for layer in layers:
        if param == "sp" or layer.name not in by_name:
            out[layer.name] = (1.0, 1.0)
            continue
        w = by_name[layer.name]
        out[layer.name] = (w.fan_in_mult, 1.0 / w.fan_out_mult)
    return out


def kfac_b_trace_floors(
    shapes: BaseShapes, layers: Layers, floor: float, param: str = "mup"
) -> dict[str, float]:
    """Width scaling ``{layer: floor}`` of K-FAC's ``b_trace_floor`` (the smallest ``tr(B)`` of
    the trace damping rule), from its value at the base width.

    Under μP ``tr(B) = E‖δ‖²`` of a layer with a wide output shrinks like ``1 / fan_out_mult``
    (``δ`` has ``fan_out`` coordinates of size ``∝ 1/width`` below a μP read-out), and so does
    its floor; under SP the floor is ``floor`` everywhere.

    Args:
      shapes: from :func:`base_shapes`.
      layers: the preconditioned layers (:func:`metagrad.optim.find_layers`).
      floor: the floor at the base width (``tr(B)`` of a random μP read-out there is a guide).
      param: ``"mup"`` or ``"sp"``.

    Returns:
      ``{layer name: floor}`` for :func:`metagrad.optim.kfac`'s ``b_trace_floor``.
    """
    _check_choice("kfac_b_trace_floors", "param", param, PARAMETERIZATIONS)
    scales = kfac_damping_scales(shapes, layers, param)
    return {name: float(floor) * scale_b for name, (_, scale_b) in scales.items()}


def shampoo_eps_scales(shapes: BaseShapes, param: str = "mup") -> Any:
    """Width scaling of an absolute Shampoo ``ε`` per parameter (a pytree of floats).

    Under μP a matrix's ``ε`` scales like ``fan_in_mult / fan_out_mult`` (the largest eigenvalue
    of ``L`` and ``R``: Θ(1/M), Θ(1), Θ(M) for the input, hidden and output layers) and a
    vector's diagonal statistic like ``m^-2``; under SP 1.
    """
    _check_choice("shampoo_eps_scales", "param", param, PARAMETERIZATIONS)
    if param == "sp":
        return shapes.tree(lambda w: 1.0)

    def scale(w: LeafWidth) -> float:
        if w.role == "vector":
            return w.width_mult**-2.0
        return w.fan_in_mult / w.fan_out_mult

    return shapes.tree(scale)


def scale_by_width(multipliers: Any) -> optax.GradientTransformation:
    """Multiplies each update leaf by a fixed per-parameter multiplier (e.g. ``m^-c``).

    Args:
      multipliers: a pytree of floats like the parameters (e.g. from :func:`lr_multipliers`).

    Returns:
      A stateless ``optax.GradientTransformation``.
    """

    def init_fn(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        del params
        try:
            new = jax.tree_util.tree_map(
                lambda u, m: u * jnp.asarray(m, jnp.result_type(u)), updates, multipliers
            )
        except ValueError as e:
            raise ValueError(
                "scale_by_width: the multipliers must have the same tree structure as the "
                f"updates (build them from the same params): {e}"
            ) from e
        return new, state

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(
    name: str,
    learning_rate: float | optax.Schedule,
    shapes: BaseShapes | None = None,
    *,
    param: str = "mup",
    layers: Layers | None = None,
    momentum: float = 0.0,
    **kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
    """An optimiser with the per-layer learning rates (and damping) of a parameterisation.

    Args:
      name: ``"sgd"``, ``"adam"``, ``"kfac"`` or ``"shampoo"``.
      learning_rate: the base learning rate (tuned at the base width) or an optax schedule.
      shapes: from :func:`set_base_shapes`; ``None`` means no width scaling (plain optimiser).
      param: ``"mup"`` or ``"sp"``.
      layers: required for K-FAC (from :func:`metagrad.optim.find_layers`), optional for Shampoo.
      momentum: heavy-ball momentum on the preconditioned update (SGD, K-FAC, Shampoo); 0 for
        none. Adam has its own.
      **kwargs: passed to ``optax.scale_by_adam``, :func:`metagrad.optim.kfac` or
        :func:`metagrad.optim.shampoo`.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; for K-FAC its ``update`` needs
      ``curvature=stats`` from :func:`metagrad.optim.capture`.
    """
    _check_choice("make_optimizer", "name", name, OPTIMIZERS)
    _check_choice("make_optimizer", "param", param, PARAMETERIZATIONS)
    if shapes is not None and not isinstance(shapes, BaseShapes):
        raise TypeError(
            "make_optimizer: shapes must be the BaseShapes from set_base_shapes() or "
            f"base_shapes(), or None; got {type(shapes).__name__}."
        )
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"make_optimizer: momentum must be in [0, 1); got {momentum!r}.")
    exps = exponents(
        name,
        param,
        shampoo_exponent=kwargs.get("exponent", 0.25),
        graft=kwargs.get("graft", "none"),
        one_d=kwargs.get("one_d", "none"),
    )
    if name == "sgd":
        if kwargs:
            raise TypeError(
                f"make_optimizer('sgd'): got keywords {sorted(kwargs)} that SGD has no use for "
                "(they are options of adam, kfac or shampoo); remove them or choose that optimiser."
            )
        core = optax.identity()
    elif name == "adam":
        core = optax.scale_by_adam(**kwargs)
    elif name == "kfac":
        if layers is None:
            raise ValueError(
                "make_optimizer('kfac'): layers is required; pass "
                "layers=find_layers(loss_fn, params, batch)."
            )
        if (
            shapes is not None
            and kwargs.get("damping_rule", "trace") == "absolute"
            and "damping_scales" not in kwargs
        ):
            kwargs["damping_scales"] = kfac_damping_scales(shapes, layers, param)
        floor = kwargs.get("b_trace_floor")
        if shapes is not None and isinstance(floor, int | float) and floor:
            kwargs["b_trace_floor"] = kfac_b_trace_floors(shapes, layers, floor, param)
        core = kfac(layers, **kwargs)
    else:
        if (
            shapes is not None
            and kwargs.get("eps_mode") == "absolute"
            and "eps_scales" not in kwargs
        ):
            kwargs["eps_scales"] = shampoo_eps_scales(shapes, param)
        core = shampoo(layers=layers, **kwargs)
    chain = [core]
    if momentum:
        chain.append(optax.trace(decay=momentum))
    if shapes is not None:
        chain.append(
            scale_by_width(lr_multipliers(shapes, exps, layers if name == "kfac" else None))
        )
    chain.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*chain)
