"""Is this meta-gradient worth computing? Exactness against float64, conditioning, and the cause.

Two float32 modes that agree prove nothing: on a CPU they may run the same operations. A
meta-gradient is trustworthy when

1. its float32 value (in every differentiation mode) is close to a **float64 reference** computed in
   reverse mode, on the CPU, and
2. it is **well-conditioned**: the float64 meta-gradient barely moves when the inputs move by a tiny
   relative amount. A meta-gradient is a product of T inner-step Jacobians; when that product
   amplifies rounding errors by 1e5, the float32 (or TF32) result is noise, whatever the mode.

``check`` (for a ``Bilevel`` problem) and ``check_meta_gradient`` (for any meta-gradient function)
measure both and look for the cause: an adaptive optimiser whose ε sits outside the square root
(its first step is ≈ ``lr · g / (|g| + ε)``, with derivative up to ``lr / ε`` at near-zero
gradients), tangents that grow along the trajectory, or low-precision matmuls.

References:
    Kemaev et al., *Scalable Meta-Learning via Mixed-Mode Differentiation*, ICML 2025 (the modes).
    Kingma & Ba, *Adam*, ICLR 2015; optax ``scale_by_adam(eps_root=...)`` (ε inside the root for
    differentiating through Adam).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metagrad.autodiff import MODES, validate_mode

MetaGradFn = Callable[..., tuple[jax.Array, Any]]
"""``(*args) -> (outer value, meta-gradient)``, e.g. a jitted ``Bilevel.value_and_grad``."""

DEFAULT_DELTA = 1e-6
"""Relative size of the perturbation of the initial parameters in the sensitivity estimate."""

ADVICE_ROOT = (
    "put ε inside the square root: optax.adam(lr, eps_root=1e-8) or "
    "optax.scale_by_adam(eps_root=1e-8) (optax documents eps_root for differentiating through Adam)"
)


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """What ``check`` found.

    Attributes:
      rel_error_vs_float64: per mode, ``relative_error`` of the float32 meta-gradient against the
        float64 reference.
      sensitivity: relative change of the float64 meta-gradient under a relative ``delta``
        perturbation of the initial parameters (the largest over the directions tried).
      delta: the relative perturbation used.
      amplification: ``sensitivity / delta``, a condition-number estimate of the meta-gradient.
      verdict: ``"sound"`` or ``"ill-conditioned"``.
      causes: one sentence per cause found, each with what to do.
      notes: observations that do not change the verdict (e.g. a kink crossed by the perturbation).
      small_delta_sensitivity: the sensitivity re-measured at ``delta / 100`` and scaled by 100,
        when ``sensitivity`` exceeded the threshold (``nan`` otherwise). Much smaller than
        ``sensitivity`` means the change was a jump across a kink, not an amplification; the
        verdict then uses this figure.
      dominant: where the meta-gradient's change comes from: dicts with ``leaf`` (a path of the
        meta-gradient), ``share`` (fraction of the squared change) and ``index`` (its largest
        coordinate).
      trajectory: figures of the inner loop (``check`` on a ``Bilevel`` only): ``steps``,
        ``first_step_gain`` and ``growth_per_step`` (norm of a forward tangent of θ_t for the
        perturbation of θ₀), ``adaptive_update`` (the first update is not proportional to the
        gradient), ``root_safe`` (its derivative at a zero gradient is finite) and the counts of
        zero and near-zero inner gradients.
      reference: how the reference was computed (mode, dtype, device).
      precision: the default matmul precision in force (``jax_default_matmul_precision``).
      backend: the backend the float32 modes ran on.
    """

    rel_error_vs_float64: dict[str, float]
    sensitivity: float
    delta: float
    amplification: float
    verdict: str
    causes: list[str]
    notes: list[str]
    small_delta_sensitivity: float
    dominant: list[dict[str, Any]]
    trajectory: dict[str, Any]
    reference: dict[str, str]
    precision: str
    backend: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite floats become strings, which strict readers accept)."""
        return _finite_json(dataclasses.asdict(self))

    def summary(self) -> str:
        """A few lines for a terminal."""
        errors = ", ".join(f"{m} {e:.2e}" for m, e in self.rel_error_vs_float64.items())
        lines = [
            f"verdict: {self.verdict}",
            f"float32 vs float64 reference (max-relative): {errors}",
            f"sensitivity to a {self.delta:g} relative perturbation of θ₀: {self.sensitivity:.2e} "
            f"(amplification {self.amplification:.3g})",
        ]
        if self.trajectory:
            t = self.trajectory
            lines.append(
                f"inner trajectory: {'adaptive' if t['adaptive_update'] else 'linear'} first "
                f"update{', ε outside the root' if not t['root_safe'] else ''}; tangent growth "
                f"per step {t['growth_per_step']:.3g} over {t['steps']} steps"
            )
        for d in self.dominant[:3]:
            lines.append(
                f"dominant: meta-gradient{d['leaf']} ({d['share']:.0%} of the change, largest at "
                f"index {tuple(d['index'])})"
            )
        lines += [f"cause: {c}" for c in self.causes]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def relative_error(grad: Any, reference: Any) -> float:
    """``max|g - g_ref| / max|g_ref|`` over all leaves: the error relative to the gradient's scale
    (an element-wise ratio is meaningless for entries that are close to zero)."""
    pairs = list(zip(*map(jax.tree.leaves, (grad, reference)), strict=True))
    diff = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b)))) for a, b in pairs)
    scale = max(float(np.max(np.abs(np.asarray(b)))) for _, b in pairs)
    return diff / max(scale, 1e-300)


def check_meta_gradient(
    make: Callable[[str], MetaGradFn],
    args: Sequence[Any],
    *,
    perturb: int,
    modes: Sequence[str] = MODES,
    reference_mode: str = "reverse",
    delta: float = DEFAULT_DELTA,
    directions: int = 2,
    max_error: float = 1e-3,
    max_sensitivity: float = 1e-3,
    seed: int = 0,
    trajectory: Callable[[Sequence[Any], Any], dict[str, Any]] | None = None,
) -> CheckReport:
    """Checks any meta-gradient: float32 modes against float64, and its conditioning.

    Args:
      make: ``mode -> fn``, where ``fn(*args)`` returns ``(outer value, meta-gradient)`` computed
        with that differentiation mode (e.g. ``lambda m: jax.jit(build(m))``).
      args: the arguments of ``fn`` (float32; they are cast to float64 for the reference).
      perturb: index into ``args`` of the initial inner parameters (for MAML: the meta-parameters),
        the input perturbed in the sensitivity estimate.
      modes: the modes whose float32 meta-gradients are compared with the reference.
      reference_mode: mode of the float64 reference (``"reverse"``, or ``"remat"`` to save memory;
        both are plain reverse-over-reverse).
      delta: relative perturbation: each coordinate x of ``args[perturb]`` becomes
        ``x · (1 + delta · ξ)`` with ξ standard normal.
      directions: random directions ξ tried; the sensitivity is the largest change.
      max_error: largest float32 error (max-relative) still called sound.
      max_sensitivity: largest sensitivity still called sound.
      seed: seed of the perturbation directions.
      trajectory: optional ``(args64, direction) -> dict`` of inner-trajectory figures (used by
        ``check``; see ``CheckReport.trajectory``).

    Returns:
      A ``CheckReport``.
    """
    for m in (*modes, reference_mode):
        validate_mode(m, "check: modes")
    if reference_mode == "mixflow":
        raise ValueError(
            "check: reference_mode must be 'reverse' or 'remat' (plain reverse-over-reverse), so "
            "that the reference does not share the mixed-mode code path it is checking."
        )
    if not (isinstance(perturb, int) and 0 <= perturb < len(args)):
        raise ValueError(
            f"check: perturb must be the index of the initial parameters in args (0..{len(args) - 1});"
            f" got {perturb!r}."
        )
    if not 0 < delta < 1e-2:
        raise ValueError(
            f"check: delta must be a small positive number (e.g. 1e-6); got {delta!r}."
        )

    float32 = {m: _grad_of(jax.jit(make(m))(*args)) for m in modes}
    ref = float64_reference(
        make,
        args,
        perturb=perturb,
        reference_mode=reference_mode,
        delta=delta,
        directions=directions,
        seed=seed,
        confirm_above=max_sensitivity,
    )
    errors = {m: relative_error(g, ref.grad) for m, g in float32.items()}
    sensitivity = ref.sensitivity
    # A change that does not shrink with the perturbation is a jump (an activation kink crossed),
    # not an amplification: within its smooth piece the meta-gradient is as sensitive as the
    # small-delta figure says.
    small = ref.small_delta_sensitivity
    jump = bool(np.isfinite(small)) and small <= max_sensitivity and small <= 0.1 * sensitivity
    smooth_sensitivity = ref.small_delta_sensitivity if jump else sensitivity
    traj = {}
    if trajectory is not None:
        with jax.enable_x64(True), jax.default_device(jax.devices("cpu")[0]):
            traj = trajectory(ref.args, ref.direction)
    amplification = sensitivity / delta
    dominant = _dominant_leaves(ref.change)
    backend = jax.default_backend()
    # jax.config's options are attributes set at run time, absent from its type stubs.
    matmul_precision = jax.config.jax_default_matmul_precision  # type: ignore[attr-defined]
    precision = str(matmul_precision or "default")
    causes = _causes(
        errors,
        smooth_sensitivity,
        amplification,
        traj,
        backend,
        precision,
        max_error,
        max_sensitivity,
    )
    notes = []
    if jump:
        notes.append(
            f"non-smooth: a {delta:g} perturbation moved the meta-gradient by {sensitivity:.2e}, "
            f"a {delta / 100:g} one by {ref.small_delta_sensitivity / 100:.2e}: the large change "
            "is a jump, not a linear response; the perturbation crossed a kink of the inner loss "
            "(e.g. a ReLU switching). The meta-gradient is "
            "piecewise smooth; within a piece it amplifies perturbations "
            f"{ref.small_delta_sensitivity / delta:.3g}-fold. Use a smooth activation (GELU, "
            "softplus) if the meta-objective must be smooth."
        )
    sound = smooth_sensitivity <= max_sensitivity and all(e <= max_error for e in errors.values())
    return CheckReport(
        rel_error_vs_float64=errors,
        sensitivity=sensitivity,
        delta=delta,
        amplification=amplification,
        verdict="sound" if sound else "ill-conditioned",
        causes=causes,
        notes=notes,
        small_delta_sensitivity=ref.small_delta_sensitivity,
        dominant=dominant,
        trajectory=traj,
        reference={"mode": reference_mode, "dtype": ref.dtype, "device": "cpu"},
        precision=precision,
        backend=backend,
    )


class Reference(NamedTuple):
    """A float64 meta-gradient and its sensitivity (see ``float64_reference``).

    Attributes:
      grad: the float64 meta-gradient (numpy leaves).
      sensitivity: largest relative change of ``grad`` over the perturbation directions tried.
      change: the change of ``grad`` in that direction.
      direction: that direction ξ (structured like ``args[perturb]``).
      args: the arguments cast to float64 (on the CPU).
      dtype: the dtypes of ``grad`` (``"float64"`` unless the function forces another).
      small_delta_sensitivity: when ``sensitivity`` exceeded ``confirm_above``: the change for a
        perturbation ``delta / 100`` along the same direction, times 100 (equal to
        ``sensitivity`` when the response is linear, much smaller when ``sensitivity`` came from
        a jump, e.g. a ReLU kink crossed); else ``nan``.
    """

    grad: Any
    sensitivity: float
    change: Any
    direction: Any
    args: tuple[Any, ...]
    dtype: str
    small_delta_sensitivity: float


def float64_reference(
    make: Callable[[str], MetaGradFn],
    args: Sequence[Any],
    *,
    perturb: int,
    reference_mode: str = "reverse",
    delta: float = DEFAULT_DELTA,
    directions: int = 2,
    seed: int = 0,
    confirm_above: float | None = None,
) -> Reference:
    """The float64 meta-gradient on the CPU, and its sensitivity to a relative ``delta``
    perturbation ``x · (1 + delta · ξ)`` of ``args[perturb]`` (ξ standard normal; the largest
    change over ``directions`` draws). Arguments are as for ``check_meta_gradient``; with
    ``confirm_above``, a sensitivity above it is re-measured at ``delta / 100`` (see
    ``Reference.small_delta_sensitivity``)."""
    cpu = jax.devices("cpu")[0]
    with jax.enable_x64(True), jax.default_device(cpu):
        args64 = tuple(jax.device_put(_cast(tuple(args), jnp.float64), cpu))
        fn64 = jax.jit(make(reference_mode))
        ref = _grad_of(fn64(*args64))
        rng = np.random.default_rng(seed)

        def change_along(xi: Any, step: float) -> Any:
            moved = list(args64)
            moved[perturb] = jax.tree.map(
                lambda x, e: x * (1 + step * e) if _is_float(x) else x, args64[perturb], xi
            )
            return jax.tree.map(lambda a, b: a - b, _grad_of(fn64(*moved)), ref)

        def size(change: Any) -> float:
            return relative_error(jax.tree.map(lambda c, r: c + r, change, ref), ref)

        best = None
        for _ in range(directions):
            xi = jax.tree.map(lambda x: rng.standard_normal(np.shape(x)), args64[perturb])
            change = change_along(xi, delta)
            if best is None or size(change) > best[0]:
                best = (size(change), change, xi)
        assert best is not None
        small = float("nan")
        if confirm_above is not None and best[0] > confirm_above:
            small = 100 * size(change_along(best[2], delta / 100))
    dtypes = ",".join(sorted({str(x.dtype) for x in jax.tree.leaves(ref)}))
    return Reference(ref, best[0], best[1], best[2], args64, dtypes, small)


def check(
    problem: Any,
    meta: Any,
    *,
    outer_batch: Any,
    params: Any = None,
    inner_batches: Any = None,
    inner_batch: Any = None,
    modes: Sequence[str] = MODES,
    **options: Any,
) -> CheckReport:
    """Checks the meta-gradient of a ``metagrad.Bilevel`` problem (see ``check_meta_gradient``).

    Besides the float64 comparison and the sensitivity, it follows a perturbation of θ₀ through the
    inner loop in forward mode (float64) and reports how much the first inner step amplifies it,
    how fast it grows per step after that, and, when the first step is the culprit, how small the
    inner gradients of the amplified coordinates are compared with the typical one. Large
    first-step gains on near-zero gradients point to an adaptive optimiser's root.

    Args:
      problem: a ``metagrad.Bilevel``.
      meta: the meta-parameters.
      outer_batch: as for ``Bilevel.value_and_grad``.
      params: as for ``Bilevel.value_and_grad``.
      inner_batches: as for ``Bilevel.value_and_grad``.
      inner_batch: as for ``Bilevel.value_and_grad``.
      modes: modes to compare with the float64 reference.
      **options: keyword options of ``check_meta_gradient`` (``delta``, ``reference_mode``,
        ``max_error``, ``max_sensitivity``, ``seed``, ``directions``).

    Returns:
      A ``CheckReport``.

    Examples:
      A learned learning rate of four inner Adam steps (ε inside the root, as it must be):

      >>> import jax.numpy as jnp, optax
      >>> import metagrad
      >>> batch = (jnp.arange(12.0).reshape(4, 3) / 10, jnp.array([1.0, 0.0, -1.0, 0.5]))
      >>> problem = metagrad.Bilevel(
      ...     inner_loss=lambda p, lr, b: jnp.mean((b[0] @ p - b[1]) ** 2),
      ...     outer_loss=lambda p, lr, b: jnp.mean((b[0] @ p - b[1]) ** 2),
      ...     inner_optimizer=lambda lr: optax.adam(lr, eps_root=metagrad.EPS_ROOT),
      ...     steps=4,
      ... )
      >>> report = metagrad.check(
      ...     problem, jnp.asarray(0.05), params=jnp.full(3, 0.1), inner_batch=batch,
      ...     outer_batch=batch,
      ... )
      >>> report.verdict, report.causes
      ('sound', [])
      >>> print(report.summary())  # doctest: +ELLIPSIS
      verdict: sound
      float32 vs float64 reference (max-relative): reverse ...
    """
    from metagrad.bilevel import Bilevel

    if not isinstance(problem, Bilevel):
        raise TypeError(
            f"check: problem must be a metagrad.Bilevel; got {type(problem).__name__}. For any "
            "other meta-gradient function use metagrad.check_meta_gradient(make, args, perturb=...)."
        )
    maml = problem.init_params is not None
    if maml == (params is not None):
        raise ValueError(
            "check: pass params=... (the initial parameters) unless the problem has init_params "
            "(then the meta-parameters are the initial parameters and params must be omitted)."
        )

    def make(mode: str) -> MetaGradFn:
        variant = dataclasses.replace(problem, mode=mode)

        def fn(m: Any, p: Any, xs: Any, x: Any, val: Any) -> tuple[jax.Array, Any]:
            return variant.value_and_grad(
                m, params=p, inner_batches=xs, inner_batch=x, outer_batch=val
            )

        return fn

    def trajectory(args64: Sequence[Any], xi: Any) -> dict[str, Any]:
        return _trajectory_growth(problem, args64, xi, maml)

    args = (meta, params, inner_batches, inner_batch, outer_batch)
    return check_meta_gradient(
        make, args, perturb=0 if maml else 1, modes=modes, trajectory=trajectory, **options
    )


# -- the trajectory analysis -------------------------------------------------------------------


def _trajectory_growth(problem: Any, args64: Sequence[Any], xi: Any, maml: bool) -> dict[str, Any]:
    """Forward-mode tangent of θ_t for a perturbation ``θ₀ · ξ`` of the initial parameters."""
    from metagrad.bilevel import Bilevel

    meta, params, inner_batches, inner_batch, _ = args64
    theta0 = problem.init_params(meta) if maml else params
    start = meta if maml else params
    tangent0 = jax.tree.map(lambda x, e: x * e, start, xi)

    def after(steps: int) -> Callable[[Any], Any]:
        masks = None if problem.update_masks is None else problem.update_masks[:steps]
        short: Bilevel = dataclasses.replace(
            problem, steps=steps, update_masks=masks, mode="reverse"
        )
        xs = None if inner_batches is None else jax.tree.map(lambda b: b[:steps], inner_batches)

        def run(s: Any) -> Any:
            m, p = (s, None) if maml else (meta, s)
            return short.adapt(m, params=p, inner_batches=xs, inner_batch=inner_batch).params

        return run

    d0 = jax.tree.map(lambda x, e: x * e, theta0, xi) if maml else tangent0
    _, d1 = jax.jvp(after(1), (start,), (tangent0,))
    steps = problem.steps
    growth = 1.0
    if steps > 1:
        _, dT = jax.jvp(after(steps), (start,), (tangent0,))
        # Not measurable when tangents went through √0 (they are not finite).
        growth = (
            (_norm(dT) / max(_norm(d1), 1e-300)) ** (1.0 / (steps - 1))
            if np.all(np.isfinite(_flat(dT)))
            else float("nan")
        )
    g0 = _first_inner_gradient(problem, meta, theta0, inner_batches, inner_batch)
    optimizer = problem.optimizer(meta)
    return {
        "steps": steps,
        "first_step_gain": _finite_norm(d1) / max(_norm(d0), 1e-300),  # finite coordinates
        "growth_per_step": float(growth),
        **_root_probe(optimizer, theta0, g0),
        "adaptive_update": _is_adaptive(optimizer, theta0, g0),
    }


def _root_probe(optimizer: Any, params: Any, g: Any) -> dict[str, Any]:
    """Whether the optimiser's first update has a finite derivative at a zero gradient.

    An update ``lr · m̂ / (√v̂ + ε)`` (ε outside the root) has no finite derivative at ``g = 0``
    (its one-sided derivative is ``lr / ε``) and derivatives up to ``lr / ε`` near it; in forward
    mode the tangent through ``√0`` is not finite, which this probe detects. With ε inside the root
    (``√(v̂ + eps_root)``) or for (momentum) SGD it is finite. Also counts the near-zero inner
    gradients (below 1e-3 of the median), the coordinates such an update amplifies."""
    state = optimizer.init(params)
    zeros = jax.tree.map(jnp.zeros_like, g)
    ones = jax.tree.map(jnp.ones_like, g)
    _, du = jax.jvp(lambda x: optimizer.update(x, state, params)[0], (zeros,), (ones,))
    flat_g = np.abs(_flat(g))
    median_g = float(np.median(flat_g))
    return {
        "root_safe": bool(np.all(np.isfinite(_flat(du)))),
        "zero_gradients": int(np.sum(flat_g == 0)),
        "near_zero_gradients": int(np.sum(flat_g < 1e-3 * median_g)),
    }


def _first_inner_gradient(
    problem: Any, meta: Any, theta0: Any, inner_batches: Any, inner_batch: Any
) -> Any:
    batch = inner_batch if inner_batches is None else jax.tree.map(lambda b: b[0], inner_batches)
    return jax.grad(problem.inner_loss)(theta0, meta, batch)


def _is_adaptive(optimizer: Any, params: Any, g: Any) -> bool:
    """Whether the optimiser's first update is not proportional to the gradient (Adam, RMSProp,
    ...): then a tiny gradient can produce an update of the full step size."""
    state = optimizer.init(params)
    u1, _ = optimizer.update(g, state, params)
    u2, _ = optimizer.update(jax.tree.map(lambda x: 1e-3 * x, g), state, params)
    return relative_error(jax.tree.map(lambda a: 1e3 * a, u2), u1) > 1e-2


def _causes(
    errors: dict[str, float],
    sensitivity: float,
    amplification: float,
    traj: dict[str, Any],
    backend: str,
    precision: str,
    max_error: float,
    max_sensitivity: float,
) -> list[str]:
    causes = []
    if sensitivity > max_sensitivity:
        if traj and traj["adaptive_update"] and not traj["root_safe"]:
            causes.append(
                "adaptive optimiser with ε outside the square root: its first update "
                "≈ lr·g/(|g|+ε) has derivative up to lr/ε at near-zero inner gradients (here "
                f"{traj['near_zero_gradients']} coordinates below 1e-3 of the median, "
                f"{traj['zero_gradients']} exactly zero), and those coordinates dominate the "
                "meta-gradient; " + ADVICE_ROOT + "."
            )
        growth = traj.get("growth_per_step", float("nan"))
        if (
            traj
            and traj["steps"] > 1
            and np.isfinite(growth)
            and growth ** (traj["steps"] - 1) > 100
        ):
            causes.append(
                f"tangent growth along the trajectory: ×{traj['growth_per_step']:.3g} per inner "
                f"step over {traj['steps']} steps (expanding inner Jacobians); lower the inner "
                "learning rate, unroll fewer steps (truncated meta-gradients), or add damping."
            )
        if not causes:
            causes.append(
                f"the float64 meta-gradient amplifies a relative input perturbation "
                f"{amplification:.3g}-fold; no single inner step explains it (look at the "
                "dominant leaves). Shorten the unroll, lower the inner learning rate, or check "
                "the loss for near-singular operations."
            )
    worst = max(errors.values(), default=0.0)
    if worst > max_error:
        if backend != "cpu" and precision != "highest":
            causes.append(
                f"low-precision matmuls on {backend} (precision {precision!r}, e.g. TF32 or bf16 "
                f"passes): float32 error {worst:.2e}; run under "
                "jax.default_matmul_precision('highest') (or metagrad bench --precision highest) "
                "for an exact comparison."
            )
        elif sensitivity <= max_sensitivity:
            causes.append(
                f"float32 rounding: error {worst:.2e} against float64 although the float64 "
                "problem is well-conditioned; look for float32 constants or accumulations in the "
                "losses, or compute in float64."
            )
    return causes


# -- small helpers ------------------------------------------------------------------------------


def _grad_of(out: Any) -> Any:
    """The meta-gradient of ``(value, grad)`` as numpy (float64 where it was)."""
    _, g = out
    return jax.tree.map(np.asarray, g)


def _cast(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda x: jnp.asarray(x, dtype) if _is_float(x) else x, tree)


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _flat(tree: Any) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _finite_norm(tree: Any) -> float:
    """Norm over the finite coordinates (a tangent through √0 is not finite)."""
    flat = _flat(tree)
    return float(np.linalg.norm(flat[np.isfinite(flat)]))


def _norm(tree: Any) -> float:
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(x))) for x in jax.tree.leaves(tree))))


def _dominant_leaves(change: Any, top: int = 5) -> list[dict[str, Any]]:
    leaves = jax.tree_util.tree_leaves_with_path(change)
    energy = [float(np.sum(np.square(x))) for _, x in leaves]
    total = max(sum(energy), 1e-300)
    order = np.argsort(energy)[::-1][:top]
    out = []
    for i in order:
        path, x = leaves[i]
        x = np.asarray(x)
        index = np.unravel_index(int(np.argmax(np.abs(x))), x.shape) if x.size else ()
        out.append(
            {
                "leaf": jax.tree_util.keystr(path),
                "share": energy[i] / total,
                "index": [int(k) for k in index],
            }
        )
    return out


def _finite_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_json(v) for v in value]
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return str(float(value))
    if isinstance(value, np.floating | np.integer | np.bool_):
        return value.item()
    return value
