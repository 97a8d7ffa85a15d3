"""Bilevel problems: an inner training loop, an outer objective, and the meta-gradient between them.

One routine covers the common cases, because meta-parameters ``meta`` (any pytree) may appear
anywhere:

* in the inner loss, e.g. per-example or per-token loss weights: ``inner_loss(params, meta, batch)``;
* in the inner optimiser, e.g. learning rates:
  ``inner_optimizer=lambda meta: optax.adam(meta["lr"], eps_root=metagrad.EPS_ROOT)``,
  ``optax.inject_hyperparams``, or per-parameter rates with ``metagrad.scale_by_learning_rates``;
* as the initial parameters (MAML): ``init_params=lambda meta: meta["params"]``.

MAML, Meta-SGD, iMAML and learned optimiser hyper-parameters are configurations of ``Bilevel``,
not separate engines. ``method`` chooses how the meta-gradient is taken: ``"unroll"`` (default)
differentiates through the inner trajectory, with the ``mode`` switch of ``metagrad.unroll``;
``"implicit"`` runs the same inner loop without differentiation and differentiates through the
optimality condition ``∇_θ inner_loss(θ_T, meta, batch) = 0`` of its result
(``metagrad.argmin_solution``).

References:
    Kemaev et al., *Scalable Meta-Learning via Mixed-Mode Differentiation*, ICML 2025.
    Rajeswaran, Finn, Kakade, Levine. *Meta-Learning with Implicit Gradients*, NeurIPS 2019.
    Finn, Abbeel, Levine. *Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks*,
    ICML 2017.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, Required, TypeAlias, TypedDict, Unpack, overload

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metagrad.autodiff import validate_mode, value_and_grad
from metagrad.implicit import ImplicitConfig, argmin_solution
from metagrad.nonfinite import all_finite
from metagrad.schedules import Schedule, segment_lengths
from metagrad.treecheck import require_floating_leaves
from metagrad.unrolling import unroll

Params = Any
Meta = Any
Batch = Any
Loss = Callable[[Params, Meta, Batch], jax.Array]
METHODS: tuple[str, ...] = ("unroll", "implicit")
OptimizerSpec: TypeAlias = (
    optax.GradientTransformation | Callable[[Meta], optax.GradientTransformation]
)


class BilevelData(TypedDict, total=False):
    """The data keyword arguments of ``Bilevel.value_and_grad`` (for type checkers)."""

    outer_batch: Required[Batch]
    params: Params | None
    inner_batches: Batch | None
    inner_batch: Batch | None
    opt_state: Any


class InnerResult(NamedTuple):
    """What an inner loop leaves behind.

    Attributes:
      params: the adapted parameters θ_T.
      opt_state: the inner optimiser's state after T steps.
      losses: the inner loss at each step, shape ``(T,)`` (evaluated before each update).
    """

    params: Params
    opt_state: Any
    losses: jax.Array


@dataclasses.dataclass(frozen=True)
class Bilevel:
    """A bilevel problem: ``min_meta V(θ_T(meta), meta)``, where θ_T comes from T inner steps.

    Attributes:
      inner_loss: ``(params, meta, batch) -> scalar``, the loss the inner optimiser minimises.
      outer_loss: ``(params, meta, batch) -> scalar``, evaluated at the adapted parameters.
      inner_optimizer: an ``optax.GradientTransformation``, or a function ``meta -> transformation``
        when the optimiser depends on meta-parameters (learning rates, momentum, ...). Adaptive
        optimisers need ε inside the square root (``optax.adam(lr, eps_root=metagrad.EPS_ROOT)``):
        with it outside, the meta-gradient is ill-conditioned (``metagrad.check`` says so).
      steps: number of inner steps T.
      init_params: ``meta -> params``, when the initial parameters are meta-parameters (MAML).
        Leave ``None`` and pass ``params=`` to the methods when they are not.
      mode: differentiation strategy: ``"mixflow"`` (default), ``"remat"``, ``"reverse"``, or
        ``"auto"`` (the fastest mode × schedule whose compiled memory fits ``memory_budget``,
        chosen per unrolled segment by ``metagrad.unroll``).
      schedule: trajectory checkpoint schedule of the inner loop (see ``metagrad.unroll``); not
        with ``mode="auto"``, which chooses it.
      memory_budget: bytes for ``mode="auto"`` (``None``: no limit).
      update_masks: optional static update pattern: a sequence of ``steps`` masks, one per inner
        step, each a prefix pytree of the parameters with Python ``bool`` leaves (for a list of
        layer dicts: one bool per layer). ``True`` means "update this part at this step". Within a
        run of consecutive steps with the same mask (a *segment*, run by one ``unroll``) the inner
        gradient is taken only with respect to the active leaves, so a frozen leaf's gradient is
        never computed, and the backward pass stops below the lowest active layer. Frozen leaves
        keep their value exactly; the optimiser state is kept for all parameters and sees a zero
        gradient for frozen leaves (so e.g. momentum decays and Adam's step count advances), and
        its update for them is discarded. ``None`` (default) updates everything at every step.
      first_order: if ``True``, the inner gradients are treated as constants in the meta-gradient
        (``jax.lax.stop_gradient``): first-order MAML. Learning rates in the optimiser still
        receive their (first-order) meta-gradient.
      method: ``"unroll"`` (default): the meta-gradient through the T inner steps (``mode``,
        ``schedule``, ``update_masks``, ``first_order`` apply). ``"implicit"``: the T steps are
        run without differentiation, and the meta-gradient comes from the implicit function
        theorem at their result θ_T, as if ``∇_θ inner_loss(θ_T, meta, inner_batch) = 0``: one
        linear solve with forward-over-reverse Hessian-vector products, memory independent of
        T. It is exact only when the inner loop has (nearly) reached a minimum, and it needs
        ``inner_batch`` (the data of the inner objective). Meta-parameters that enter only
        through the inner optimiser (learning rates) or ``init_params`` have no influence on the
        minimum: their implicit meta-gradient is zero. Not with ``update_masks``, ``schedule``,
        ``first_order``, or a ``mode`` other than ``"mixflow"``.
      implicit: the linear solve of ``method="implicit"`` (``metagrad.ImplicitConfig``; default:
        conjugate gradient, 100 iterations, relative tolerance 1e-6).

    Examples:
      Per-example loss weights (``sigmoid(meta)``) learned through three SGD steps of a linear
      regression:

      >>> import jax, jax.numpy as jnp, optax
      >>> import metagrad
      >>> def per_example_loss(p, batch):
      ...     x, y = batch
      ...     return (x @ p - y) ** 2
      >>> problem = metagrad.Bilevel(
      ...     inner_loss=lambda p, w, b: jnp.mean(jax.nn.sigmoid(w) * per_example_loss(p, b)),
      ...     outer_loss=lambda p, w, b: jnp.mean(per_example_loss(p, b)),
      ...     inner_optimizer=optax.sgd(0.1),
      ...     steps=3,
      ... )
      >>> x, y = jnp.arange(12.0).reshape(4, 3) / 10, jnp.array([1.0, 0.0, -1.0, 0.5])
      >>> weights = jnp.zeros(4)
      >>> value, meta_grad = problem.value_and_grad(
      ...     weights, params=jnp.zeros(3), inner_batch=(x, y), outer_batch=(x, y)
      ... )
      >>> round(float(value), 4), meta_grad.shape
      (0.5615, (4,))

    References:
      Kemaev et al., ICML 2025; Finn et al., ICML 2017 (MAML: ``init_params`` as meta-parameters).
    """

    inner_loss: Loss
    outer_loss: Loss
    inner_optimizer: OptimizerSpec
    steps: int
    init_params: Callable[[Meta], Params] | None = None
    mode: str = "mixflow"
    schedule: Schedule = None
    update_masks: Sequence[Any] | None = None
    first_order: bool = False
    memory_budget: int | None = None
    method: str = "unroll"
    implicit: ImplicitConfig | None = None

    def __post_init__(self) -> None:
        # What each function-valued (or config) field must be, as the error message says it.
        expected: dict[str, tuple[Callable[[Any], bool], str]] = {
            "inner_loss": (callable, "a function (params, meta, batch) -> scalar"),
            "outer_loss": (callable, "a function (params, meta, batch) -> scalar"),
            "inner_optimizer": (
                lambda v: isinstance(v, optax.GradientTransformation) or callable(v),
                "an optax.GradientTransformation or a function meta -> GradientTransformation",
            ),
            "init_params": (
                lambda v: v is None or callable(v),
                "a function meta -> params (or None)",
            ),
            "implicit": (
                lambda v: v is None or isinstance(v, ImplicitConfig),
                "a metagrad.ImplicitConfig (or None)",
            ),
        }
        for name, (ok, what) in expected.items():
            value = getattr(self, name)
            if not ok(value):
                raise TypeError(f"Bilevel: {name} must be {what}; got {type(value).__name__}.")
        self._check_method()
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"Bilevel: steps must be a positive int; got {self.steps!r}.")
        if self.mode == "auto":
            if self.schedule is not None:
                raise ValueError(
                    "Bilevel: mode='auto' chooses the schedule too; leave schedule=None, or pick "
                    f"a mode yourself to use schedule={self.schedule!r}."
                )
        else:
            validate_mode(self.mode, "Bilevel: mode")
            if self.memory_budget is not None:
                raise ValueError(
                    f"Bilevel: memory_budget is used by mode='auto' only; got mode={self.mode!r} "
                    f"and memory_budget={self.memory_budget!r}. Set mode='auto', or drop "
                    "memory_budget."
                )
        if self.memory_budget is not None and not (
            isinstance(self.memory_budget, int)
            and not isinstance(self.memory_budget, bool)
            and self.memory_budget > 0
        ):
            raise ValueError(
                "Bilevel: memory_budget must be a positive int (bytes) or None; got "
                f"{self.memory_budget!r}."
            )
        segment_lengths(self.schedule, self.steps)  # validates the schedule early
        if not isinstance(self.first_order, bool):
            raise TypeError(f"Bilevel: first_order must be a bool; got {self.first_order!r}.")
        if self.update_masks is not None:
            masks = tuple(self.update_masks)
            if len(masks) != self.steps:
                raise ValueError(
                    f"Bilevel: update_masks needs one mask per inner step (steps={self.steps}); "
                    f"got {len(masks)}. Pass e.g. [mask] * steps for a pattern that is the same "
                    "at every step."
                )
            for k, mask in enumerate(masks):
                for leaf in jax.tree.leaves(mask):
                    if not isinstance(leaf, bool | np.bool_):
                        raise TypeError(
                            f"Bilevel: update_masks[{k}] must have Python bool leaves (the "
                            f"pattern is static: it decides which gradients are compiled); got a "
                            f"leaf of type {type(leaf).__name__}. Convert with bool(...)."
                        )
            # A tuple keeps the (frozen) dataclass hashable-friendly and immutable.
            object.__setattr__(self, "update_masks", masks)

    def _check_method(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"Bilevel: method must be one of {', '.join(METHODS)}; got {self.method!r}."
            )
        if self.method == "unroll":
            if self.implicit is not None:
                raise ValueError(
                    "Bilevel: implicit=ImplicitConfig(...) configures method='implicit'; got "
                    "method='unroll'. Set method='implicit', or drop implicit."
                )
            return
        conflicts = {
            "update_masks": self.update_masks is not None,
            "schedule": self.schedule is not None,
            "first_order": self.first_order,
            "memory_budget": self.memory_budget is not None,
            "mode": self.mode != "mixflow",
        }
        bad = [name for name, set_ in conflicts.items() if set_]
        if bad:
            raise ValueError(
                f"Bilevel: method='implicit' does not differentiate the inner trajectory, so "
                f"{', '.join(bad)} (which shape that differentiation) cannot apply; got "
                + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad)
                + ". Leave them at their defaults, or use method='unroll'."
            )
        object.__setattr__(self, "implicit", self.implicit or ImplicitConfig())

    def optimizer(self, meta: Meta) -> optax.GradientTransformation:
        """The inner optimiser for these meta-parameters."""
        if isinstance(self.inner_optimizer, optax.GradientTransformation):
            return self.inner_optimizer
        return self.inner_optimizer(meta)

    def adapt(
        self,
        meta: Meta,
        *,
        params: Params | None = None,
        inner_batches: Batch | None = None,
        inner_batch: Batch | None = None,
        opt_state: Any = None,
    ) -> InnerResult:
        """Runs the T inner steps.

        Args:
          meta: the meta-parameters (any pytree).
          params: initial parameters, when they are not meta-parameters (no ``init_params``).
          inner_batches: one batch per step, stacked along a leading axis of size ``steps``.
          inner_batch: a single batch used at every step (e.g. a few-shot support set).
            Give exactly one of ``inner_batches`` and ``inner_batch``.
          opt_state: the inner optimiser's initial state, e.g. the state a previous window left
            (online meta-learning through truncated unrolls). Default: ``optimizer.init(params)``.

        Returns:
          An ``InnerResult`` with the adapted parameters, the optimiser state and the inner losses.
          With ``method="implicit"``, the parameters are differentiable in ``meta`` (and in the
          floating-point leaves of ``inner_batch``) through the implicit function theorem; the
          optimiser state and the losses are constants.
        """
        if self.method == "implicit":
            self._require_inner_batch(inner_batches, inner_batch)
            return self._adapt_implicit(meta, params, inner_batch, opt_state)
        return self._adapt_unrolled(meta, params, inner_batches, inner_batch, opt_state)

    @staticmethod
    def _require_inner_batch(inner_batches: Batch | None, inner_batch: Batch | None) -> None:
        if inner_batches is not None or inner_batch is None:
            raise ValueError(
                "Bilevel: method='implicit' differentiates through the minimum of "
                "inner_loss(params, meta, inner_batch), so it needs inner_batch=... (the data of "
                "the inner objective, used at every step); got "
                + (
                    "inner_batches=... (one batch per step)."
                    if inner_batches is not None
                    else "none."
                )
                + " Pass the whole inner data set as inner_batch, or use method='unroll'."
            )

    def _adapt_implicit(
        self, meta: Meta, params: Params | None, inner_batch: Batch, opt_state: Any
    ) -> InnerResult:
        # The inner loop itself is never differentiated: only its result enters the implicit node.
        constant = jax.lax.stop_gradient
        result = self._adapt_unrolled(
            constant(meta),
            None if params is None else constant(params),
            None,
            constant(inner_batch),
            None if opt_state is None else constant(opt_state),
        )
        solution = argmin_solution(
            self.inner_loss, result.params, meta, inner_batch, config=self.implicit
        )
        return InnerResult(solution, result.opt_state, result.losses)

    def _adapt_unrolled(
        self,
        meta: Meta,
        params: Params | None,
        inner_batches: Batch | None,
        inner_batch: Batch | None,
        opt_state: Any,
    ) -> InnerResult:
        params0 = self._initial_params(meta, params)
        opt = self.optimizer(meta)
        xs, fixed = self._step_data(inner_batches, inner_batch)
        carry = (params0, opt.init(params0) if opt_state is None else opt_state)
        segments: Sequence[tuple[list[bool] | None, int, int]]
        if self.update_masks is None:
            segments = [(None, 0, self.steps)]
        else:
            segments = _segments(self.update_masks, params0)
        losses = []
        for active, start, stop in segments:
            seg_xs = None if xs is None else jax.tree.map(lambda b, i=start, j=stop: b[i:j], xs)
            step = self._inner_step(meta, opt, fixed, active)
            carry, seg_losses = unroll(
                step,
                carry,
                seg_xs,
                mode=self.mode,
                length=stop - start,
                schedule=self.schedule,
                memory_budget=self.memory_budget,
            )
            losses.append(seg_losses)
        params_t, opt_state = carry
        losses_all = losses[0] if len(losses) == 1 else jnp.concatenate(losses)
        return InnerResult(params_t, opt_state, losses_all)

    def _inner_step(
        self,
        meta: Meta,
        opt: optax.GradientTransformation,
        fixed: Batch,
        active: list[bool] | None,
    ) -> Callable[[tuple[Params, Any], Batch], tuple[tuple[Params, Any], jax.Array]]:
        """One inner step; ``active`` (one bool per parameter leaf) restricts what is updated."""
        inner_loss = self.inner_loss
        first_order = self.first_order

        if active is None:
            inner_value_and_grad = value_and_grad(inner_loss)

            def step(carry: tuple[Params, Any], batch: Batch) -> tuple[tuple[Params, Any], Any]:
                p, opt_state = carry
                batch = fixed if batch is None else batch
                loss, g = inner_value_and_grad(p, meta, batch)
                if first_order:
                    g = jax.lax.stop_gradient(g)
                updates, opt_state = opt.update(g, opt_state, p)
                return (optax.apply_updates(p, updates), opt_state), loss

            return step

        # Only the active leaves are differentiated: the frozen ones enter as plain inputs, so
        # JAX never builds their weight gradients, and no cotangent flows below the lowest
        # active layer (the frozen prefix's outputs do not depend on anything differentiated).
        # The frozen leaves are still floating-point inputs of the mixed-mode node, which gives
        # their mixed second-order products to the meta-gradient (they depend on meta).
        def masked_step(
            carry: tuple[Params, Any], batch: Batch
        ) -> tuple[tuple[Params, Any], jax.Array]:
            p, opt_state = carry
            batch = fixed if batch is None else batch
            leaves, treedef = jax.tree.flatten(p)
            on = [x for x, a in zip(leaves, active, strict=True) if a]
            off = [x for x, a in zip(leaves, active, strict=True) if not a]
            if on:

                def loss_of_active(on: list[Any], off: list[Any], m: Meta, b: Batch) -> jax.Array:
                    return inner_loss(jax.tree.unflatten(treedef, _merge(active, on, off)), m, b)

                loss, g_on = value_and_grad(loss_of_active)(on, off, meta, batch)
            else:
                # A step that updates nothing computes nothing (its loss is reported as NaN);
                # the optimiser still sees it, so step counters stay aligned with the pattern.
                loss, g_on = jnp.full((), jnp.nan, _loss_dtype(leaves)), []
            if first_order:
                g_on = jax.lax.stop_gradient(g_on)
            zeros = [jnp.zeros_like(x) for x in off]
            g = jax.tree.unflatten(treedef, _merge(active, g_on, zeros))
            updates, opt_state = opt.update(g, opt_state, p)
            new_leaves = jax.tree.leaves(optax.apply_updates(p, updates))
            # Frozen leaves keep their exact value, whatever the optimiser proposed for them.
            kept = [
                new if a else old for new, old, a in zip(new_leaves, leaves, active, strict=True)
            ]
            return (jax.tree.unflatten(treedef, kept), opt_state), loss

        return masked_step

    def outer_value(self, meta: Meta, **data: Unpack[BilevelData]) -> jax.Array:
        """The outer objective V(θ_T(meta), meta, outer_batch), differentiable in ``meta``.

        Compose it freely, e.g. average it over a meta-batch of tasks with ``jax.lax.map`` and
        differentiate the average with ``jax.grad``. Arguments are as in ``adapt``, and
        ``outer_batch``, the batch of the outer objective.
        """
        return self._outer(meta, **data)[0]

    # The overloads only narrow the return type; the keyword arguments are the implementation's.
    @overload
    def value_and_grad(
        self, meta: Meta, *, return_inner: Literal[False] = False, **data: Unpack[BilevelData]
    ) -> tuple[jax.Array, Meta]: ...

    @overload
    def value_and_grad(
        self, meta: Meta, *, return_inner: Literal[True], **data: Unpack[BilevelData]
    ) -> tuple[jax.Array, Meta, InnerResult]: ...

    @overload
    def value_and_grad(
        self, meta: Meta, *, return_inner: bool, **data: Unpack[BilevelData]
    ) -> tuple[jax.Array, Meta] | tuple[jax.Array, Meta, InnerResult]: ...

    def value_and_grad(
        self, meta: Meta, *, return_inner: bool = False, **data: Unpack[BilevelData]
    ) -> tuple[jax.Array, Meta] | tuple[jax.Array, Meta, InnerResult]:
        """The outer value and its exact meta-gradient ``dV/dmeta``.

        Args:
          meta: as in ``adapt``.
          return_inner: also return the ``InnerResult`` of the inner loop (adapted parameters,
            optimiser state, inner losses), e.g. to continue training from it.
          **data: ``outer_batch`` (required) and ``params``, ``inner_batches`` or
            ``inner_batch``, ``opt_state``, as in ``adapt`` and ``outer_value``.

        Returns:
          ``(value, meta_grad)``, or ``(value, meta_grad, inner_result)`` with ``return_inner``.
          ``meta_grad`` has the structure of ``meta``.
        """
        require_floating_leaves(
            meta, name="meta", where="Bilevel",
            hint="Cast it (e.g. jnp.asarray(x, jnp.float32)) or move it out of meta (into the batch).",
        )  # fmt: skip
        (value, inner), meta_grad = jax.value_and_grad(
            lambda m: self._outer(m, **data),
            has_aux=True,
        )(meta)
        return (value, meta_grad, inner) if return_inner else (value, meta_grad)

    def _outer(
        self,
        meta: Meta,
        *,
        outer_batch: Batch,
        params: Params | None = None,
        inner_batches: Batch | None = None,
        inner_batch: Batch | None = None,
        opt_state: Any = None,
    ) -> tuple[jax.Array, InnerResult]:
        result = self.adapt(
            meta,
            params=params,
            inner_batches=inner_batches,
            inner_batch=inner_batch,
            opt_state=opt_state,
        )
        value = self.outer_loss(result.params, meta, outer_batch)
        if jnp.shape(value) != ():
            raise TypeError(
                f"Bilevel: outer_loss must return a scalar; got shape {jnp.shape(value)}. "
                "Reduce it, e.g. with jnp.mean."
            )
        return value, result

    # -- helpers ---------------------------------------------------------------------------------

    def _initial_params(self, meta: Meta, params: Params | None) -> Params:
        if self.init_params is None and params is None:
            raise ValueError(
                "Bilevel: no initial parameters. Pass params=... (fixed initial parameters) or "
                "construct the problem with init_params=lambda meta: ... (e.g. MAML)."
            )
        if self.init_params is not None and params is not None:
            raise ValueError(
                "Bilevel: got both init_params (initial parameters from meta) and params=...; "
                "give one of them."
            )
        return self.init_params(meta) if self.init_params is not None else params

    def _step_data(self, inner_batches: Batch | None, inner_batch: Batch | None) -> tuple[Any, Any]:
        if (inner_batches is None) == (inner_batch is None):
            raise ValueError(
                "Bilevel: give exactly one of inner_batches (stacked, one batch per step) and "
                "inner_batch (the same batch at every step)."
            )
        if inner_batch is not None:
            return None, inner_batch
        for leaf in jax.tree.leaves(inner_batches):
            if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != self.steps:
                raise ValueError(
                    f"Bilevel: every leaf of inner_batches needs a leading axis of size steps="
                    f"{self.steps}; found shape {jnp.shape(leaf)}. Stack one batch per step, or "
                    "pass inner_batch=... to reuse one batch at every step."
                )
        return inner_batches, None


def meta_train_step(
    objective: Bilevel | Callable[..., Any],
    outer_optimizer: optax.GradientTransformation,
    *,
    has_aux: bool = False,
    return_inner: bool = False,
    return_grad: bool = False,
    skip_nonfinite: bool = True,
    jit: bool = True,
) -> Callable[..., tuple[Any, ...]]:
    """The one jitted meta-training step: meta-gradient, then an update with ``outer_optimizer``.

    Every meta-learner in metagrad (few-shot, online data weighting and learning rates, the
    sharded steps of ``metagrad.distributed``) is this step around some objective.

    Args:
      objective: a ``Bilevel`` problem, or any function ``objective(meta, **data) -> value``
        (``-> (value, aux)`` with ``has_aux``), e.g. a meta-batch average of
        ``Bilevel.outer_value`` over tasks.
      outer_optimizer: an optax transformation for the meta-parameters.
      has_aux: ``objective`` (a function) returns ``(value, aux)``.
      return_inner: for a ``Bilevel``: also return its ``InnerResult`` (adapted parameters and
        optimiser state) as the auxiliary output, e.g. to continue training from it.
      return_grad: also return the meta-gradient (last), e.g. to log its norm, or to name its
        non-finite leaves (``metagrad.nonfinite.raise_if_nonfinite``).
      skip_nonfinite: a step whose value or meta-gradient has a NaN or infinity is not applied:
        the meta-parameters and optimiser state come back unchanged (default). The value (and
        the meta-gradient) are returned as they are, so that the caller sees what happened.
      jit: return the step jitted (default). ``False`` returns the plain function, for a caller
        that jits it itself, e.g. with shardings (``metagrad.distributed``).

    Returns:
      ``step(meta, outer_state, **data) -> (meta, outer_state, value)``, or
      ``(meta, outer_state, value, aux)`` with ``has_aux`` / ``return_inner``, with the
      meta-gradient appended when ``return_grad``; jitted. For a
      ``Bilevel``, ``data`` are the keyword arguments of ``Bilevel.value_and_grad``
      (``outer_batch``, ``inner_batches`` or ``inner_batch``, ``params``, ``opt_state``).
      Initialise ``outer_state`` with ``outer_optimizer.init(meta)``.

    Examples:
      MAML on a linear regression: the initial parameters are the meta-parameters, learned
      through two inner SGD steps by three outer SGD steps.

      >>> import jax.numpy as jnp, optax
      >>> import metagrad
      >>> batch = (jnp.arange(12.0).reshape(4, 3) / 10, jnp.array([1.0, 0.0, -1.0, 0.5]))
      >>> mse = lambda p, theta0, b: jnp.mean((b[0] @ p - b[1]) ** 2)
      >>> problem = metagrad.Bilevel(
      ...     inner_loss=mse, outer_loss=mse, inner_optimizer=optax.sgd(0.1), steps=2,
      ...     init_params=lambda theta0: theta0,
      ... )
      >>> outer_optimizer = optax.sgd(0.5)
      >>> step = metagrad.meta_train_step(problem, outer_optimizer)
      >>> theta0 = jnp.zeros(3)
      >>> state = outer_optimizer.init(theta0)
      >>> for _ in range(3):
      ...     theta0, state, value = step(theta0, state, inner_batch=batch, outer_batch=batch)
      >>> round(float(value), 4)
      0.5589
    """
    if isinstance(objective, Bilevel):
        if has_aux:
            raise ValueError(
                "meta_train_step: has_aux is for objective functions; a Bilevel returns its "
                "inner result with return_inner=True."
            )

        def value_and_grad(meta: Meta, **data: Any) -> tuple[Any, Meta]:
            if not return_inner:
                return objective.value_and_grad(meta, **data)
            value, grad, inner = objective.value_and_grad(meta, **data, return_inner=True)
            return (value, inner), grad

        with_aux = return_inner
    elif callable(objective):
        if return_inner:
            raise ValueError(
                "meta_train_step: return_inner is for a Bilevel objective; return the inner "
                "result as aux (has_aux=True) from your function instead."
            )
        value_and_grad = jax.value_and_grad(objective, has_aux=has_aux)
        with_aux = has_aux
    else:
        raise TypeError(
            "meta_train_step: objective must be a metagrad.Bilevel or a function "
            f"objective(meta, **data) -> value; got {type(objective).__name__}."
        )

    def step(meta: Meta, outer_state: Any, **data: Any) -> tuple[Any, ...]:
        out, meta_grad = value_and_grad(meta, **data)
        updates, new_state = outer_optimizer.update(meta_grad, outer_state, meta)
        new_meta = optax.apply_updates(meta, updates)
        if skip_nonfinite:
            # One NaN would otherwise spread to every meta-parameter and the optimiser's moments.
            finite = all_finite((out[0] if with_aux else out, meta_grad))
            new_meta, new_state = jax.tree.map(
                lambda new, old: jnp.where(finite, new, old),
                (new_meta, new_state),
                (meta, outer_state),
            )
        outer_state = new_state
        head = (new_meta, outer_state, *out) if with_aux else (new_meta, outer_state, out)
        return (*head, meta_grad) if return_grad else head

    return jax.jit(step) if jit else step


def _loss_dtype(leaves: Sequence[Any]) -> Any:
    floats = [
        jnp.result_type(x) for x in leaves if jnp.issubdtype(jnp.result_type(x), jnp.floating)
    ]
    return jnp.result_type(*floats) if floats else jnp.float32


def _merge(active: Sequence[bool], on: Sequence[Any], off: Sequence[Any]) -> list[Any]:
    """Interleaves the active and frozen leaves back into the original leaf order."""
    on_it, off_it = iter(on), iter(off)
    return [next(on_it) if a else next(off_it) for a in active]


def _segments(masks: Sequence[Any], params: Params) -> list[tuple[list[bool], int, int]]:
    """Groups consecutive steps with the same mask: ``[(active leaves, start, stop), ...]``."""
    segments: list[tuple[list[bool], int, int]] = []
    for k, mask in enumerate(masks):
        try:
            full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: bool(m), sub), mask, params)
        except ValueError as err:
            raise ValueError(
                f"Bilevel: update_masks[{k}] must be a prefix pytree of the parameters (e.g. one "
                f"bool per layer for a list of layer dicts); {err}"
            ) from None
        active = jax.tree.leaves(full)
        if segments and segments[-1][0] == active:
            segments[-1] = (active, segments[-1][1], k + 1)
        else:
            segments.append((active, k, k + 1))
    return segments
