"""Unrolled inner loops whose differentiation strategy is one switch.

References:
    Kemaev et al., *Scalable Meta-Learning via Mixed-Mode Differentiation* (MixFlow-MG), ICML 2025.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from metagrad import planner
from metagrad.autodiff import INNER_GRAD_NAME, differentiation_mode, validate_mode
from metagrad.schedules import Schedule, segment_lengths

Carry = Any
Step = Callable[[Carry, Any], tuple[Carry, Any]]


def unroll(
    step: Step,
    carry: Carry,
    xs: Any = None,
    *,
    mode: str = "mixflow",
    length: int | None = None,
    schedule: Schedule = None,
    memory_budget: int | None = None,
    autotune: bool = False,
) -> tuple[Carry, Any]:
    """Runs ``step`` over ``xs`` like ``jax.lax.scan``, differentiated with the strategy ``mode``.

    You write the inner step once. ``mode`` decides how a meta-gradient through the loop is
    computed. The forward values are the same in every mode:

    * ``"reverse"``: a plain scan. ``metagrad.grad`` inside ``step`` is ``jax.grad``, so the
      meta-gradient is reverse-over-reverse. This is the reference, and memory grows like
      T × (activations of one inner gradient).
    * ``"remat"``: each step under ``jax.checkpoint``, with everything recomputed in the backward
      pass. ``metagrad.grad`` is still ``jax.grad``.
    * ``"mixflow"``: each step under ``jax.checkpoint`` with a policy that saves only the inner
      gradients. ``metagrad.grad`` is the mixed-mode node, so its second-order products come from
      one forward-over-reverse pass and its backward pass needs only the step's inputs. The memory
      is one step's activations plus T copies of (parameters, optimiser state, gradient).

    Args:
      step: ``(carry, x) -> (carry, y)``, as for ``jax.lax.scan``. Take inner gradients with
        ``metagrad.grad`` or ``metagrad.value_and_grad`` so that ``mode`` applies to them.
      carry: initial carry (any pytree).
      xs: pytree of arrays with a leading axis to scan over, or ``None`` (then give ``length``).
      mode: ``"reverse"``, ``"remat"``, ``"mixflow"``, or ``"auto"``. With ``"auto"``, each
        candidate strategy (mode × schedule) of this loop's meta-gradient is compiled, and the
        fastest one whose compiled memory fits ``memory_budget`` is used (see
        ``metagrad.planner``). This costs one compilation per candidate at trace time.
      length: number of steps. Required when ``xs`` is ``None``.
      schedule: which inner states the backward pass keeps along the trajectory. This composes with
        every ``mode``:

        * ``None``: every step's carry (T states).
        * ``k`` (int): the carry every k steps. Each k-step segment is recomputed once in the
          backward pass, so T/k + k states are kept.
        * ``"sqrt"``: k ≈ √T, about 2√T states, for one extra forward pass.
        * ``(k1, k2, ...)``: nested segments. The outer segments have k1 steps, each is split into
          segments of k2 steps, and so on. Memory is about T/k1 + k1/k2 + ... states, with one
          recomputation per level: a Revolve-like multi-level schedule (e.g. ``(64, 8)`` for T=512
          keeps ~24 states and recomputes each step twice).
      memory_budget: bytes for ``mode="auto"``: the limit on the compiled memory of the loop's
        meta-gradient (the gradient of its outputs w.r.t. its initial carry and every value
        ``step`` closes over).
      autotune: for ``mode="auto"``: also run the fitting candidates whose estimated time is
        close to the best and keep the fastest measured (``metagrad.planner.autotune``). Costs a
        few runs of the meta-gradient at trace time; inputs that are tracers are replaced by
        example values of the same shapes.

    Returns:
      ``(final_carry, stacked_ys)`` exactly as ``jax.lax.scan`` returns them.

    Examples:
      The meta-gradient of a validation loss with respect to an inner learning rate, through three
      inner SGD steps; every mode gives the same value:

      >>> import jax, jax.numpy as jnp
      >>> import metagrad
      >>> def step(carry, x):
      ...     w, lr = carry
      ...     g = metagrad.grad(lambda w: jnp.sum((w - x) ** 2))(w)
      ...     return (w - lr * g, lr), jnp.sum(w)
      >>> def outer(lr, mode):
      ...     (w, _), _ = metagrad.unroll(step, (jnp.zeros(2), lr), jnp.ones((3, 2)), mode=mode)
      ...     return jnp.sum((w - 1.0) ** 2)
      >>> [round(float(jax.grad(outer)(0.1, mode)), 3) for mode in ("reverse", "remat", "mixflow")]
      [-7.864, -7.864, -7.864]

    References:
      Kemaev et al., ICML 2025, Section 3 (mixed-mode gradient node, step-level rematerialisation).
    """
    if xs is None and length is None:
        raise ValueError(
            "unroll: give xs (a pytree with a leading step axis) or length (the number of steps); "
            "got neither."
        )
    if length is not None and (not isinstance(length, int) or length < 0):
        raise ValueError(f"unroll: length must be a non-negative int; got {length!r}.")
    if mode == "auto":
        if schedule is not None:
            raise ValueError(
                "unroll: mode='auto' chooses the schedule too; leave schedule=None, or pick a "
                "mode yourself to use a fixed schedule."
            )
        choice = plan_unroll(
            step, carry, xs, length=length, memory_budget=memory_budget, autotune=autotune
        ).choice
        if choice is None:
            raise ValueError(
                f"unroll: no strategy fits memory_budget={memory_budget} bytes; run "
                "metagrad.plan_unroll(...) to see each candidate's memory, then raise the "
                "budget or shrink the problem."
            )
        mode, schedule = choice.candidate.mode, choice.candidate.schedule
    validate_mode(mode)
    if mode == "remat":
        body = jax.checkpoint(step)
    elif mode == "mixflow":
        body = jax.checkpoint(
            step, policy=jax.checkpoint_policies.save_only_these_names(INNER_GRAD_NAME)
        )
    else:
        body = step
    steps = _num_steps(xs, length)
    segments = segment_lengths(schedule, steps)
    # The mode is read while scan traces ``step``, which happens inside this context.
    with differentiation_mode(mode):
        return _segmented_scan(body, carry, xs, steps, segments)


def plan_unroll(
    step: Step,
    carry: Carry,
    xs: Any = None,
    *,
    length: int | None = None,
    memory_budget: int | None = None,
    candidates: Any = None,
    autotune: bool = False,
) -> Any:
    """Compiles the meta-gradient of this loop for every candidate strategy (run only to autotune).

    The program planned is the gradient of the sum of the loop's floating-point outputs w.r.t. its
    initial carry and every floating-point value ``step`` closes over (e.g. meta-parameters). This
    is the part of a meta-gradient whose cost depends on the strategy.

    Args:
      step: as for ``unroll``.
      carry: as for ``unroll``.
      xs: as for ``unroll``.
      length: as for ``unroll``.
      memory_budget: bytes the compiled program may use (``None``: no limit).
      candidates: ``metagrad.planner.Candidate``s (default: ``default_candidates(T)``).
      autotune: also time the close candidates that fit and choose the fastest measured
        (``metagrad.planner.autotune``).

    Returns:
      A ``metagrad.planner.Plan``: every candidate's memory, FLOPs, estimated time (and measured
      time, with ``autotune``), and the choice.
    """
    steps = _num_steps(xs, length)
    x0 = jax.tree.map(lambda x: x[0], xs)

    def spec(tree: Any) -> Any:
        # Concrete arrays are kept (autotune then runs on the real values); tracers and Python
        # scalars become shapes.
        return jax.tree.map(
            lambda a: (
                a
                if isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer)
                else jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a))
            ),
            tree,
        )

    def build(candidate: Any) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        # Trace step under the candidate's mode: the mode of metagrad.grad is fixed when traced.
        with differentiation_mode(candidate.mode):
            closed, consts = jax.closure_convert(step, carry, x0)

        def loop_output(c: Carry, seq: Any, hoisted: list[Any]) -> jax.Array:
            out = unroll(
                lambda a, b: closed(a, b, *hoisted),
                c,
                seq,
                mode=candidate.mode,
                length=steps,
                schedule=candidate.schedule,
            )
            return jnp.asarray(
                sum(jnp.sum(leaf) for leaf in jax.tree.leaves(out) if _is_float(leaf))
            )

        grad_fn = jax.jit(_grad_wrt_floats(loop_output, argnums=(0, 2)))
        return grad_fn, (spec(carry), spec(xs), spec(list(consts)))

    result = planner.plan(
        build,
        memory_budget=memory_budget,
        candidates=candidates or planner.default_candidates(steps),
    )
    return planner.autotune(result, build) if autotune else result


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _grad_wrt_floats(fun: Callable[..., jax.Array], argnums: tuple[int, ...]) -> Callable[..., Any]:
    """Gradient of ``fun`` w.r.t. the floating-point leaves of the ``argnums`` arguments only
    (integer leaves such as optimiser step counts are held fixed)."""

    def grads(*args: Any) -> Any:
        leaves = {a: jax.tree.flatten(args[a]) for a in argnums}
        floats = {a: [x for x in leaves[a][0] if _is_float(x)] for a in argnums}

        def of_floats(fl: dict[int, list[Any]]) -> jax.Array:
            rebuilt = list(args)
            for a in argnums:
                it = iter(fl[a])
                rebuilt[a] = jax.tree.unflatten(
                    leaves[a][1], [next(it) if _is_float(x) else x for x in leaves[a][0]]
                )
            return fun(*rebuilt)

        return jax.grad(of_floats)(floats)

    return grads


def _num_steps(xs: Any, length: int | None) -> int:
    leaves = jax.tree.leaves(xs)
    if leaves:
        n = {int(jnp.shape(x)[0]) for x in leaves}
        if len(n) != 1 or (length is not None and length not in n):
            raise ValueError(
                "unroll: every leaf of xs needs the same leading (step) axis, equal to length if "
                f"given; got leading sizes {sorted(n)} and length={length}."
            )
        return n.pop()
    assert length is not None
    return length


def _segmented_scan(
    body: Step, carry: Carry, xs: Any, steps: int, segments: tuple[int, ...]
) -> tuple[Carry, Any]:
    """``lax.scan(body, carry, xs)``. With ``segments``, the states kept are those at the start of
    each (nested) segment; the backward pass recomputes segments from them."""
    if not segments or steps <= segments[0]:
        return jax.lax.scan(body, carry, xs, length=steps)
    k, inner = segments[0], segments[1:]

    def run(c: Carry, seg_xs: Any, n: int) -> tuple[Carry, Any]:
        return _segmented_scan(body, c, seg_xs, n, inner)

    # jax.checkpoint with the default policy saves only its inputs: the carry at the segment start.
    segment = jax.checkpoint(lambda c, seg_xs: run(c, seg_xs, k))
    n_full, rest = divmod(steps, k)
    head = jax.tree.map(lambda x: x[: n_full * k].reshape(n_full, k, *x.shape[1:]), xs)
    carry, ys = jax.lax.scan(segment, carry, head, length=n_full)
    ys = jax.tree.map(lambda y: y.reshape(n_full * k, *y.shape[2:]), ys)
    if rest:
        tail = jax.tree.map(lambda x: x[n_full * k :], xs)
        carry, ys_tail = jax.checkpoint(lambda c, t: run(c, t, rest))(carry, tail)
        ys = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), ys, ys_tail)
    return carry, ys
