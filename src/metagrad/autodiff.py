"""The mixed-mode gradient node and the switch that chooses the differentiation strategy.

``metagrad.grad(f)`` returns the same value as ``jax.grad(f)``. What differs is how *its own*
derivative is computed, which is what a meta-gradient through an unrolled inner loop needs. Reverse
mode through ``jax.grad`` (reverse-over-reverse) keeps every residual of the inner backward pass alive
until the outer backward pass consumes it. ``metagrad.grad`` instead wraps the gradient in a custom VJP
that saves only its inputs. Its backward rule then gets the cotangent ``u`` of the gradient and does
one forward-over-reverse pass:

    jvp(z_θ ↦ ∇_z L(z_θ, z_rest), (θ,), (u,))  =  (∇_z L,  ∇²_{zθ} L · u)

This yields the Hessian-vector product for the differentiated arguments and the mixed second
derivatives for every other floating-point input (meta-parameters, data, closed-over values) together.
The primal output of that same JVP is ``∇_z L``. It is exactly the cotangent that the *value* output
of ``value_and_grad`` needs, so returning the loss value costs nothing in the backward pass.

The strategy is a switch, not a copy of the loop: ``metagrad.unroll`` sets the mode while it traces
the inner step. In ``"reverse"`` and ``"remat"`` mode, ``grad`` is plain ``jax.grad``. In ``"mixflow"``
mode (the default, also outside any ``unroll``) it is the mixed-mode node described above.

The mode is part of JAX's trace context (``jax.make_user_context``), not a plain thread-local: every
cache that JAX keys on what was traced (``jax.jit``, ``jax.closure_convert``, ...) also keys on the
mode. A user's ``jax.jit(step)`` unrolled first in ``"reverse"`` and then in ``"mixflow"`` is traced
again for the second mode instead of silently reusing the reverse-mode trace.

References:
    Kemaev, Calian, Zintgraf, Farquhar, van Hasselt. *Scalable Meta-Learning via Mixed-Mode
    Differentiation* (MixFlow-MG). ICML 2025, arXiv:2505.00793.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import custom_derivatives
from jax.ad_checkpoint import checkpoint_name

MODES: tuple[str, ...] = ("reverse", "remat", "mixflow")
"""The differentiation strategies ``metagrad.unroll`` and ``metagrad.grad`` understand."""

INNER_GRAD_NAME = "metagrad_inner_grad"
"""Name given (``jax.ad_checkpoint.checkpoint_name``) to every gradient ``metagrad.grad`` returns, so
that a rematerialisation policy can save exactly those values and nothing else."""

# The mode in force while tracing. A JAX user context is included in every tracing and compilation
# cache key, so a function traced under one mode is never reused under another. ``None`` means
# "not set" (the default, mixflow).
_MODE_CONTEXT = jax.make_user_context(default_value=None)
_warned_fallback: set[str] = set()


def validate_mode(mode: object, argname: str = "mode") -> str:
    """Returns ``mode`` if it names a known strategy, else raises a ``ValueError`` that lists them."""
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(
            f"{argname} must be one of {', '.join(repr(m) for m in MODES)}; got {mode!r}. "
            "Use 'mixflow' (mixed mode, least memory), 'remat' (per-step checkpointing) or "
            "'reverse' (plain reverse-over-reverse, the reference)."
        )
    return mode


def current_mode() -> str:
    """The differentiation mode in force where ``metagrad.grad`` is traced (default ``"mixflow"``)."""
    mode = _MODE_CONTEXT.value
    return "mixflow" if mode is None else mode


@contextlib.contextmanager
def differentiation_mode(mode: str) -> Iterator[None]:
    """Context in which every ``metagrad.grad`` traced uses the strategy ``mode``.

    The mode enters JAX's trace context, so functions traced (and cached) under another mode are
    traced again inside this context.

    Args:
      mode: one of ``MODES``.
    """
    validate_mode(mode)
    with _MODE_CONTEXT(mode):
        yield


def grad(
    fun: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False
) -> Callable[..., Any]:
    """Gradient of ``fun`` whose own derivative is computed in mixed mode.

    Same signature and value as ``jax.grad``. Use it for the inner gradient of an unrolled loop.
    Under ``metagrad.unroll(..., mode="mixflow")`` (and outside any ``unroll``), the second-order
    products of its backward pass come from one forward-over-reverse pass. The backward pass saves only
    the function's inputs, never the activations of the inner backward pass.

    Args:
      fun: function returning a scalar floating-point loss (or ``(loss, aux)`` if ``has_aux``).
        It may close over traced values, such as meta-parameters. They are hoisted and differentiated
        like explicit inputs.
      argnums: index or tuple of indices of the positional arguments to differentiate.
      has_aux: whether ``fun`` returns ``(loss, aux)``. Cotangents flowing into ``aux`` are honoured
        (through one extra reverse pass of ``fun`` only when they are non-zero).

    Returns:
      A function with the signature of ``fun``. It returns the gradient (structured like the
      ``argnums`` arguments) or ``(gradient, aux)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import metagrad
      >>> f = lambda w: jnp.sum(w**3)
      >>> print(metagrad.grad(f)(jnp.array([1.0, 2.0])))  # 3 w²
      [ 3. 12.]
      >>> # Its own derivative (the part a meta-gradient needs) comes from forward-over-reverse:
      >>> print(jax.grad(lambda w: jnp.sum(metagrad.grad(f)(w)))(jnp.array([1.0, 2.0])))  # 6 w
      [ 6. 12.]

    References:
      Kemaev et al., *Scalable Meta-Learning via Mixed-Mode Differentiation*, ICML 2025.
    """
    value_and_grad_fun = value_and_grad(fun, argnums=argnums, has_aux=has_aux)

    def grad_fun(*args: Any) -> Any:
        (_, *aux), g = _split_value(value_and_grad_fun(*args), has_aux)
        return (g, aux[0]) if has_aux else g

    return grad_fun


def value_and_grad(
    fun: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False
) -> Callable[..., Any]:
    """Like ``jax.value_and_grad``, with the mixed-mode derivative of ``metagrad.grad``.

    Returning the value costs nothing extra in the backward pass: the cotangent of the value is
    ``∇_z L``, which the forward-over-reverse pass computes anyway as its primal output.

    Args:
      fun: function returning a scalar floating-point loss (or ``(loss, aux)`` if ``has_aux``).
      argnums: index or tuple of indices of the positional arguments to differentiate.
      has_aux: whether ``fun`` returns ``(loss, aux)``.

    Returns:
      A function returning ``(value, grad)`` or ``((value, aux), grad)``, like ``jax.value_and_grad``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import metagrad
      >>> value, g = metagrad.value_and_grad(lambda w: jnp.sum(w**3))(jnp.array([1.0, 2.0]))
      >>> print(value, g)
      9.0 [ 3. 12.]
    """
    argnums_tuple = _normalise_argnums(argnums)

    def value_and_grad_fun(*args: Any) -> Any:
        _check_argnums_in_range(argnums_tuple, len(args))
        _check_differentiable_args(args, argnums_tuple)
        mode = current_mode()
        if mode == "mixflow":
            out = _mixed_value_and_grad(fun, argnums_tuple, has_aux, args)
        else:
            out = jax.value_and_grad(_checked_loss(fun, has_aux), argnums_tuple, has_aux)(*args)
        value, g = out
        g = g if isinstance(argnums, Sequence) else g[0]
        g = checkpoint_name(g, INNER_GRAD_NAME)
        return value, g

    return value_and_grad_fun


# ---------------------------------------------------------------------------------------------
# The mixed-mode node.


def _mixed_value_and_grad(
    fun: Callable[..., Any], argnums: tuple[int, ...], has_aux: bool, args: tuple[Any, ...]
) -> Any:
    checked = _checked_loss(fun, has_aux)
    # A custom VJP must not close over traced values it would have to differentiate, such as
    # meta-parameters captured by a lambda. closure_convert turns them into explicit inputs.
    converted, consts = jax.closure_convert(checked, *args)
    inputs = (*args, *consts)
    leaves_per_input = [jax.tree.flatten(x) for x in inputs]
    flat = [leaf for leaves, _ in leaves_per_input for leaf in leaves]
    treedefs = [treedef for _, treedef in leaves_per_input]
    offsets = np.cumsum([0] + [len(leaves) for leaves, _ in leaves_per_input])
    theta_idx = [i for a in argnums for i in range(offsets[a], offsets[a + 1])]
    float_idx = [i for i, leaf in enumerate(flat) if _is_float(leaf)]

    def call(leaves: Sequence[Any]) -> Any:
        rebuilt = [
            jax.tree.unflatten(treedefs[k], leaves[offsets[k] : offsets[k + 1]])
            for k in range(len(inputs))
        ]
        return converted(*rebuilt)

    def loss_only(leaves: Sequence[Any]) -> Any:
        out = call(leaves)
        return out[0] if has_aux else out

    def replace(leaves: Sequence[Any], idx: Sequence[int], values: Sequence[Any]) -> list[Any]:
        leaves = list(leaves)
        for i, v in zip(idx, values, strict=True):
            leaves[i] = v
        return leaves

    def primal(leaves: Sequence[Any]) -> tuple[Any, Any, Any]:
        theta = [leaves[i] for i in theta_idx]
        fn = lambda th: call(replace(leaves, theta_idx, th))  # noqa: E731
        (value, *aux), g = _split_value(jax.value_and_grad(fn, has_aux=has_aux)(theta), has_aux)
        return value, g, (aux[0] if has_aux else None)

    @jax.custom_vjp
    def node(*leaves: Any) -> tuple[Any, Any, Any]:
        return primal(leaves)

    def node_fwd(*primals: Any) -> tuple[Any, Any]:
        leaves = [p.value for p in primals]
        # Residuals: the inputs only. This is the whole memory saving.
        return primal(leaves), tuple(leaves)

    def node_bwd(leaves: tuple[Any, ...], cotangents: tuple[Any, Any, Any]) -> tuple[Any, ...]:
        ct_value, ct_grad, ct_aux = cotangents
        theta = [leaves[i] for i in theta_idx]
        tangent = [
            jnp.zeros_like(t) if _is_symbolic_zero(c) else c
            for t, c in zip(theta, ct_grad, strict=True)
        ]

        floats = [leaves[i] for i in float_idx]

        def grad_of_all_floats(th: list[Any]) -> list[Any]:
            current = replace(leaves, theta_idx, th)
            return jax.grad(lambda fl: loss_only(replace(current, float_idx, fl)))(
                [current[i] for i in float_idx]
            )

        def grad_of_theta(fl: list[Any]) -> list[Any]:
            current = replace(leaves, float_idx, fl)
            return jax.grad(lambda th: loss_only(replace(current, theta_idx, th)))(
                [current[i] for i in theta_idx]
            )

        try:
            grads, hvp = jax.jvp(grad_of_all_floats, (theta,), (tangent,))
        except (TypeError, NotImplementedError) as err:
            # Some operation has no forward-mode rule (typically a jax.custom_vjp whose backward
            # rule is itself custom-differentiated, as in fused attention kernels). Differentiate
            # this node in reverse mode instead: same values, just without the memory saving.
            _warn_fallback(fun, err)
            hvp = jax.vjp(grad_of_theta, floats)[1](tangent)[0]
            grads = jax.grad(lambda fl: loss_only(replace(leaves, float_idx, fl)))(floats)
        cts = list(hvp)
        if not _is_symbolic_zero(ct_value):
            cts = [c + ct_value * g for c, g in zip(cts, grads, strict=True)]
        if has_aux and not all(_is_symbolic_zero(c) for c in jax.tree.leaves(ct_aux)):
            _, aux_pullback = jax.vjp(lambda fl: call(replace(leaves, float_idx, fl))[1], floats)
            ct_aux = jax.tree.map(
                lambda c, a: jnp.zeros_like(a) if _is_symbolic_zero(c) else c,
                ct_aux,
                call(leaves)[1],
                is_leaf=_is_symbolic_zero,
            )
            cts = [c + a for c, a in zip(cts, aux_pullback(ct_aux)[0], strict=True)]
        by_leaf = dict(zip(float_idx, cts, strict=True))
        return tuple(by_leaf[i] if i in by_leaf else _float0_zeros(x) for i, x in enumerate(leaves))

    node.defvjp(node_fwd, node_bwd, symbolic_zeros=True)

    value, theta_grads, aux = node(*flat)
    per_arg = []
    position = 0
    for a in argnums:
        n = offsets[a + 1] - offsets[a]
        per_arg.append(jax.tree.unflatten(treedefs[a], theta_grads[position : position + n]))
        position += n
    return ((value, aux) if has_aux else value), tuple(per_arg)


# ---------------------------------------------------------------------------------------------
# Validation and small helpers.


def _checked_loss(fun: Callable[..., Any], has_aux: bool) -> Callable[..., Any]:
    """Wraps ``fun`` so that a non-scalar or non-float loss fails with a clear message."""

    def wrapped(*args: Any) -> Any:
        out = fun(*args)
        if has_aux and not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(
                "metagrad.grad(..., has_aux=True): fun must return a pair (loss, aux); got "
                f"{type(out).__name__}. Return (loss, aux), or set has_aux=False."
            )
        loss = out[0] if has_aux else out
        shape, dtype = jnp.shape(loss), jnp.result_type(loss)
        if shape != () or not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                "metagrad.grad: fun must return a scalar floating-point loss; got an output of "
                f"shape {shape} and dtype {dtype}. Reduce it to a scalar (e.g. jnp.mean) and make "
                "sure it is a float."
            )
        return out

    return wrapped


def _normalise_argnums(argnums: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(argnums, int) and not isinstance(argnums, bool):
        return (argnums,)
    if (
        isinstance(argnums, Sequence)
        and argnums
        and all(isinstance(a, int) and not isinstance(a, bool) for a in argnums)
    ):
        return tuple(argnums)
    raise TypeError(
        f"argnums must be an int or a non-empty tuple of ints; got {argnums!r}. "
        "Pass the position(s) of the argument(s) to differentiate, e.g. argnums=0 or (0, 1)."
    )


def _check_argnums_in_range(argnums: tuple[int, ...], n_args: int) -> None:
    for a in argnums:
        if not 0 <= a < n_args:
            raise ValueError(
                f"argnums={a} is out of range: the function was called with {n_args} positional "
                "argument(s). Use a non-negative index below that."
            )


def _check_differentiable_args(args: tuple[Any, ...], argnums: tuple[int, ...]) -> None:
    for a in argnums:
        for leaf in jax.tree.leaves(args[a]):
            if not _is_float(leaf):
                raise TypeError(
                    f"metagrad.grad: argument {a} (in argnums) must contain only floating-point "
                    f"arrays; found one of dtype {jnp.result_type(leaf)}. Cast it to a float "
                    "dtype, or pass integer data (labels, token ids) as another argument."
                )


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _is_symbolic_zero(x: Any) -> bool:
    return isinstance(x, custom_derivatives.SymbolicZero)


def _float0_zeros(x: Any) -> Any:
    if _is_float(x):
        return jnp.zeros_like(x)
    return np.zeros(np.shape(x), dtype=jax.dtypes.float0)


def _split_value(out: Any, has_aux: bool) -> tuple[list[Any], Any]:
    """``(value, g)`` or ``((value, aux), g)`` -> ``([value] or [value, aux], g)``."""
    value, g = out
    return ([value[0], value[1]] if has_aux else [value]), g


def _warn_fallback(fun: Callable[..., Any], err: Exception) -> None:
    name = getattr(fun, "__qualname__", repr(fun))
    if name in _warned_fallback:
        return
    _warned_fallback.add(name)
    warnings.warn(
        f"metagrad.grad: the loss {name!r} contains an operation without a forward-mode (JVP) "
        f"rule ({type(err).__name__}: {str(err).splitlines()[0]}). Its second-order products are "
        "computed in reverse mode instead (same values, no memory saving for this node). To get "
        "the saving, give that operation a jax.custom_jvp rule, or use its plain-JAX version "
        "(e.g. einsum attention instead of a fused kernel).",
        RuntimeWarning,
        stacklevel=3,
    )
