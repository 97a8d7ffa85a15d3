"""Matrix functions shared by K-FAC and Shampoo: damped inverses, inverse roots, preconditioning.

Every function works on a symmetric positive semi-definite matrix (a Kronecker factor or a
Shampoo statistic) or a stack of same-shaped ones (one batched call), and is written for
``jax.jit``: no Python-level branching on values. :func:`inverse_roots` and
:func:`damped_inverses` group a list of matrices by shape and make one batched call per group.

``method="auto"`` picks the method by backend and size (:func:`resolve_root_method`): the
eigendecomposition (or Cholesky) on CPU, the matmul-only coupled Newton iteration on GPU and TPU.
The Newton iteration runs in the matrix's dtype for a bounded number of steps, is checked against
its target (``max |H^p A - I|``), and a matrix that fails the check is recomputed by ``eigh``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from metagrad.validation import require_one_of

Array = jax.Array

INVERSE_METHODS = ("auto", "cholesky", "eigh", "newton")
ROOT_METHODS = ("auto", "eigh", "newton")

# The "auto" rule (see resolve_root_method). On CPU (2-core XLA/LAPACK, OPENBLAS_NUM_THREADS=1,
# measured with benchmarks/root_methods.py) an eigendecomposition beat the coupled Newton
# iteration at every size from 32 to 1024; on GPU and TPU eigendecompositions are slow (an H200
# spent 67-74 ms per Shampoo refresh of 7 roots of size 784-1024 with eigh) while the Newton
# iteration is matmuls only.
_MATMUL_BACKENDS = ("gpu", "cuda", "rocm", "tpu")
# Below this size a matrix function is too small for the accelerator to matter, and the
# eigendecomposition is exact: "auto" keeps eigh there on every backend.
AUTO_NEWTON_MIN_SIZE = 64


def resolve_root_method(method: str, size: int, backend: str | None = None) -> str:
    """The method ``"auto"`` stands for, for a ``size x size`` matrix on ``backend``.

    Rule: ``"newton"`` (matmuls only) on GPU and TPU for matrices of at least
    ``AUTO_NEWTON_MIN_SIZE`` rows, ``"eigh"`` otherwise (always on CPU, where an
    eigendecomposition was measured faster at every size; see ``docs/width.md``).

    Args:
      method: ``"auto"``, ``"eigh"`` or ``"newton"``; only ``"auto"`` is resolved.
      size: the matrix's side.
      backend: ``jax.default_backend()`` when ``None``.

    Returns:
      ``"eigh"`` or ``"newton"``.

    >>> resolve_root_method("auto", 1024, backend="cpu")
    'eigh'
    >>> resolve_root_method("auto", 1024, backend="gpu")
    'newton'
    >>> resolve_root_method("auto", 16, backend="tpu")
    'eigh'
    """
    return _resolve("root method", method, ROOT_METHODS, "eigh", size, backend)


def resolve_inverse_method(method: str, size: int, backend: str | None = None) -> str:
    """The method ``"auto"`` stands for in :func:`damped_inverse`.

    ``"newton"`` (the Newton-Schulz iteration, ``p = 1``) on GPU and TPU for matrices of at least
    ``AUTO_NEWTON_MIN_SIZE`` rows, ``"cholesky"`` otherwise.

    >>> resolve_inverse_method("auto", 1024, backend="cpu")
    'cholesky'
    >>> resolve_inverse_method("auto", 1024, backend="tpu")
    'newton'
    """
    return _resolve("inverse method", method, INVERSE_METHODS, "cholesky", size, backend)


def _resolve(
    what: str, method: str, choices: tuple[str, ...], exact: str, size: int, backend: str | None
) -> str:
    # One "auto" rule for roots and inverses: the matmul-only iteration where eigendecompositions
    # and factorisations are slow (accelerators) and the matrix is big enough to matter.
    require_one_of(what, method, choices)
    if method != "auto":
        return method
    backend = jax.default_backend() if backend is None else backend
    if backend in _MATMUL_BACKENDS and size >= AUTO_NEWTON_MIN_SIZE:
        return "newton"
    return exact


def _symmetrize(mat: Array) -> Array:
    # Factors are symmetric in exact arithmetic; rounding in aᵀa can break that slightly, and both
    # eigh and Cholesky read only one triangle, so make the two agree first.
    return 0.5 * (mat + jnp.swapaxes(mat, -1, -2))


def _eye_like(mat: Array) -> Array:
    return jnp.eye(mat.shape[-1], dtype=mat.dtype)


def _eigh_inverse(mat: Array, damping: Array) -> Array:
    w, q = jnp.linalg.eigh(mat)
    w = jnp.maximum(w, 0.0)
    return (q / (w + damping[..., None])[..., None, :]) @ jnp.swapaxes(q, -1, -2)


def _cholesky_inverse(mat: Array, damping: Array) -> Array:
    eye = _eye_like(mat)
    chol = jnp.linalg.cholesky(mat + damping[..., None, None] * eye)
    # (L Lᵀ)^-1 = L^-ᵀ L^-1: one triangular solve and one matmul; measured faster on CPU than
    # cho_solve against the identity (two triangular solves with d right-hand sides).
    chol_inv = jax.scipy.linalg.solve_triangular(
        chol, jnp.broadcast_to(eye, chol.shape), lower=True
    )
    inv = jnp.swapaxes(chol_inv, -1, -2) @ chol_inv
    return lax.cond(jnp.all(jnp.isfinite(inv)), lambda: inv, lambda: _eigh_inverse(mat, damping))


def damped_inverse(
    mat: Array,
    damping: Array | float,
    method: str = "cholesky",
    *,
    newton_max_iters: int = 100,
    newton_tol: float | None = None,
    check_tol: float | None = None,
) -> Array:
    """``(mat + damping * I)^-1`` for a symmetric positive semi-definite ``mat``.

    Args:
      mat: a ``(d, d)`` symmetric PSD matrix, or a stack ``(n, d, d)`` of them (one batched call;
        ``damping`` then has shape ``(n,)`` or is a scalar).
      damping: a positive scalar added to the diagonal.
      method: ``"cholesky"`` (fast on CPU; falls back to ``"eigh"`` if the factorisation produced
        non-finite values, which rounding can cause when ``damping`` is tiny), ``"eigh"``
        (eigenvalues below zero, from rounding, are clipped to zero first), ``"newton"`` (the
        Newton-Schulz iteration, matmuls only, checked and falling back to ``"eigh"``; see
        :func:`inverse_root`) or ``"auto"`` (:func:`resolve_inverse_method`).
      newton_max_iters: see :func:`inverse_root`.
      newton_tol: see :func:`inverse_root`.
      check_tol: see :func:`inverse_root`.

    Returns:
      The inverse, shaped like ``mat``.
    """
    if method not in INVERSE_METHODS:
        raise ValueError(f"inverse method must be one of {INVERSE_METHODS}; got {method!r}.")
    mat = _symmetrize(mat)
    single = mat.ndim == 2
    stack = mat[None] if single else mat
    damping = jnp.broadcast_to(jnp.asarray(damping, mat.dtype), stack.shape[:1])
    method = resolve_inverse_method(method, mat.shape[-1])
    if method == "eigh":
        out = _eigh_inverse(stack, damping)
    elif method == "cholesky":
        out = _cholesky_inverse(stack, damping)
    else:
        a = stack + damping[:, None, None] * _eye_like(stack)
        largest = jax.vmap(largest_eigenvalue)(stack)
        out = _checked_newton(
            a,
            1,
            newton_max_iters,
            newton_tol,
            check_tol,
            lambda: _eigh_inverse(stack, damping),
            largest,
            damping,
        )
    return out[0] if single else out


def _ridge(largest: Array, eps: Array | float, relative: bool, dtype) -> Array:
    eps = jnp.asarray(eps, dtype)
    ridge = eps * largest if relative else eps * jnp.ones_like(largest)
    # A zero statistic (no gradient seen yet) must not produce 0^-p = inf.
    return jnp.maximum(ridge, jnp.asarray(jnp.finfo(dtype).tiny, dtype) ** 0.5)


def inverse_root(
    mat: Array,
    exponent: float,
    eps: Array | float = 1e-6,
    *,
    relative_eps: bool = True,
    method: str = "eigh",
    newton_max_iters: int = 100,
    newton_tol: float | None = None,
    check_tol: float | None = None,
) -> Array:
    """``(mat + ε I)^(-exponent)`` for a symmetric positive semi-definite ``mat``.

    Args:
      mat: a ``(d, d)`` symmetric PSD matrix, or a stack ``(n, d, d)`` of them, computed in one
        batched call (``eps`` then has shape ``(n,)`` or is a scalar).
      exponent: the power, e.g. ``1/4`` for Shampoo on matrices, ``1/2`` for its square-root
        variant or for a diagonal statistic.
      eps: the ridge ``ε``; multiplied by the largest eigenvalue of ``mat`` when ``relative_eps``.
      relative_eps: ``ε`` relative to the largest eigenvalue (scale invariant) or absolute.
      method: ``"eigh"`` (eigendecomposition; exact up to rounding), ``"newton"`` (coupled
        Newton iteration, matmuls only; needs ``1/exponent`` to be an integer) or ``"auto"``
        (:func:`resolve_root_method`: by backend and size). The Newton iteration runs in
        ``mat``'s dtype for at most ``newton_max_iters`` steps; its result ``H`` is then checked
        against its target, ``max |H^p (mat + ε I) - I| <= check_tol`` with ``p = 1/exponent``,
        and any matrix of the stack that fails (or is not finite) is recomputed with ``"eigh"``.
      newton_max_iters: the most iterations of the Newton method.
      newton_tol: stop when ``max |M - I| < newton_tol``; ``None`` picks ``1e-6`` for float32
        and ``1e-12`` for float64. The iteration also stops when the error stops decreasing.
      check_tol: the bound of the final check, to which ``4 ε_mach κ`` is added (``κ``: the
        condition number of ``mat + ε I``, from the power-iteration estimate of its largest
        eigenvalue; rounding alone leaves a residual of about ``ε_mach κ``); ``None`` picks
        ``0.01`` for float32 and ``1e-6`` for float64. To first order the root's relative error
        is ``1/p`` of the residual. In float32 with ``κ`` near 1e6 the bound is loose and the
        check catches only an iteration that did not converge or diverged.

    Returns:
      The matrix ``(mat + ε I)^(-exponent)`` (or the stack of them); for a zero ``mat`` with
      relative ``ε``, a multiple of the identity.

    References:
      Gupta, Koren & Singer, *Shampoo: Preconditioned Stochastic Tensor Optimization*, ICML 2018.
      Guo & Higham, *A Schur-Newton method for the matrix p-th root and its inverse*, SIAM J.
      Matrix Anal. Appl. 2006 (the coupled iteration).
      Anil et al., *Scalable Second Order Optimization for Deep Learning*, 2020 (its use in
      Shampoo on accelerators).
    """
    if method not in ROOT_METHODS:
        raise ValueError(f"root method must be one of {ROOT_METHODS}; got {method!r}.")
    if not exponent > 0:
        raise ValueError(f"exponent must be positive (e.g. 0.25); got {exponent!r}.")
    if mat.ndim not in (2, 3) or mat.shape[-1] != mat.shape[-2]:
        raise ValueError(
            f"inverse_root: mat must be a square matrix (d, d) or a stack (n, d, d); got shape "
            f"{mat.shape}."
        )
    mat = _symmetrize(mat)
    single = mat.ndim == 2
    stack = mat[None] if single else mat
    dtype = mat.dtype
    eps = jnp.broadcast_to(jnp.asarray(eps, dtype), stack.shape[:1])
    method = resolve_root_method(method, mat.shape[-1])

    def by_eigh():
        w, q = jnp.linalg.eigh(stack)
        w = jnp.maximum(w, 0.0)
        ridge = _ridge(w[:, -1], eps, relative_eps, dtype)
        return (q * ((w + ridge[:, None]) ** (-exponent))[:, None, :]) @ jnp.swapaxes(q, -1, -2)

    if method == "eigh":
        out = by_eigh()
    else:
        p = 1.0 / exponent
        if abs(p - round(p)) > 1e-9:
            raise ValueError(
                f"method='newton' needs 1/exponent to be an integer; got exponent={exponent}. "
                "Use method='eigh' for other exponents."
            )
        largest = jax.vmap(largest_eigenvalue)(stack)
        ridge = _ridge(largest, eps, relative_eps, dtype)
        a = stack + ridge[:, None, None] * _eye_like(stack)
        out = _checked_newton(
            a, round(p), newton_max_iters, newton_tol, check_tol, by_eigh, largest, ridge
        )
    return out[0] if single else out


def inverse_roots(
    mats: Sequence[Array],
    exponent: float,
    eps: Sequence[Array | float] | Array | float = 1e-6,
    *,
    batched: bool | None = None,
    **kwargs: Any,
) -> list[Array]:
    """:func:`inverse_root` of several matrices, one batched call per (shape, dtype).

    Same-shaped matrices (e.g. the ``1024 x 1024`` statistics of every hidden layer) are stacked
    and computed together: on an accelerator one batched eigendecomposition or Newton iteration
    instead of one launch sequence per matrix.

    Args:
      mats: the matrices, any mix of shapes.
      exponent: see :func:`inverse_root`.
      eps: one ``ε`` for all, or one per matrix.
      batched: stack same-shaped matrices (``True``) or make one call per matrix (``False``);
        ``None`` stacks on GPU and TPU but not on CPU, where separate calls run side by side on
        the cores while one stacked eigendecomposition runs on one (measured at size 1024, four
        matrices: the same CPU time, 2.0–2.4× the wall time stacked).
      **kwargs: passed to :func:`inverse_root`.

    Returns:
      The roots, in the order of ``mats``.
    """
    eps_list = list(eps) if isinstance(eps, list | tuple) else [eps] * len(mats)
    if len(eps_list) != len(mats):
        raise ValueError(
            f"inverse_roots: eps must be a scalar or have one entry per matrix ({len(mats)}); "
            f"got {len(eps_list)}."
        )
    return _batched(
        mats, eps_list, lambda stack, e: inverse_root(stack, exponent, e, **kwargs), batched
    )


def damped_inverses(
    mats: Sequence[Array],
    dampings: Sequence[Array | float],
    method: str = "cholesky",
    *,
    batched: bool | None = None,
    **kwargs: Any,
) -> list[Array]:
    """:func:`damped_inverse` of several matrices, one batched call per (shape, dtype).

    ``batched`` as in :func:`inverse_roots`; ``kwargs`` go to :func:`damped_inverse`.
    """
    if len(dampings) != len(mats):
        raise ValueError(
            f"damped_inverses: dampings must have one entry per matrix ({len(mats)}); got "
            f"{len(dampings)}."
        )
    return _batched(
        mats, list(dampings), lambda stack, d: damped_inverse(stack, d, method, **kwargs), batched
    )


def _batched(mats: Sequence[Array], scalars: list, fn, batched: bool | None) -> list[Array]:
    if batched is None:
        batched = jax.default_backend() in _MATMUL_BACKENDS
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(mats):
        key = (tuple(m.shape), jnp.result_type(m)) if batched else (i,)
        groups.setdefault(key, []).append(i)
    out: list[Array | None] = [None] * len(mats)
    for idx in groups.values():
        dtype = jnp.result_type(mats[idx[0]])
        if len(idx) == 1:
            i = idx[0]
            out[i] = fn(mats[i], jnp.asarray(scalars[i], dtype))
            continue
        stack = jnp.stack([mats[i] for i in idx])
        s = jnp.stack([jnp.asarray(scalars[i], dtype).reshape(()) for i in idx])
        res = fn(stack, s)
        for j, i in enumerate(idx):
            out[i] = res[j]
    return out  # type: ignore[return-value]


def largest_eigenvalue(mat: Array, iters: int = 64) -> Array:
    """Largest eigenvalue of a symmetric PSD matrix by power iteration (matrix-vector products).

    Args:
      mat: a ``(d, d)`` symmetric PSD matrix.
      iters: number of iterations.

    Returns:
      The Rayleigh quotient of the last iterate (a lower bound that converges from below).
    """
    v0 = jnp.abs(probe_vector(mat.shape[0], mat.dtype)) + 1.0

    def body(_, v):
        w = mat @ v
        return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(mat.dtype).tiny)

    v = lax.fori_loop(0, iters, body, v0 / jnp.linalg.norm(v0))
    return jnp.maximum(v @ (mat @ v), 0.0)


def _matrix_power(t: Array, k: int) -> Array:
    # Binary powering: a handful of matmuls for the small k used here (1, 2 or 4).
    result = None
    base = t
    while k:
        if k & 1:
            result = base if result is None else result @ base
        k >>= 1
        if k:
            base = base @ base
    return result


def newton_residual(h: Array, a: Array, p: int) -> Array:
    """``max |h^p a - I|`` per matrix of a stack: how far ``h`` is from ``a^(-1/p)``."""
    r = _matrix_power(h, p) @ a - _eye_like(a)
    return jnp.max(jnp.abs(r), axis=(-2, -1))


def _checked_newton(a, p, max_iters, tol, check_tol, fallback, largest, ridge) -> Array:
    """The coupled Newton iteration on a stack, checked, with ``fallback()`` for failures.

    The check bound is ``check_tol + 4 ε_mach κ`` with ``κ = (largest + ridge) / ridge``, the
    condition number of ``a``: forming ``h^p a`` in ``a``'s dtype has a rounding error of about
    ``ε_mach κ`` (measured: a converged float32 iteration leaves a residual of ``0.3–1.5 ε_mach κ``
    for sizes 64–1024 and ``κ`` from 1e2 to 1e6), while an iteration stopped early or diverged
    leaves ``0.5`` or more.
    """
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"newton_max_iters must be a positive int (e.g. 100); got {max_iters!r}.")
    dtype = a.dtype
    double = jnp.finfo(dtype).bits >= 64
    tol = tol if tol is not None else (1e-12 if double else 1e-6)
    check_tol = check_tol if check_tol is not None else (1e-6 if double else 1e-2)
    h = _coupled_newton(a, p, max_iters, tol)
    res = newton_residual(h, a, p)
    kappa = (largest + ridge) / ridge
    bound = check_tol + 4.0 * jnp.finfo(dtype).eps * kappa
    bad = ~(res <= bound)  # also catches nan
    return lax.cond(jnp.any(bad), lambda: jnp.where(bad[:, None, None], fallback(), h), lambda: h)


def _coupled_newton(a: Array, p: int, max_iters: int, tol: float) -> Array:
    """Coupled Newton iteration for ``a^(-1/p)`` on a stack ``(n, d, d)``.

    Keeps ``M_k = H_k^p a``; each step multiplies ``H`` by ``T = ((p + 1) I - M) / p`` and ``M`` by
    ``T^p``, so ``M → I`` and ``H → a^(-1/p)``. Scaling ``a`` so that its eigenvalues lie in
    ``(0, (p + 1) / 2]`` makes the iteration converge. Every matrix of the stack stops on its own
    (its last step is kept only if it lowered ``max |M - I|``); the loop ends when all have
    stopped or after ``max_iters`` steps.
    """
    dtype = a.dtype
    eye = _eye_like(a)
    norm = jnp.sqrt(jnp.sum(a * a, axis=(-2, -1)))
    norm = jnp.maximum(norm, jnp.finfo(dtype).tiny)[:, None, None]
    z = (1.0 + p) / (2.0 * norm)
    m0 = z * a
    h0 = z ** (1.0 / p) * eye

    def err_of(m):
        return jnp.max(jnp.abs(m - eye), axis=(-2, -1))

    def cond(state):
        i, _, _, _, active = state
        return (i < max_iters) & jnp.any(active)

    def body(state):
        i, m, h, err, active = state
        t = ((p + 1.0) * eye - m) / p
        m_new = _matrix_power(t, p) @ m
        h_new = h @ t
        err_new = err_of(m_new)
        take = active & (err_new <= err)
        keep = take[:, None, None]
        m = jnp.where(keep, m_new, m)
        h = jnp.where(keep, h_new, h)
        err = jnp.where(take, err_new, err)
        return i + 1, m, h, err, take & (err_new > tol)

    err0 = err_of(m0)
    init = (0, m0, h0, err0, err0 > tol)
    _, _, h, _, _ = lax.while_loop(cond, body, init)
    return h


def stagger_groups(sizes: Sequence[int], n_groups: int) -> list[int]:
    """Splits matrix functions of the given sizes into ``n_groups`` groups of about equal cost.

    The cost of a ``d x d`` root or inverse is taken as ``d³``; largest first, each goes to the
    group with the smallest total so far (ties: the lowest group), so the most expensive group
    costs at most the ideal share plus one matrix. Groups are then numbered from the cheapest
    up: group 0 refreshes at the step that also refreshes the statistics (when ``stats_every``
    equals the refresh interval), so it should carry the least.

    Args:
      sizes: the side ``d`` of each matrix.
      n_groups: the number of groups.

    Returns:
      The group of each matrix, in the order of ``sizes``.

    >>> stagger_groups([784, 1024, 1024, 1024, 10], 2)
    [0, 1, 0, 1, 0]
    """
    load = [0.0] * n_groups
    out = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        g = min(range(n_groups), key=lambda j: (load[j], j))
        out[i] = g
        load[g] += float(sizes[i]) ** 3
    rank = {g: r for r, g in enumerate(sorted(range(n_groups), key=lambda j: (load[j], j)))}
    return [rank[g] for g in out]


def group_offset(group: int, n_groups: int, every: int) -> int:
    """The step (modulo ``every``) at which stagger group ``group`` of ``n_groups`` refreshes."""
    return group * every // n_groups


def probe_vector(d: int, dtype) -> Array:
    """A fixed, deterministic vector with no special structure (for cheap equality checks)."""
    i = jnp.arange(d, dtype=dtype)
    # Golden-ratio phases: not aligned with any coordinate or with the all-ones vector.
    return jnp.cos(i * jnp.asarray(2.399963229728653, dtype) + 0.5)


def precondition(
    grad: Array,
    left: Array,
    right: Array,
    rows: tuple[Array, Array] | None = None,
) -> Array:
    """``left @ grad @ right``, using the gradient's row factors when that is cheaper.

    When ``grad = aᵀ g`` for ``a`` of shape ``(R, d_in)`` and ``g`` of shape ``(R, d_out)`` with
    few rows ``R`` (a small batch and a wide layer), ``(left @ aᵀ) @ (g @ right)`` costs
    ``R (d_in + d_out)²`` instead of ``d_in d_out (d_in + d_out)``. The factored form is used only
    after a cheap check that ``grad`` really equals ``aᵀ g`` (up to rounding) along a fixed probe
    direction: a gradient that was changed after capture (clipped, averaged across devices,
    weight decay added) takes the ordinary product.

    Args:
      grad: the ``(d_in, d_out)`` gradient matrix.
      left: ``(d_in, d_in)`` preconditioner.
      right: ``(d_out, d_out)`` preconditioner.
      rows: optional ``(a, g)`` with ``grad ≈ aᵀ g``.

    Returns:
      ``left @ grad @ right``.
    """
    d_in, d_out = grad.shape
    if rows is None:
        return (left @ grad) @ right
    a, g = rows
    r = a.shape[0]
    if r * (d_in + d_out) >= d_in * d_out:
        return (left @ grad) @ right
    v = probe_vector(d_out, grad.dtype)
    gv = g @ v
    diff = jnp.linalg.norm(grad @ v - a.T @ gv)
    scale = jnp.linalg.norm(a) * jnp.linalg.norm(gv)
    tol = math.sqrt(jnp.finfo(grad.dtype).eps)
    same = diff <= tol * scale
    return lax.cond(
        same,
        lambda: (left @ a.T) @ (g @ right),
        lambda: (left @ grad) @ right,
    )
