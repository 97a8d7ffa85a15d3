"""Online meta-learning through truncated unrolls: train, meta-update, and keep training.

A full meta-gradient would differentiate the validation loss through the *whole* training run.
Online (truncated) meta-learning cuts that run into windows of T inner steps. Each meta-step

1. runs T inner optimiser steps from the current parameters and optimiser state, with the
   current meta-parameters (``metagrad.unroll``: the differentiation mode is a switch);
2. takes the exact meta-gradient of the outer (validation) loss at the end of the window with
   respect to the meta-parameters, through those T steps;
3. updates the meta-parameters with the outer optimiser;
4. **continues training from the unrolled parameters and optimiser state** of step 1, so meta-
   learning costs no extra training steps: the learner's trajectory is the unrolled one.

The parameters and inner optimiser state that enter a window are constants for its meta-gradient
(the truncation); the inner optimiser state is carried across windows, so Adam's moments are not
reset every T steps.

This is the generic machinery; data weighting (:mod:`metagrad.meta.reweight`) and learning rates
(:mod:`metagrad.meta.learning_rates`) are two configurations of it.

References:
    Ren, Zeng, Yang, Urtasun. *Learning to Reweight Examples for Robust Deep Learning*, ICML 2018.
    Baydin, Cornish, Martínez Rubio, Schmidt, Wood. *Online Learning Rate Adaptation with
    Hypergradient Descent*, ICLR 2018.
    Franceschi, Donini, Frasconi, Pontil. *Forward and Reverse Gradient-Based Hyperparameter
    Optimization*, ICML 2017.
    Kemaev et al. *Scalable Meta-Learning via Mixed-Mode Differentiation* (MixFlow-MG), ICML 2025.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metagrad.autodiff import validate_mode
from metagrad.bilevel import Bilevel, meta_train_step

Params = Any
Meta = Any
Batch = Any
Loss = Callable[[Params, Meta, Batch], jax.Array]
OptimizerOf = Callable[[Meta], optax.GradientTransformation]


class WindowResult(NamedTuple):
    """What one truncated window returns.

    Attributes:
      outer: the outer loss at the end of the window.
      meta_grad: its gradient with respect to the meta-parameters.
      params: the parameters after the T inner steps (training continues from here).
      inner_state: the inner optimiser state after the T inner steps.
      inner_losses: the inner loss of each of the T steps, shape ``(T,)``.
    """

    outer: jax.Array
    meta_grad: Meta
    params: Params
    inner_state: Any
    inner_losses: jax.Array


def window_problem(
    inner_loss: Loss,
    outer_loss: Loss,
    optimizer_of: OptimizerOf,
    steps: int,
    mode: str,
    memory_budget: int | None = None,
) -> Bilevel:
    """One truncated window as a ``metagrad.Bilevel``: ``steps`` inner steps from given
    parameters and optimiser state (``Bilevel.adapt(..., params=, opt_state=)``)."""
    return Bilevel(
        inner_loss, outer_loss, optimizer_of, steps, mode=mode, memory_budget=memory_budget
    )


def _check_mode(mode: str) -> None:
    # "auto" is Bilevel's (it needs the window's size to choose); the others are checked here so
    # that a typo fails before anything is traced.
    if mode != "auto":
        validate_mode(mode, "mode")


def window_value_and_grad(
    inner_loss: Loss,
    outer_loss: Loss,
    optimizer_of: OptimizerOf,
    *,
    mode: str = "mixflow",
    memory_budget: int | None = None,
) -> Callable[[Meta, Params, Any, Batch, Batch], WindowResult]:
    """The meta-gradient of one truncated window (not jitted: compose or jit it).

    Args:
      inner_loss: ``(params, meta, batch) -> scalar``: the training loss of one inner step.
      outer_loss: ``(params, meta, batch) -> scalar``: the objective at the end of the window
        (typically a clean validation loss).
      optimizer_of: ``meta -> optax.GradientTransformation``: the inner optimiser (meta-
        parameters may be its hyper-parameters). Its state structure must not depend on ``meta``.
      mode: ``"reverse"``, ``"remat"``, ``"mixflow"`` (see ``metagrad.unroll``) or ``"auto"``
        (the fastest mode and schedule that fits ``memory_budget``; see ``metagrad.Bilevel``).
      memory_budget: bytes for ``mode="auto"`` (None: no limit).

    Returns:
      ``fn(meta, params, inner_state, batches, outer_batch) -> WindowResult``; ``batches`` has a
      leading axis of size T (one batch per inner step).
    """
    _check_mode(mode)

    def fn(
        meta: Meta, params: Params, state: Any, batches: Batch, outer_batch: Batch
    ) -> WindowResult:
        problem = window_problem(
            inner_loss, outer_loss, optimizer_of, _steps(batches), mode, memory_budget
        )
        value, meta_grad, inner = problem.value_and_grad(
            meta,
            params=params,
            opt_state=state,
            inner_batches=batches,
            outer_batch=outer_batch,
            return_inner=True,
        )
        return WindowResult(value, meta_grad, inner.params, inner.opt_state, inner.losses)

    return fn


def as_meta_gradient(
    window: Callable[..., WindowResult],
) -> Callable[..., tuple[jax.Array, Meta]]:
    """``window`` as ``(*args) -> (outer value, meta-gradient)``, the form ``metagrad.check``
    takes."""

    def fn(*args: Any) -> tuple[jax.Array, Meta]:
        result = window(*args)
        return result.outer, result.meta_grad

    return fn


def online_meta_step(
    inner_loss: Loss,
    outer_loss: Loss,
    optimizer_of: OptimizerOf,
    meta_optimizer: optax.GradientTransformation,
    *,
    mode: str = "mixflow",
    memory_budget: int | None = None,
) -> Callable[..., tuple[Meta, Any, WindowResult]]:
    """A jitted online meta-step: one truncated window, then a meta-update
    (``metagrad.meta_train_step`` of the window's ``Bilevel``).

    Args:
      inner_loss: as in :func:`window_value_and_grad`.
      outer_loss: as in :func:`window_value_and_grad`.
      optimizer_of: as in :func:`window_value_and_grad`.
      mode: as in :func:`window_value_and_grad`.
      memory_budget: as in :func:`window_value_and_grad`.
      meta_optimizer: optax transformation of the meta-parameters.

    Returns:
      ``step(meta, meta_state, params, inner_state, batches, outer_batch) -> (meta', meta_state',
      window)``; continue training from ``window.params`` and ``window.inner_state``.
    """
    _check_mode(mode)
    steps_of: dict[int, Callable[..., tuple[Any, ...]]] = {}

    def step(
        meta: Meta,
        meta_state: Any,
        params: Params,
        inner_state: Any,
        batches: Batch,
        outer_batch: Batch,
    ) -> tuple[Meta, Any, WindowResult]:
        steps = _steps(batches)
        if steps not in steps_of:
            problem = window_problem(
                inner_loss, outer_loss, optimizer_of, steps, mode, memory_budget
            )
            steps_of[steps] = meta_train_step(
                problem, meta_optimizer, return_inner=True, return_grad=True
            )
        meta, meta_state, value, inner, meta_grad = steps_of[steps](
            meta,
            meta_state,
            params=params,
            opt_state=inner_state,
            inner_batches=batches,
            outer_batch=outer_batch,
        )
        window = WindowResult(value, meta_grad, inner.params, inner.opt_state, inner.losses)
        return meta, meta_state, window

    return step


def training_window(
    inner_loss: Loss, optimizer_of: OptimizerOf
) -> Callable[..., tuple[Params, Any, jax.Array]]:
    """A jitted window of T plain training steps (no meta-gradient): the baselines' step. It is
    ``Bilevel.adapt`` of the same window, so baselines and meta-learners train the same way.

    Returns:
      ``fn(meta, params, inner_state, batches) -> (params', inner_state', losses (T,))``;
      ``meta`` holds whatever the loss and optimiser read (e.g. a fixed learning rate).
    """

    @jax.jit
    def fn(meta: Meta, params: Params, state: Any, batches: Batch) -> tuple[Params, Any, Any]:
        problem = window_problem(inner_loss, inner_loss, optimizer_of, _steps(batches), "reverse")
        inner = problem.adapt(meta, params=params, opt_state=state, inner_batches=batches)
        return inner.params, inner.opt_state, inner.losses

    return fn


def _steps(batches: Batch) -> int:
    leaves = jax.tree.leaves(batches)
    if not leaves:
        raise ValueError("online window: batches is empty; stack one batch per inner step.")
    return int(jnp.shape(leaves[0])[0])
