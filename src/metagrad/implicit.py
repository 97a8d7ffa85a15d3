"""Implicit meta-gradients: differentiate through the solution of the inner problem, not its path.

When the inner problem is solved (to a tolerance), its solution θ* satisfies an optimality
condition ``F(θ*, η) = 0``; by the implicit function theorem, for an outer objective ``V(θ*, η)``

    solve   Aᵀ w = ∇_θ V(θ*, η)          with A = ∂_θ F(θ*, η)
    ∇_η V = ∂_η V − (∂_η F)ᵀ w

One linear solve replaces the backward pass through the inner trajectory: time and memory do not
depend on how many steps the inner solver took, and the solver itself is never differentiated.

Three ways to state the condition, each a function that returns the solution unchanged in the
forward pass and carries the implicit derivative in its VJP:

* ``argmin_solution(inner_loss, θ*, *args)``: ``F = ∇_θ inner_loss`` (θ* minimises the loss).
  ``A`` is the Hessian (symmetric): the default solver is conjugate gradient, and every product
  (``H w`` and the mixed ``∇²_ηθ L · w``) is computed forward-over-reverse (``jax.jvp`` of
  ``jax.grad``), the cheapest way to get them, as in metagrad's mixed-mode node.
* ``root_solution(optimality_fn, θ*, *args)``: any ``F`` (non-symmetric ``A``: GMRES by default).
  The transposed products ``Aᵀ w`` are vector-Jacobian products (reverse mode).
* ``fixed_point_solution(phi, θ*, *args)``: ``θ* = Φ(θ*, η)``, i.e. ``F = θ − Φ(θ, η)``.

Every floating-point argument in ``args`` (and every traced value the function closes over) gets
its implicit cotangent; the solution itself gets none (it is a function of ``args`` only).
``argmin_vjp`` / ``root_vjp`` compute the same cotangents explicitly and also return the
``SolveInfo`` (residual) of the linear solve; ``solve_linear`` is the matrix-free solver they use.
``metagrad.Bilevel(method="implicit")`` uses ``argmin_solution`` around its own inner loop.

References:
  Rajeswaran, Finn, Kakade, Levine. *Meta-Learning with Implicit Gradients*, NeurIPS 2019 (iMAML:
  proximal inner problem, conjugate gradient).
  Lorraine, Vicol, Duvenaud. *Optimizing Millions of Hyperparameters by Implicit
  Differentiation*, AISTATS 2020 (Neumann series approximation of the inverse Hessian).
  Blondel, Berthet, Cuturi, Frostig, Hoyer, Llinares-López, Pedregosa, Vert. *Efficient and
  Modular Implicit Differentiation*, NeurIPS 2022 (JAXopt: ``custom_root``, ``custom_fixed_point``,
  matrix-free CG / GMRES / BiCGSTAB).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.sparse.linalg as sparse
import numpy as np
import optax

from metagrad.treecheck import require_floating_leaves

Pytree = Any

SOLVERS: tuple[str, ...] = ("cg", "neumann", "gmres", "bicgstab")
NEGATIVE_CURVATURE: tuple[str, ...] = ("continue", "stop")


@dataclasses.dataclass(frozen=True)
class ImplicitConfig:
    """How the linear system of an implicit meta-gradient is solved.

    Attributes:
      solver: ``"cg"`` (conjugate gradient: symmetric positive-definite systems, e.g. the Hessian
        at a minimum), ``"neumann"`` (truncated Neumann series ``α Σ_{k<maxiter} (I − αA)^k``),
        ``"gmres"`` or ``"bicgstab"`` (non-symmetric systems). ``None`` (default): ``"cg"`` for
        ``argmin_*``, ``"gmres"`` for ``root_*`` / ``fixed_point_*``.
      maxiter: iterations of the solver (Neumann: number of series terms; GMRES: total Krylov
        vectors, in restarts of at most ``restart``).
      tol: relative tolerance: the solve has converged when ``‖b − (A + damping·I) x‖ ≤ tol·‖b‖``.
        (The Neumann series runs all ``maxiter`` terms; ``tol`` only decides the warning.)
      damping: ridge ``δ ≥ 0``: the system solved is ``(A + δI) x = b``. Regularises an
        ill-conditioned or indefinite Hessian (at the price of a biased meta-gradient).
      neumann_alpha: step ``α`` of the Neumann series; it converges when ``‖I − αA‖ < 1``, e.g.
        ``0 < α < 2/λ_max`` for a positive-definite ``A``. Default 1 (natural for fixed points,
        where ``A = I − ∂Φ``).
      restart: GMRES restart length.
      warn: warn (with the residual) when the solve did not converge. Set ``False`` where a
        truncated solve is intended (iMAML's 5 CG steps).
      negative_curvature: what conjugate gradient does when it meets a direction ``p`` with
        ``pᵀ(A + δI)p ≤ 0`` (the system is not positive definite: θ* is not a minimum, or the
        damping is too small), where its step is undefined and its iterates stop approaching
        anything: ``"continue"`` (default; plain CG) or ``"stop"``: return the iterate before
        that direction (truncated CG, as Newton-CG and Steihaug's trust-region CG do; before
        any step, ``b`` itself). Either way ``SolveInfo.negative_curvature`` reports it.
      max_gain: bound on the solution's norm, ``‖x‖ ≤ max_gain · ‖b‖``; a larger solution is
        rescaled to it (its direction kept) and ``SolveInfo.capped`` says so. ``None``
        (default): no bound. For ``A + δI ⪰ μI`` the exact solution has ``‖x‖ ≤ ‖b‖/μ``; a
        solve that amplifies far more has met a near-singular or indefinite system, and its
        solution is dominated by the few directions of smallest ``|eigenvalue|`` (one such
        task's meta-gradient can outweigh a whole meta-batch).

    Examples:
      >>> import metagrad
      >>> metagrad.ImplicitConfig(solver="cg", maxiter=50, tol=1e-8, damping=1e-3).solver
      'cg'
    """

    solver: str | None = None
    maxiter: int = 100
    tol: float = 1e-6
    damping: float = 0.0
    neumann_alpha: float = 1.0
    restart: int = 20
    warn: bool = True
    negative_curvature: str = "continue"
    max_gain: float | None = None

    def __post_init__(self) -> None:
        if self.solver is not None and self.solver not in SOLVERS:
            raise ValueError(
                f"ImplicitConfig: solver must be one of {', '.join(SOLVERS)} (or None for the "
                f"default); got {self.solver!r}."
            )
        for name in ("maxiter", "restart"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ImplicitConfig: {name} must be a positive int; got {value!r}.")
        for name in ("tol", "damping"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"ImplicitConfig: {name} must be a number >= 0; got {value!r}.")
        alpha = self.neumann_alpha
        if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not alpha > 0:
            raise ValueError(f"ImplicitConfig: neumann_alpha must be > 0; got {alpha!r}.")
        if not isinstance(self.warn, bool):
            raise TypeError(f"ImplicitConfig: warn must be a bool; got {self.warn!r}.")
        if self.negative_curvature not in NEGATIVE_CURVATURE:
            raise ValueError(
                "ImplicitConfig: negative_curvature must be one of "
                f"{', '.join(NEGATIVE_CURVATURE)}; got {self.negative_curvature!r}."
            )
        gain = self.max_gain
        if gain is not None and not (
            isinstance(gain, int | float) and not isinstance(gain, bool) and 0 < gain < math.inf
        ):
            raise ValueError(
                f"ImplicitConfig: max_gain must be a finite number > 0 (or None); got {gain!r}."
            )
        if self.negative_curvature == "stop" and self.solver not in (None, "cg"):
            raise ValueError(
                "ImplicitConfig: negative_curvature='stop' needs solver='cg' (the only solver "
                f"that sees the curvature of its directions); got solver={self.solver!r}."
            )

    def with_default_solver(self, solver: str) -> ImplicitConfig:
        """This configuration with ``solver`` filled in if it was left ``None``."""
        return self if self.solver is not None else dataclasses.replace(self, solver=solver)


class SolveInfo(NamedTuple):
    """What a linear solve reports.

    Attributes:
      residual: ``‖b − (A + δI) x‖``, measured with one extra product after the solve.
      relative_residual: ``residual / ‖b‖`` (0 when ``b = 0``).
      converged: ``relative_residual ≤ tol``.
      negative_curvature: conjugate gradient met a direction ``p`` with ``pᵀ(A + δI)p ≤ 0``:
        the system is not positive definite (always False for the other solvers, which do not
        see it).
      capped: the solution was rescaled to ``ImplicitConfig.max_gain · ‖b‖`` (the residual is
        that of the solver's own solution).
    """

    residual: jax.Array
    relative_residual: jax.Array
    converged: jax.Array
    negative_curvature: jax.Array
    capped: jax.Array


# ---------------------------------------------------------------------------------------------
# Matrix-free linear solvers.


def solve_linear(
    matvec: Callable[[Pytree], Pytree], b: Pytree, config: ImplicitConfig | None = None
) -> tuple[Pytree, SolveInfo]:
    """Solves ``(A + δI) x = b`` for a matrix-free ``A`` on pytrees.

    Args:
      matvec: ``v -> A v`` (a pytree like ``b``).
      b: the right-hand side, any pytree of floating-point arrays.
      config: solver, iterations, tolerance and damping ``δ``; default ``ImplicitConfig()`` with
        conjugate gradient.

    Returns:
      ``(x, info)``: the solution (structured like ``b``) and its :class:`SolveInfo`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import metagrad
      >>> a = jnp.array([[4.0, 1.0], [1.0, 3.0]])
      >>> x, info = metagrad.solve_linear(lambda v: a @ v, jnp.array([1.0, 2.0]))
      >>> [round(float(v), 4) for v in x], bool(info.converged)
      ([0.0909, 0.6364], True)
    """
    config = (config or ImplicitConfig()).with_default_solver("cg")
    damping = config.damping

    def damped(v: Pytree) -> Pytree:
        av = matvec(v)
        return av if damping == 0 else _axpy(damping, v, av)

    negative = jnp.zeros((), bool)
    if config.solver == "cg":
        x, negative = _cg(
            damped, b, config.tol, config.maxiter, stop=config.negative_curvature == "stop"
        )
    elif config.solver == "bicgstab":
        x, _ = sparse.bicgstab(damped, b, tol=config.tol, atol=0.0, maxiter=config.maxiter)
    elif config.solver == "gmres":
        restart = min(config.restart, config.maxiter)
        x, _ = sparse.gmres(
            damped,
            b,
            tol=config.tol,
            atol=0.0,
            restart=restart,
            maxiter=math.ceil(config.maxiter / restart),
            solve_method="batched",
        )
    else:
        x = _neumann(damped, b, config.neumann_alpha, config.maxiter)
    residual = optax.tree_utils.tree_norm(_axpy(-1.0, damped(x), b))
    b_norm = optax.tree_utils.tree_norm(b)
    relative = jnp.where(b_norm > 0, residual / jnp.where(b_norm > 0, b_norm, 1.0), residual)
    capped = jnp.zeros((), bool)
    if config.max_gain is not None:
        x_norm = optax.tree_utils.tree_norm(x)
        bound = config.max_gain * b_norm
        capped = x_norm > bound
        scale = jnp.where(capped, bound / jnp.where(capped, x_norm, 1.0), 1.0)
        x = jax.tree.map(lambda leaf: leaf * scale.astype(leaf.dtype), x)
    return x, SolveInfo(residual, relative, relative <= config.tol, negative, capped)


def _cg(
    matvec: Callable[[Pytree], Pytree], b: Pytree, tol: float, maxiter: int, *, stop: bool
) -> tuple[Pytree, jax.Array]:
    """Conjugate gradient from ``x = 0`` on pytrees (Hestenes & Stiefel 1952), until
    ``‖r‖ ≤ tol ‖b‖`` or ``maxiter`` steps; also returns whether a direction of non-positive
    curvature was met, and with ``stop`` returns the iterate before it (``b`` before any step;
    Nocedal & Wright, *Numerical Optimization*, Algorithm 7.1). Written out rather than
    ``jax.scipy.sparse.linalg.cg``, which does not expose the curvature ``pᵀAp``."""
    rs0 = optax.tree_utils.tree_vdot(b, b)
    threshold = tol**2 * rs0

    def cond(state: tuple[Any, ...]) -> jax.Array:
        k, _, _, _, rs, _, halted = state
        return (k < maxiter) & (rs > threshold) & ~halted

    def body(state: tuple[Any, ...]) -> tuple[Any, ...]:
        k, x, r, p, rs, negative, _ = state
        ap = matvec(p)
        curvature = optax.tree_utils.tree_vdot(p, ap)
        bad = curvature <= 0
        alpha = rs / jnp.where(curvature == 0, 1.0, curvature)
        x_next = _axpy(alpha, p, x)
        r_next = _axpy(-alpha, ap, r)
        rs_next = optax.tree_utils.tree_vdot(r_next, r_next)
        p_next = _axpy(rs_next / rs, p, r_next)
        halted = bad & stop
        if stop:  # keep the iterate before the bad direction (b itself before any step)
            fallback = jax.tree.map(lambda xi, bi: jnp.where(k == 0, bi, xi), x, b)
            x_next = jax.tree.map(lambda a, c: jnp.where(bad, c, a), x_next, fallback)
        return k + 1, x_next, r_next, p_next, rs_next, negative | bad, halted

    zeros = jax.tree.map(jnp.zeros_like, b)
    init = (jnp.zeros((), jnp.int32), zeros, b, b, rs0, jnp.zeros((), bool), jnp.zeros((), bool))
    _, x, _, _, _, negative, _ = jax.lax.while_loop(cond, body, init)
    return x, negative


def _neumann(matvec: Callable[[Pytree], Pytree], b: Pytree, alpha: float, terms: int) -> Pytree:
    """``α Σ_{k<terms} (I − αA)^k b``: error ``(I − αA)^terms x*`` (Lorraine et al. 2020)."""

    def body(_: int, carry: tuple[Pytree, Pytree]) -> tuple[Pytree, Pytree]:
        total, term = carry
        total = jax.tree.map(jnp.add, total, term)
        term = _axpy(-alpha, matvec(term), term)
        return total, term

    total, _ = jax.lax.fori_loop(0, terms, body, (jax.tree.map(jnp.zeros_like, b), b))
    return jax.tree.map(lambda t: alpha * t, total)


# ---------------------------------------------------------------------------------------------
# Explicit implicit VJPs (with the solve's residual).


def argmin_vjp(
    inner_loss: Callable[..., jax.Array],
    solution: Pytree,
    args: tuple[Any, ...],
    cotangent: Pytree,
    config: ImplicitConfig | None = None,
) -> tuple[tuple[Any, ...], SolveInfo]:
    """The implicit VJP of ``θ*(args) = argmin_θ inner_loss(θ, *args)``.

    Solves ``(H + δI) w = cotangent`` with ``H = ∇²_θθ L(θ*, args)`` and returns
    ``−(∇²_{args,θ} L) w`` for the floating-point leaves of ``args`` (zeros of dtype ``float0``
    for the others). Every product is forward-over-reverse: ``jax.jvp`` of ``jax.grad``, in
    the direction ``w`` of θ.

    Args:
      inner_loss: ``(params, *args) -> scalar``, minimised by ``solution``.
      solution: θ*, the (approximate) minimiser; not differentiated.
      args: the other arguments of ``inner_loss`` (meta-parameters, batches), a tuple.
      cotangent: ``∇_θ V(θ*)``, structured like ``solution``.
      config: the linear solve (default: conjugate gradient).

    Returns:
      ``(cotangents of args, info)``.

    References:
      Rajeswaran et al., NeurIPS 2019; Blondel et al., NeurIPS 2022.
    """
    config = (config or ImplicitConfig()).with_default_solver("cg")
    args = _as_args(args, "argmin_vjp")
    _check_scalar_loss(inner_loss, solution, args, "argmin_vjp")
    _check_like(cotangent, solution, "argmin_vjp: cotangent", "solution")
    grad_theta = jax.grad(inner_loss)
    _, hvp = jax.linearize(lambda th: grad_theta(th, *args), solution)
    w, info = solve_linear(hvp, cotangent, config)
    floats, rebuild = _float_split(args)

    def grad_of_args(th: Pytree) -> list[Any]:
        return jax.grad(lambda fl: inner_loss(th, *rebuild(fl)))(floats)

    _, mixed = jax.jvp(grad_of_args, (solution,), (w,))
    return _cotangents(args, floats, [-m for m in mixed]), info


def root_vjp(
    optimality_fn: Callable[..., Pytree],
    solution: Pytree,
    args: tuple[Any, ...],
    cotangent: Pytree,
    config: ImplicitConfig | None = None,
) -> tuple[tuple[Any, ...], SolveInfo]:
    """The implicit VJP of the root θ*(args) of ``optimality_fn(θ, *args) = 0``.

    Solves ``(∂_θ F + δI)ᵀ w = cotangent`` and returns ``−(∂_args F)ᵀ w`` for the floating-point
    leaves of ``args``. The transposed products are VJPs (reverse mode); when ``F`` is the
    gradient of a loss, ``argmin_vjp`` gets them forward-over-reverse instead.

    Args:
      optimality_fn: ``(params, *args) -> F``, structured like ``params``; zero at the solution.
      solution: θ*, a root; not differentiated.
      args: the other arguments of ``optimality_fn``, a tuple.
      cotangent: ``∇_θ V(θ*)``, structured like ``solution``.
      config: the linear solve (default: GMRES).

    Returns:
      ``(cotangents of args, info)``.

    References:
      Blondel et al., NeurIPS 2022 (``custom_root``).
    """
    config = (config or ImplicitConfig()).with_default_solver("gmres")
    args = _as_args(args, "root_vjp")
    _check_optimality_output(optimality_fn, solution, args, "root_vjp")
    _check_like(cotangent, solution, "root_vjp: cotangent", "solution")
    _, vjp_theta = jax.vjp(lambda th: optimality_fn(th, *args), solution)
    w, info = solve_linear(lambda u: vjp_theta(u)[0], cotangent, config)
    floats, rebuild = _float_split(args)
    _, vjp_args = jax.vjp(lambda fl: optimality_fn(solution, *rebuild(fl)), floats)
    (ct_floats,) = vjp_args(w)
    return _cotangents(args, floats, [-c for c in ct_floats]), info


# ---------------------------------------------------------------------------------------------
# Differentiable solutions.


def argmin_solution(
    inner_loss: Callable[..., jax.Array],
    solution: Pytree,
    *args: Any,
    config: ImplicitConfig | None = None,
) -> Pytree:
    """``solution``, differentiable in ``args`` as the minimiser of ``inner_loss(θ, *args)``.

    Run any inner solver without differentiation (e.g. under ``jax.lax.stop_gradient``), then pass
    its result here: the returned value equals ``solution``, and its VJP is the implicit one
    (:func:`argmin_vjp`), computed with forward-over-reverse Hessian- and mixed-vector products.
    Memory does not depend on the inner solver's number of steps.

    Args:
      inner_loss: ``(params, *args) -> scalar``. It may close over traced values (they are
        hoisted and differentiated like ``args``).
      solution: the (approximate) minimiser θ*, a pytree of floating-point arrays.
      *args: meta-parameters, batches, ... (every floating-point leaf gets its implicit
        cotangent).
      config: the linear solve (default: conjugate gradient, 100 iterations, tol 1e-6). A solve
        that does not reach ``tol`` warns with its residual (``config.warn``).

    Returns:
      ``solution`` (same values), differentiable in ``args``.

    Examples:
      Ridge regression with per-feature L2 strengths ``exp(η)``, solved in closed form; the
      gradient of a validation loss through the solution:

      >>> import jax, jax.numpy as jnp
      >>> import metagrad
      >>> x, y = jnp.array([[1.0, 0.5], [0.2, 1.0], [0.3, -0.4]]), jnp.array([1.0, 0.0, 2.0])
      >>> def inner(w, eta):
      ...     return 0.5 * jnp.sum((x @ w - y) ** 2) + 0.5 * jnp.sum(jnp.exp(eta) * w**2)
      >>> def solve(eta):
      ...     return jnp.linalg.solve(x.T @ x + jnp.diag(jnp.exp(eta)), x.T @ y)
      >>> def val(eta):
      ...     w = metagrad.argmin_solution(inner, jax.lax.stop_gradient(solve(eta)), eta)
      ...     return jnp.sum((w - 1.0) ** 2)
      >>> def exact(eta):
      ...     return jnp.sum((solve(eta) - 1.0) ** 2)
      >>> eta = jnp.zeros(2)
      >>> bool(jnp.allclose(jax.grad(val)(eta), jax.grad(exact)(eta), rtol=1e-4))
      True

    References:
      Rajeswaran et al., NeurIPS 2019; Blondel et al., NeurIPS 2022.
    """
    return _solution(
        "argmin_solution", inner_loss, solution, args, config, "cg", _check_scalar_loss, argmin_vjp
    )


def root_solution(
    optimality_fn: Callable[..., Pytree],
    solution: Pytree,
    *args: Any,
    config: ImplicitConfig | None = None,
) -> Pytree:
    """``solution``, differentiable in ``args`` as a root of ``optimality_fn(θ, *args) = 0``.

    As :func:`argmin_solution` for a general optimality condition (e.g. a KKT system, or a
    gradient with a preconditioner). The VJP is :func:`root_vjp`.

    Args:
      optimality_fn: ``(params, *args) -> F``, structured like ``params``.
      solution: the root θ*, a pytree of floating-point arrays.
      *args: meta-parameters, batches, ...
      config: the linear solve (default: GMRES).

    Returns:
      ``solution``, differentiable in ``args``.

    References:
      Blondel et al., NeurIPS 2022 (``custom_root``).
    """
    return _solution(
        "root_solution", optimality_fn, solution, args, config, "gmres", _check_optimality_output,
        root_vjp,
    )  # fmt: skip


def fixed_point_solution(
    phi: Callable[..., Pytree],
    solution: Pytree,
    *args: Any,
    config: ImplicitConfig | None = None,
) -> Pytree:
    """``solution``, differentiable in ``args`` as a fixed point ``θ* = phi(θ*, *args)``.

    The root of ``F(θ) = θ − phi(θ, *args)``: the system is ``(I − ∂_θ phi)ᵀ w = cotangent``.
    With ``solver="neumann"`` and ``neumann_alpha=1`` this is the series
    ``Σ_k (∂_θ phiᵀ)^k cotangent``, which converges when ``phi`` is a contraction.

    Args:
      phi: ``(params, *args) -> params``.
      solution: the fixed point θ*.
      *args: meta-parameters, batches, ...
      config: the linear solve (default: GMRES).

    Returns:
      ``solution``, differentiable in ``args``.

    References:
      Blondel et al., NeurIPS 2022 (``custom_fixed_point``).
    """

    def residual_fn(theta: Pytree, *a: Any) -> Pytree:
        return jax.tree.map(jnp.subtract, theta, phi(theta, *a))

    def check_phi(fn: Callable[..., Any], theta: Pytree, a: Any, where: str) -> None:
        del fn  # phi's own output is checked: a mismatch would fail inside residual_fn first
        _check_optimality_output(phi, theta, a, where)

    return _solution(
        "fixed_point_solution", residual_fn, solution, args, config, "gmres", check_phi, root_vjp
    )


def _solution(
    where: str,
    fn: Callable[..., Any],
    solution: Pytree,
    args: tuple[Any, ...],
    config: ImplicitConfig | None,
    default_solver: str,
    check_fn: Callable[[Callable[..., Any], Pytree, Any, str], None],
    vjp_rule: Callable[..., tuple[tuple[Any, ...], SolveInfo]],
) -> Pytree:
    # The common body of the three public solutions: checks first (a clear error before any
    # tracing), then closure conversion so that values ``fn`` closes over get cotangents too.
    config = (config or ImplicitConfig()).with_default_solver(default_solver)
    _check_float_solution(solution, where)
    check_fn(fn, solution, args, where)
    converted, consts = jax.closure_convert(fn, solution, *args)
    return _implicit_node(converted, config, vjp_rule)(solution, (*args, *consts))


def _implicit_node(
    fn: Callable[..., Any],
    config: ImplicitConfig,
    vjp_rule: Callable[..., tuple[tuple[Any, ...], SolveInfo]],
) -> Callable[[Pytree, tuple[Any, ...]], Pytree]:
    @jax.custom_vjp
    def node(solution: Pytree, args: tuple[Any, ...]) -> Pytree:
        return solution

    def node_fwd(solution: Pytree, args: tuple[Any, ...]) -> tuple[Pytree, Any]:
        return solution, (solution, args)

    def node_bwd(res: Any, cotangent: Pytree) -> tuple[Pytree, tuple[Any, ...]]:
        solution, args = res
        ct_args, info = vjp_rule(fn, solution, args, cotangent, config)
        if config.warn:
            jax.debug.callback(
                functools.partial(_warn_not_converged, config=config),
                info.residual,
                info.relative_residual,
                info.negative_curvature,
            )
        # θ* is a function of args only: the solver's own path gets no cotangent.
        return jax.tree.map(jnp.zeros_like, solution), ct_args

    node.defvjp(node_fwd, node_bwd)
    return lambda solution, args: node(jax.lax.stop_gradient(solution), args)


def _warn_not_converged(
    residual: Any, relative: Any, negative: Any, *, config: ImplicitConfig
) -> None:
    relative = np.asarray(relative)
    if not np.all(relative <= config.tol):
        curvature = (
            " Conjugate gradient met a direction of non-positive curvature: the system is not "
            "positive definite (the inner solution is not a minimum there)."
            if np.any(np.asarray(negative))
            else ""
        )
        warnings.warn(
            f"metagrad.implicit: the {config.solver} solve of the implicit meta-gradient did not "
            f"converge in maxiter={config.maxiter} iterations: relative residual "
            f"{float(np.max(relative)):.3g} > tol={config.tol:g} (residual "
            f"{float(np.max(np.asarray(residual))):.3g}).{curvature} The meta-gradient is "
            "approximate. Raise maxiter, add damping (an ill-conditioned or indefinite Hessian), "
            "solve the inner problem more accurately, or set ImplicitConfig(warn=False) if a "
            "truncated solve is intended.",
            RuntimeWarning,
            stacklevel=_user_stacklevel(),
        )


def _user_stacklevel() -> int:
    """``warnings.warn``'s stacklevel, for the function that calls this one, that points at the
    first frame outside JAX and metagrad: the warning is raised inside a ``jax.debug.callback``,
    and would otherwise name a line of JAX's own source. Falls back to the direct caller when
    the callback runs on a thread without user frames."""
    internal = tuple(
        os.path.dirname(module.__file__ or "") + os.sep
        for module in (jax, sys.modules[__package__])
    )
    frame: types.FrameType | None = sys._getframe(2)
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(internal):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 2


# ---------------------------------------------------------------------------------------------
# Validation and pytree helpers.


def _as_args(args: Any, where: str) -> tuple[Any, ...]:
    if not isinstance(args, tuple):
        raise TypeError(
            f"{where}: args must be a tuple of the function's other arguments; got "
            f"{type(args).__name__}. Wrap a single argument as (meta,)."
        )
    return args


def _check_float_solution(solution: Pytree, where: str) -> None:
    require_floating_leaves(
        solution, name="solution", where=where,
        hint="Keep integer state out of the solution (pass it in args).",
    )  # fmt: skip


def _check_scalar_loss(loss: Callable[..., Any], solution: Pytree, args: Any, where: str) -> None:
    out = jax.eval_shape(loss, solution, *args)
    if not (
        isinstance(out, jax.ShapeDtypeStruct)
        and out.shape == ()
        and jnp.issubdtype(out.dtype, jnp.floating)
    ):
        raise TypeError(
            f"{where}: inner_loss must return a scalar floating-point loss; got {out}. Reduce it "
            "(e.g. jnp.mean), or use root_solution for a vector-valued optimality condition."
        )


def _check_optimality_output(
    fn: Callable[..., Any], solution: Pytree, args: Any, where: str
) -> None:
    out = jax.eval_shape(fn, solution, *args)
    _check_like(out, solution, f"{where}: the function's output", "solution")


def _check_like(value: Pytree, reference: Pytree, name: str, ref_name: str) -> None:
    """``value`` must have the tree structure and leaf shapes of ``reference``."""
    v_leaves, v_def = jax.tree.flatten(value)
    r_leaves, r_def = jax.tree.flatten(reference)
    if str(v_def) != str(r_def):  # (PyTreeDef is typed without __eq__)
        raise ValueError(
            f"{name} must have the pytree structure of {ref_name}: expected {r_def}, got {v_def}. "
            f"Return one entry per leaf of {ref_name}, in the same containers."
        )
    for k, (v, r) in enumerate(zip(v_leaves, r_leaves, strict=True)):
        if jnp.shape(v) != jnp.shape(r):
            raise ValueError(
                f"{name}: leaf {k} has shape {jnp.shape(v)}, but that leaf of {ref_name} has "
                f"shape {jnp.shape(r)}. Each leaf must match {ref_name}'s leaf in shape."
            )


def _is_float(x: Any) -> bool:
    return bool(jnp.issubdtype(jnp.result_type(x), jnp.inexact))


def _float_split(args: tuple[Any, ...]) -> tuple[list[Any], Callable[[list[Any]], tuple[Any, ...]]]:
    """The floating-point leaves of ``args`` and a function that puts new ones back in."""
    leaves, treedef = jax.tree.flatten(args)
    idx = [i for i, leaf in enumerate(leaves) if _is_float(leaf)]

    def rebuild(floats: list[Any]) -> tuple[Any, ...]:
        new = list(leaves)
        for i, f in zip(idx, floats, strict=True):
            new[i] = f
        return tuple(jax.tree.unflatten(treedef, new))

    return [leaves[i] for i in idx], rebuild


def _cotangents(args: tuple[Any, ...], floats: list[Any], cts: list[Any]) -> tuple[Any, ...]:
    """Cotangents of ``args``: ``cts`` for the float leaves, ``float0`` zeros for the others."""
    leaves, treedef = jax.tree.flatten(args)
    it = iter(cts)
    out = [
        next(it) if _is_float(leaf) else np.zeros(np.shape(leaf), dtype=jax.dtypes.float0)
        for leaf in leaves
    ]
    return tuple(jax.tree.unflatten(treedef, out))


def _axpy(a: float, x: Pytree, y: Pytree) -> Pytree:
    return jax.tree.map(lambda xi, yi: a * xi + yi, x, y)
