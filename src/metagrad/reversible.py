"""Exactly reversible SGD with momentum: meta-gradients whose trajectory memory is flat in T.

The inner loop (Maclaurin, Duvenaud & Adams 2015, Algorithm 1, same parameterisation)

    g_t     = ∇_θ L(θ_t, η, x_t)
    v_{t+1} = γ v_t − (1 − γ) g_t
    θ_{t+1} = θ_t + α v_{t+1}

is run on **fixed-point integers**: θ and v are stored as ``round(value · 2^f)`` in ``int64`` (with
``jax.enable_x64``) or ``int32`` (JAX's default 32-bit mode). Integer addition is exactly invertible,
so ``θ_{t+1} = θ_t + Δ(v_{t+1})`` and ``v ← v − q((1−γ) g_t)`` can be undone bit for bit, as long as
``Δ`` and ``q(g)`` are recomputed deterministically from recovered values. The only lossy step is the
decay ``v ← γ v``. With γ = n/d a ratio of integers, it is made exact by Algorithm 3 of the paper: the
remainder lost by the division by d is pushed into a per-element **information buffer** (an unbounded
natural number, here a fixed number of ``uint32`` limbs sized at trace time), and the digit needed
to fill in after the multiplication by n is popped from it. The buffer grows by log2(d/n) bits per
step and element (0.15 bits for γ = 0.9), against 2 × 32 or 2 × 64 bits that storing (θ_t, v_t)
would cost.

The public function is a ``jax.custom_vjp`` over the whole loop. The forward pass keeps only the
final integer state and the buffer. The backward pass walks t = T−1 … 0 in a ``lax.scan``: it first
reverses one step exactly (recovering θ_t, v_t), then applies the VJP of the *floating-point* step
(θ_t, v_t, η, α, x_t) ↦ (θ_{t+1}, v_{t+1}), treating the quantisation as the identity
(straight-through). The inner gradient in that VJP is ``metagrad.grad``, so its Hessian- and
mixed-vector products come from one forward-over-reverse pass (mixed mode).

References:
    Maclaurin, Duvenaud, Adams. *Gradient-based Hyperparameter Optimization through Reversible
    Learning*. ICML 2015, arXiv:1502.03492 (Algorithms 1–3, Section 2.3 "Exact reversibility").
    Kemaev et al. *Scalable Meta-Learning via Mixed-Mode Differentiation*. ICML 2025,
    arXiv:2505.00793 (the mixed-mode gradient node used in the backward pass).
"""

from __future__ import annotations

import dataclasses
import fractions
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metagrad.autodiff import differentiation_mode
from metagrad.autodiff import grad as mixed_grad
from metagrad.treecheck import require_floating_leaves

__all__ = [
    "ReversibleState",
    "buffer_limbs",
    "reversible_forward",
    "reversible_momentum_sgd",
    "reversible_reverse",
]

Loss = Callable[[Any, Any, Any], Any]

DEFAULT_FRACTIONAL_BITS = {64: 32, 32: 20}
"""Default number of fractional bits f per integer width. int64: resolution 2^-32 ≈ 2.3e-10, usable
range ±2^30 ≈ ±1.1e9. int32: resolution 2^-20 ≈ 9.5e-7, usable range ±2^10 = ±1024. (Quantised
values are clipped at ±2^(B−2) units, one guard bit below the integer range.)"""

DEFAULT_MAX_BUFFER_LIMBS = 32
"""Default limit on the information buffer: 32 uint32 limbs = 1024 bits (128 bytes) per element,
enough for T = 6693 steps at γ = 9/10 or T = 1022 at γ = 1/2."""

_DIGIT_BITS = 16  # arithmetic digit; two per uint32 limb, so products fit in uint32 (no uint64
_DIGIT_MASK = (1 << _DIGIT_BITS) - 1  # needed: it works in JAX's default 32-bit mode)
_MAX_DENOMINATOR = 1 << _DIGIT_BITS


class ReversibleState(NamedTuple):
    """The exact state of the reversible loop.

    Attributes:
      params: pytree like the parameters, of fixed-point integers ``round(θ · 2^f)``.
      velocity: pytree like the parameters, of fixed-point integers ``round(v · 2^f)``.
      buffer: pytree like the parameters; each leaf is ``uint32`` of shape ``(limbs, *leaf.shape)``,
        little-endian limbs of the per-element information buffer (Algorithm 3). It is zero before
        the first step and after a complete reversal.
    """

    params: Any
    velocity: Any
    buffer: Any


@dataclasses.dataclass(frozen=True)
class _Config:
    numerator: int
    denominator: int
    fractional_bits: int
    int_dtype: Any
    limbs: int
    steps: int

    @property
    def gamma(self) -> float:
        return self.numerator / self.denominator

    @property
    def one_minus_gamma(self) -> float:
        return (self.denominator - self.numerator) / self.denominator


# ---------------------------------------------------------------------------------------------
# Public API.


def reversible_momentum_sgd(
    loss: Loss,
    params0: Any,
    xs: Any = None,
    *,
    learning_rate: Any,
    decay: tuple[int, int] | fractions.Fraction = (9, 10),
    meta: Any = None,
    velocity0: Any = None,
    steps: int | None = None,
    fractional_bits: int | None = None,
    max_buffer_limbs: int = DEFAULT_MAX_BUFFER_LIMBS,
) -> Any:
    """Runs T steps of exactly reversible momentum SGD and returns the final parameters θ_T.

    The update is ``v ← γ v − (1 − γ) ∇_θ loss(θ, meta, x_t)``, ``θ ← θ + α v`` (the paper's
    parameterisation), carried out in fixed point so that the backward pass can run the trajectory
    backwards instead of storing it. The result is differentiable (reverse mode) with respect to
    ``params0``, ``velocity0``, ``learning_rate``, ``meta``, the floating-point leaves of ``xs`` and
    any traced values ``loss`` closes over. The meta-gradient is that of the floating-point loop
    evaluated at the exact (fixed-point) trajectory, with the rounding treated as the identity.
    Its memory does not grow with T beyond the information buffer (about log2(d/n) bits per step
    and parameter).

    Args:
      loss: ``loss(params, meta, x) -> scalar float``. ``x`` is one step's slice of ``xs``
        (``None`` when ``xs`` is ``None``). It must be deterministic: the backward pass recomputes
        its gradient at the recovered θ_t and needs the same bits as in the forward pass.
      params0: pytree of floating-point arrays, the initial parameters θ₀.
      xs: pytree of arrays with a leading step axis (one batch per step), or ``None`` with ``steps``.
      learning_rate: α. A float scalar, or a pytree like ``params0`` of float arrays broadcastable
        to each leaf (per-parameter learning rates). May be traced (a meta-parameter).
      decay: γ as a ratio of Python ints ``(n, d)`` with 0 < n < d < 65536 (or a
        ``fractions.Fraction``). It must be static: it defines the buffer arithmetic.
      meta: meta-parameters η passed to ``loss`` (any pytree, may be ``None``).
      velocity0: initial velocity v₀ (pytree like ``params0``); zeros if ``None``.
      steps: number of steps T when ``xs`` is ``None``.
      fractional_bits: f, the fixed-point radix. Default 32 with x64 enabled (int64) and 20
        otherwise (int32). Values of θ, v and α·v must stay within ±2^(B−2−f) (B = 64 or 32).
      max_buffer_limbs: refuse to build a buffer of more uint32 limbs per element than this.

    Returns:
      θ_T, a pytree like ``params0`` (de-quantised to each leaf's dtype).

    Raises:
      TypeError: non-float parameters or learning rate, or a decay that is not a ratio of ints.
      ValueError: decay outside (0, 1), bad ``fractional_bits``, inconsistent step axes, or a T
        whose information buffer would exceed ``max_buffer_limbs``.

    References:
      Maclaurin, Duvenaud, Adams, ICML 2015, Algorithms 1–3.
    """
    cfg, velocity0, lr = _prepare(
        params0, xs, steps, learning_rate, decay, velocity0, fractional_bits, max_buffer_limbs
    )
    x_example = None if xs is None else jax.tree.map(lambda x: x[0], xs)
    # custom_vjp cannot differentiate values the loss closes over (e.g. a meta-parameter captured
    # by a lambda); closure_convert hoists them into explicit inputs, differentiated like ``meta``.
    converted, consts = jax.closure_convert(loss, params0, meta, x_example)

    def plain_loss(params: Any, meta_and_consts: Any, x: Any) -> Any:
        m, c = meta_and_consts
        return converted(params, m, x, *c)

    run = _make_run(plain_loss, cfg)
    params_t, _ = run(params0, velocity0, (meta, list(consts)), lr, xs)
    return params_t


def reversible_forward(
    loss: Loss,
    params0: Any,
    xs: Any = None,
    *,
    learning_rate: Any,
    decay: tuple[int, int] | fractions.Fraction = (9, 10),
    meta: Any = None,
    velocity0: Any = None,
    steps: int | None = None,
    fractional_bits: int | None = None,
    max_buffer_limbs: int = DEFAULT_MAX_BUFFER_LIMBS,
    trajectory: bool = False,
) -> ReversibleState | tuple[ReversibleState, ReversibleState]:
    """The forward pass only: the exact final state (and optionally every intermediate one).

    Arguments as for ``reversible_momentum_sgd``. Not differentiable; use it to inspect the
    integer trajectory or to check reversibility with ``reversible_reverse``.

    Args:
      trajectory: also return the stacked states *before* each step (t = 0 … T−1). That is the
        O(T) memory the reversible loop avoids; use it for tests and debugging.

    Returns:
      The final ``ReversibleState``, or ``(final, stacked)`` if ``trajectory``.
    """
    cfg, velocity0, lr = _prepare(
        params0, xs, steps, learning_rate, decay, velocity0, fractional_bits, max_buffer_limbs
    )
    state = _initial_state(params0, velocity0, cfg)
    return _scan_steps(
        lambda s, x: _forward_step(loss, s, meta, lr, x, params0, cfg), state, xs, cfg, trajectory
    )


def reversible_reverse(
    loss: Loss,
    state: ReversibleState,
    xs: Any = None,
    *,
    like: Any,
    learning_rate: Any,
    decay: tuple[int, int] | fractions.Fraction = (9, 10),
    meta: Any = None,
    steps: int | None = None,
    fractional_bits: int | None = None,
    max_buffer_limbs: int = DEFAULT_MAX_BUFFER_LIMBS,
    trajectory: bool = False,
) -> ReversibleState | tuple[ReversibleState, ReversibleState]:
    """Runs the loop backwards from ``state``, exactly: returns the state before step 0.

    Args:
      loss: as given to ``reversible_forward``.
      xs: as given to ``reversible_forward``.
      learning_rate: as given to ``reversible_forward``.
      decay: as given to ``reversible_forward``.
      meta: as given to ``reversible_forward``.
      steps: as given to ``reversible_forward``.
      fractional_bits: as given to ``reversible_forward``.
      max_buffer_limbs: as given to ``reversible_forward``.
      state: the final ``ReversibleState`` from ``reversible_forward``.
      like: a pytree like ``params0`` (arrays or ``jax.ShapeDtypeStruct``), giving the float dtypes
        the gradient is computed in.
      trajectory: also return the recovered states before each step, stacked in forward order
        (t = 0 … T−1), to compare with ``reversible_forward(..., trajectory=True)``.

    Returns:
      The recovered initial ``ReversibleState`` (its buffer is all zeros after a full reversal), or
      ``(initial, stacked)`` if ``trajectory``.
    """
    cfg, _, lr = _prepare(
        like, xs, steps, learning_rate, decay, None, fractional_bits, max_buffer_limbs
    )
    _check_buffer_limbs(state, cfg)

    def body(s: ReversibleState, x: Any) -> ReversibleState:
        return _reverse_step(loss, s, meta, lr, x, like, cfg)

    return _scan_steps(body, state, xs, cfg, trajectory, reverse=True)


def buffer_limbs(steps: int, decay: tuple[int, int] | fractions.Fraction = (9, 10)) -> int:
    """Number of uint32 limbs per element the information buffer needs for ``steps`` steps.

    The buffer starts at 0, and each step maps it to at most ``floor((b·d + d − 1) / n)``, so after
    T steps ``b_T ≤ (d − 1)/(d − n) · ((d/n)^T − 1)``. The intermediate ``b·d + r`` of the last step
    must fit too. This is computed exactly with Python integers at trace time.

    Args:
      steps: T.
      decay: γ = n/d, as for ``reversible_momentum_sgd``.

    Returns:
      The number of 32-bit limbs (at least 1).
    """
    n, d = _validate_decay(decay)
    return _limbs_for(steps, n, d)


# ---------------------------------------------------------------------------------------------
# The custom VJP over the whole loop.


def _make_run(loss: Loss, cfg: _Config) -> Callable[..., Any]:
    @jax.custom_vjp
    def run(params0: Any, velocity0: Any, meta: Any, lr: Any, xs: Any) -> tuple[Any, Any]:
        state = _run_forward(params0, velocity0, meta, lr, xs)
        return _dequantise_state(state, params0, cfg)

    def _run_forward(params0: Any, velocity0: Any, meta: Any, lr: Any, xs: Any) -> ReversibleState:
        state = _initial_state(params0, velocity0, cfg)

        def body(s: ReversibleState, x: Any) -> tuple[ReversibleState, None]:
            return _forward_step(loss, s, meta, lr, x, params0, cfg), None

        return jax.lax.scan(body, state, xs, length=cfg.steps)[0]

    def run_fwd(params0: Any, velocity0: Any, meta: Any, lr: Any, xs: Any) -> tuple[Any, Any]:
        state = _run_forward(params0, velocity0, meta, lr, xs)
        like = jax.tree.map(lambda p: jnp.zeros((), p.dtype), params0)  # dtypes only, O(1)
        # Residuals: the final integer state and the buffer, plus the inputs that are not the
        # trajectory. Nothing here grows with T except the buffer (log2(d/n) bits per step).
        return _dequantise_state(state, params0, cfg), (state, meta, lr, xs, like)

    def run_bwd(res: Any, cts: tuple[Any, Any]) -> tuple[Any, ...]:
        state, meta, lr, xs, like = res
        ct_params, ct_velocity = cts
        meta_float, rebuild_meta, meta_ct0 = _split_float(meta)
        xs_float, rebuild_xs, xs_ct0 = _split_float(xs)

        def float_step(theta: Any, v: Any, mf: Any, xf: Any, a: Any, v_next: Any, x: Any) -> Any:
            # The step in floating point. Its VJP at the recovered (θ_t, v_t) is the pullback of one
            # step; the fixed-point rounding is treated as the identity (straight-through). v_next
            # is the exact de-quantised v_{t+1}, so α's cotangent uses the value that was applied.
            x = rebuild_xs(xf, x)
            g = mixed_grad(loss)(theta, rebuild_meta(mf), x)
            v_new = jax.tree.map(
                lambda vv, gg: cfg.gamma * vv - cfg.one_minus_gamma * gg.astype(vv.dtype), v, g
            )
            v_new = jax.tree.map(lambda a_, b: a_ + jax.lax.stop_gradient(b - a_), v_new, v_next)
            theta_new = jax.tree.map(
                lambda th, vv, aa: th + aa.astype(th.dtype) * vv, theta, v_new, _lr_tree(a, theta)
            )
            return theta_new, v_new

        def body(carry: Any, x: Any) -> tuple[Any, Any]:
            s, ct_th, ct_v, ct_m, ct_a = carry
            v_next = _dequantise(s.velocity, like, cfg)
            s = _reverse_step(loss, s, meta, lr, x, like, cfg)
            theta_f = _dequantise(s.params, like, cfg)
            v_f = _dequantise(s.velocity, like, cfg)
            # The barrier keeps XLA from merging the VJP's recomputation of the inner gradient with
            # the one _reverse_step used to undo the update: that one must stay the same program as
            # in the forward pass, so that it rounds to the same fixed-point bits.
            theta_f, v_f, v_next = jax.lax.optimization_barrier((theta_f, v_f, v_next))
            xf, _, _ = _split_float(x)
            _, pullback = jax.vjp(
                lambda th, vv, mf, xx, aa: float_step(th, vv, mf, xx, aa, v_next, x),
                theta_f,
                v_f,
                meta_float,
                xf,
                lr,
            )
            d_th, d_v, d_m, d_x, d_a = pullback((ct_th, ct_v))
            ct_m = jax.tree.map(jnp.add, ct_m, d_m)
            ct_a = jax.tree.map(jnp.add, ct_a, d_a)
            return (s, d_th, d_v, ct_m, ct_a), d_x

        with differentiation_mode("mixflow"):
            init = (
                state,
                ct_params,
                ct_velocity,
                jax.tree.map(jnp.zeros_like, meta_float),
                jax.tree.map(jnp.zeros_like, lr),
            )
            (_, ct_th, ct_v, ct_m, ct_a), ct_xs = jax.lax.scan(
                body, init, xs, length=cfg.steps, reverse=True
            )
        return ct_th, ct_v, meta_ct0(ct_m), ct_a, xs_ct0(ct_xs)

    run.defvjp(run_fwd, run_bwd)

    def call(*args: Any) -> Any:
        # The forward step takes its inner gradient with metagrad.grad: in mixed mode, whatever
        # unroll context the user calls us from.
        with differentiation_mode("mixflow"):
            return run(*args)

    return call


# ---------------------------------------------------------------------------------------------
# One exact step, forwards and backwards.


def _forward_step(
    loss: Loss, s: ReversibleState, meta: Any, lr: Any, x: Any, like: Any, cfg: _Config
) -> ReversibleState:
    g = _quantised_gradient(loss, s.params, meta, x, like, cfg)
    v_and_b = jax.tree.map(lambda v, b: _multiply_by_ratio(v, b, cfg), s.velocity, s.buffer)
    velocity = jax.tree.map(lambda _, vb: vb[0], s.velocity, v_and_b)
    buffer = jax.tree.map(lambda _, vb: vb[1], s.velocity, v_and_b)
    velocity = jax.tree.map(jnp.subtract, velocity, g)
    params = jax.tree.map(jnp.add, s.params, _quantised_update(velocity, lr, like, cfg))
    return ReversibleState(params, velocity, buffer)


def _reverse_step(
    loss: Loss, s: ReversibleState, meta: Any, lr: Any, x: Any, like: Any, cfg: _Config
) -> ReversibleState:
    params = jax.tree.map(jnp.subtract, s.params, _quantised_update(s.velocity, lr, like, cfg))
    g = _quantised_gradient(loss, params, meta, x, like, cfg)
    velocity = jax.tree.map(jnp.add, s.velocity, g)
    v_and_b = jax.tree.map(lambda v, b: _divide_by_ratio(v, b, cfg), velocity, s.buffer)
    velocity = jax.tree.map(lambda _, vb: vb[0], velocity, v_and_b)
    buffer = jax.tree.map(lambda _, vb: vb[1], s.velocity, v_and_b)
    return ReversibleState(params, velocity, buffer)


def _quantised_gradient(loss: Loss, params: Any, meta: Any, x: Any, like: Any, cfg: _Config) -> Any:
    """q((1 − γ) ∇L(θ)), the integer subtracted from v. Forward and reverse call this one function
    on the same integers, so they compute the same bits (given a deterministic loss)."""
    theta = _dequantise(params, like, cfg)
    g = mixed_grad(loss)(theta, meta, x)
    return jax.tree.map(lambda gg: _to_fixed(cfg.one_minus_gamma * gg, cfg), g)


def _quantised_update(velocity: Any, lr: Any, like: Any, cfg: _Config) -> Any:
    """Δ(v) = q(α · v), the integer added to θ; recomputed bit-identically in reverse."""
    v = _dequantise(velocity, like, cfg)
    return jax.tree.map(
        lambda vv, a: _to_fixed(a.astype(vv.dtype) * vv, cfg), v, _lr_tree(lr, like)
    )


# ---------------------------------------------------------------------------------------------
# Fixed point.


def _to_fixed(x: Any, cfg: _Config) -> Any:
    bits = jnp.iinfo(cfg.int_dtype).bits
    # Multiplying by a power of two is exact, so the only rounding is jnp.round (half to even).
    # Clipping keeps the float→int conversion defined (XLA leaves out-of-range values unspecified);
    # it is deterministic, so reversibility survives, but such values are already meaningless.
    limit = float(2 ** (bits - 2))
    scaled = jnp.clip(jnp.round(x * float(2**cfg.fractional_bits)), -limit, limit)
    return scaled.astype(cfg.int_dtype)


def _dequantise(tree: Any, like: Any, cfg: _Config) -> Any:
    scale = float(2.0**-cfg.fractional_bits)
    return jax.tree.map(lambda i, p: i.astype(p.dtype) * jnp.asarray(scale, p.dtype), tree, like)


def _dequantise_state(state: ReversibleState, like: Any, cfg: _Config) -> tuple[Any, Any]:
    return _dequantise(state.params, like, cfg), _dequantise(state.velocity, like, cfg)


def _initial_state(params0: Any, velocity0: Any, cfg: _Config) -> ReversibleState:
    return ReversibleState(
        jax.tree.map(lambda p: _to_fixed(p, cfg), params0),
        jax.tree.map(lambda v: _to_fixed(v, cfg), velocity0),
        jax.tree.map(lambda p: jnp.zeros((cfg.limbs, *jnp.shape(p)), jnp.uint32), params0),
    )


# ---------------------------------------------------------------------------------------------
# Exactly reversible multiplication by n/d (Maclaurin et al., Algorithm 3) on multi-limb buffers.
#
# Each buffer element is a natural number stored in `limbs` uint32 words (little-endian). The
# arithmetic works on 16-bit digits (two per word) so that digit·m + carry and rem·2^16 + digit fit
# in uint32 for any m < 2^16: no uint64 needed, so it runs in JAX's default 32-bit mode too.


def _multiply_by_ratio(c: Any, buf: Any, cfg: _Config) -> tuple[Any, Any]:
    """(c, b) ↦ (≈ c·n/d, b') exactly invertibly: b ← b·d + (c mod d); c ← (c ÷ d)·n + (b mod n);
    b ← b ÷ n."""
    n, d = cfg.numerator, cfg.denominator
    digits = _unpack(buf)
    digits = _mul_add(digits, d, jnp.mod(c, d).astype(jnp.uint32))
    digits, rem = _divmod_small(digits, n)
    c = jnp.floor_divide(c, d) * n + rem.astype(c.dtype)
    return c, _pack(digits)


def _divide_by_ratio(c: Any, buf: Any, cfg: _Config) -> tuple[Any, Any]:
    """The exact inverse of ``_multiply_by_ratio``."""
    n, d = cfg.numerator, cfg.denominator
    digits = _unpack(buf)
    digits = _mul_add(digits, n, jnp.mod(c, n).astype(jnp.uint32))
    digits, rem = _divmod_small(digits, d)
    c = jnp.floor_divide(c, n) * d + rem.astype(c.dtype)
    return c, _pack(digits)


def _unpack(buf: Any) -> list[Any]:
    digits = []
    for k in range(buf.shape[0]):
        digits += [buf[k] & np.uint32(_DIGIT_MASK), buf[k] >> np.uint32(_DIGIT_BITS)]
    return digits


def _pack(digits: list[Any]) -> Any:
    words = [
        digits[2 * k] | (digits[2 * k + 1] << np.uint32(_DIGIT_BITS))
        for k in range(len(digits) // 2)
    ]
    return jnp.stack(words)


def _mul_add(digits: list[Any], m: int, add: Any) -> list[Any]:
    """digits·m + add, for m < 2^16 and add < 2^16. The carry out of the top digit is always zero:
    the buffer is sized (``_limbs_for``) for the largest value T steps can produce."""
    out, carry, mm = [], add, np.uint32(m)
    for digit in digits:
        t = digit * mm + carry  # ≤ (2^16−1)² + 2^16 − 1 < 2^32
        out.append(t & np.uint32(_DIGIT_MASK))
        carry = t >> np.uint32(_DIGIT_BITS)
    return out


def _divmod_small(digits: list[Any], m: int) -> tuple[list[Any], Any]:
    """(digits ÷ m, digits mod m) for 0 < m < 2^16, long division from the top digit."""
    out: list[Any] = [None] * len(digits)
    rem, mm = jnp.zeros_like(digits[0]), np.uint32(m)
    for k in reversed(range(len(digits))):
        t = (rem << np.uint32(_DIGIT_BITS)) | digits[k]  # < m·2^16 ≤ 2^32
        out[k] = t // mm
        rem = t % mm
    return out, rem


def _limbs_for(steps: int, n: int, d: int) -> int:
    # Largest buffer value after T steps from 0 (every remainder at its maximum d − 1), closed form
    # of b_{t+1} ≤ (b_t·d + d − 1)/n; then the intermediate b·d + d − 1 of one more half-step.
    largest = ((d - 1) * (d**steps - n**steps)) // ((d - n) * n**steps) + 1
    bits = (largest * d + d).bit_length()
    return max(1, math.ceil(bits / 32))


# ---------------------------------------------------------------------------------------------
# Validation.


def _prepare(
    params0: Any,
    xs: Any,
    steps: int | None,
    learning_rate: Any,
    decay: Any,
    velocity0: Any,
    fractional_bits: int | None,
    max_buffer_limbs: int,
) -> tuple[_Config, Any, Any]:
    n, d = _validate_decay(decay)
    require_floating_leaves(
        params0, name="params0", where="reversible",
        hint="They are quantised to fixed point and the loss is differentiated at them: cast it "
        "to a float dtype, or pass integer data in xs or meta.",
    )  # fmt: skip
    leaves = jax.tree.leaves(params0)
    int_dtype = jnp.int64 if jax.config.read("jax_enable_x64") else jnp.int32
    width = jnp.iinfo(int_dtype).bits
    if fractional_bits is None:
        fractional_bits = DEFAULT_FRACTIONAL_BITS[width]
    if (
        not isinstance(fractional_bits, int)
        or isinstance(fractional_bits, bool)
        or not 1 <= fractional_bits <= width - 4
    ):
        raise ValueError(
            f"fractional_bits must be an int in [1, {width - 4}] for {width}-bit fixed point; got "
            f"{fractional_bits!r}. More bits: finer resolution 2^-f but a smaller range "
            f"±2^({width}-2-f). Default: {DEFAULT_FRACTIONAL_BITS[width]}."
        )
    num_steps = _num_steps(xs, steps)
    if not isinstance(max_buffer_limbs, int) or max_buffer_limbs < 1:
        raise ValueError(f"max_buffer_limbs must be a positive int; got {max_buffer_limbs!r}.")
    # Cheap float estimate first, so a huge T does not build a huge Python integer.
    if num_steps * math.log2(d / n) > 32 * max_buffer_limbs + 64:
        limbs = math.ceil(num_steps * math.log2(d / n) / 32)
    else:
        limbs = _limbs_for(num_steps, n, d)
    if limbs > max_buffer_limbs:
        max_t = _max_steps(n, d, max_buffer_limbs)
        raise ValueError(
            f"T={num_steps} steps with decay={n}/{d} need an information buffer of {limbs} uint32 "
            f"limbs per parameter (log2({d}/{n}) = {math.log2(d / n):.3f} bits per step), more than "
            f"max_buffer_limbs={max_buffer_limbs} (at most T={max_t} fits). Raise "
            "max_buffer_limbs (memory: 4 bytes per limb per parameter), use fewer steps, or a "
            "decay closer to 1 (e.g. (99, 100))."
        )
    if velocity0 is None:
        velocity0 = jax.tree.map(jnp.zeros_like, params0)
    elif _treedef(velocity0) != _treedef(params0) or any(
        jnp.shape(v) != jnp.shape(p)
        for v, p in zip(jax.tree.leaves(velocity0), leaves, strict=True)
    ):
        raise ValueError(
            "velocity0 must have the structure and shapes of params0; got "
            f"{_treedef(velocity0)} vs {_treedef(params0)}."
        )
    lr = _validate_learning_rate(learning_rate, params0)
    cfg = _Config(n, d, fractional_bits, int_dtype, limbs, num_steps)
    return cfg, velocity0, lr


def _validate_decay(decay: Any) -> tuple[int, int]:
    if isinstance(decay, fractions.Fraction):
        decay = (decay.numerator, decay.denominator)
    if not (
        isinstance(decay, tuple)
        and len(decay) == 2
        and all(isinstance(k, int) and not isinstance(k, bool) for k in decay)
    ):
        hint = ""
        if isinstance(decay, float):
            f = fractions.Fraction(decay).limit_denominator(1000)
            hint = f" For {decay}, pass decay=({f.numerator}, {f.denominator})."
        raise TypeError(
            "decay must be a ratio of Python ints (n, d) or a fractions.Fraction, known at trace "
            f"time (it defines the exact buffer arithmetic); got {decay!r}.{hint}"
        )
    n, d = decay
    if not 0 < n < d < _MAX_DENOMINATOR:
        raise ValueError(
            f"decay=({n}, {d}) must satisfy 0 < n < d < {_MAX_DENOMINATOR}, i.e. γ = n/d in (0, 1) "
            "with a denominator that fits a 16-bit digit; e.g. (9, 10) for γ = 0.9."
        )
    g = math.gcd(n, d)  # (18, 20) and (9, 10) are the same γ; the reduced form needs less buffer
    return n // g, d // g


def _validate_learning_rate(learning_rate: Any, params0: Any) -> Any:
    def check(a: Any) -> Any:
        if isinstance(a, bool) or not jnp.issubdtype(jnp.result_type(a), jnp.floating):
            if isinstance(a, int) and not isinstance(a, bool):
                return jnp.asarray(float(a))
            raise TypeError(
                "learning_rate must be a float scalar or a pytree like params0 of float arrays; "
                f"got dtype {jnp.result_type(a)}. Pass e.g. learning_rate=0.1 or a float array."
            )
        return jnp.asarray(a)

    if _treedef(learning_rate) == _treedef(params0) and not (
        _treedef(params0).num_leaves == 1 and jnp.ndim(learning_rate) == 0
    ):
        return jax.tree.map(check, learning_rate)
    lr = check(learning_rate)
    if jnp.ndim(lr) != 0:
        raise ValueError(
            f"learning_rate must be a scalar or a pytree like params0; got shape {jnp.shape(lr)}. "
            "For per-parameter learning rates pass one array per parameter leaf."
        )
    return lr


def _lr_tree(lr: Any, like: Any) -> Any:
    if _treedef(lr) == _treedef(like):
        return lr
    return jax.tree.map(lambda _: lr, like)


def _num_steps(xs: Any, steps: int | None) -> int:
    leaves = jax.tree.leaves(xs)
    if leaves:
        sizes = {int(jnp.shape(x)[0]) if jnp.ndim(x) else -1 for x in leaves}
        if len(sizes) != 1 or -1 in sizes or (steps is not None and steps not in sizes):
            raise ValueError(
                "xs: every leaf needs the same leading (step) axis, equal to steps if given; got "
                f"leading sizes {sorted(sizes)} and steps={steps}."
            )
        return sizes.pop()
    if steps is None or not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(
            f"give xs (one batch per step, stacked) or steps (a non-negative int); got xs={xs!r} "
            f"and steps={steps!r}."
        )
    return steps


def _max_steps(n: int, d: int, limbs: int) -> int:
    lo, hi = 0, max(1, int(32 * limbs / math.log2(d / n)) + 2)
    while lo < hi:  # largest T with _limbs_for(T) <= limbs
        mid = (lo + hi + 1) // 2
        if _limbs_for(mid, n, d) <= limbs:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _check_buffer_limbs(state: ReversibleState, cfg: _Config) -> None:
    for b in jax.tree.leaves(state.buffer):
        if jnp.shape(b)[0] != cfg.limbs:
            raise ValueError(
                f"state.buffer has {jnp.shape(b)[0]} limbs but T={cfg.steps} with decay="
                f"{cfg.numerator}/{cfg.denominator} uses {cfg.limbs}. Reverse with the same xs, "
                "steps and decay that produced the state."
            )


def _split_float(tree: Any) -> tuple[list[Any], Callable[..., Any], Callable[[list[Any]], Any]]:
    """Float leaves of ``tree`` (differentiated), a function rebuilding a tree from new float leaves
    (non-float leaves taken from a template), and one turning float cotangents into a full
    cotangent tree (float0 zeros for integer leaves)."""
    leaves, treedef = jax.tree.flatten(tree)
    is_float = [jnp.issubdtype(jnp.result_type(x), jnp.inexact) for x in leaves]
    float_leaves = [x for x, f in zip(leaves, is_float, strict=True) if f]

    def rebuild(new_float: list[Any], template: Any = tree) -> Any:
        it = iter(new_float)
        tl = jax.tree.leaves(template)
        return jax.tree.unflatten(
            treedef, [next(it) if f else t for t, f in zip(tl, is_float, strict=True)]
        )

    def cotangent(cts: list[Any]) -> Any:
        it = iter(cts)
        return jax.tree.unflatten(
            treedef,
            [
                next(it) if f else np.zeros(np.shape(x), jax.dtypes.float0)
                for x, f in zip(leaves, is_float, strict=True)
            ],
        )

    return float_leaves, rebuild, cotangent


def _scan_steps(
    body: Callable[[ReversibleState, Any], ReversibleState],
    state: ReversibleState,
    xs: Any,
    cfg: _Config,
    trajectory: bool,
    reverse: bool = False,
) -> Any:
    def step(s: ReversibleState, x: Any) -> tuple[ReversibleState, Any]:
        new = body(s, x)
        # Forwards, record the state entering the step; backwards, the state recovered before it.
        return new, ((s if not reverse else new) if trajectory else None)

    with differentiation_mode("mixflow"):
        final, stacked = jax.lax.scan(step, state, xs, length=cfg.steps, reverse=reverse)
    return (final, stacked) if trajectory else final


def _treedef(tree: Any) -> Any:
    """``jax.tree.structure(tree)``, typed ``Any``: jaxlib ships no type stub for ``PyTreeDef``, so
    a type checker cannot compare tree structures or read ``num_leaves`` otherwise."""
    return jax.tree.structure(tree)
