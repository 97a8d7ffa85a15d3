"""Non-finite losses and meta-gradients: detect them, skip the update, say where they are.

One NaN in one example of an inner batch makes the meta-value and every meta-gradient entry NaN,
and an optimiser step on it turns every meta-parameter into NaN. ``metagrad.meta_train_step``
therefore does not apply a step whose value or meta-gradient is not finite (``skip_nonfinite``),
and training loops call :func:`raise_if_nonfinite` to stop with a message that names the step,
what was not finite (outer value, inner losses, which meta-gradient leaves) and what to try.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

HINTS = (
    "lower the learning rates (inner and outer), check the data for NaN/inf, and run "
    "`metagrad check` on the problem to see whether its meta-gradient is ill-conditioned"
)


class NonFiniteError(FloatingPointError):
    """A training step produced a non-finite loss or meta-gradient (the step was not applied).

    Attributes:
      step: the step (counting from 1).
      what: the non-finite quantities, e.g. ``["outer value", "meta-gradient leaves ['w']"]``.
    """

    def __init__(self, step: int, what: list[str], hint: str = HINTS) -> None:
        self.step, self.what = step, what
        super().__init__(
            f"step {step}: non-finite {'; '.join(what)}. The step was not applied and no "
            f"checkpoint holds it (the last one on disk is finite). Try: {hint}."
        )


def all_finite(tree: Any) -> jax.Array:
    """A scalar boolean: every floating-point entry of ``tree`` is finite (traceable)."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if _is_float(x)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def leaf_finiteness(tree: Any) -> Any:
    """``tree`` with each leaf replaced by a scalar boolean "all entries finite" (traceable).

    Cheap to return from a jitted step (one boolean per leaf) and to name on the host with
    :func:`nonfinite_leaves`.
    """
    return jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)) if _is_float(x) else True, tree)


def nonfinite_leaves(tree: Any, *, flags: bool = False, limit: int = 8) -> list[str]:
    """The paths of leaves of ``tree`` holding a non-finite entry, e.g. ``["['layers'][0]['w']"]``.

    Args:
      tree: arrays, or (``flags=True``) the booleans of :func:`leaf_finiteness`.
      flags: ``tree`` holds per-leaf finiteness flags instead of arrays.
      limit: at most this many paths, then ``"... and N more"``.

    Returns:
      The paths (``jax.tree_util.keystr``), empty when every leaf is finite.
    """
    bad = []
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        finite = bool(x) if flags else (not _is_float(x) or bool(np.all(np.isfinite(x))))
        if not finite:
            bad.append(jax.tree_util.keystr(path) or "(the whole tree)")
    if len(bad) > limit:
        bad = bad[:limit] + [f"... and {len(bad) - limit} more"]
    return bad


def raise_if_nonfinite(
    step: int,
    values: Mapping[str, Any],
    *,
    meta_grad: Any = None,
    meta_grad_flags: Any = None,
    hint: str = HINTS,
) -> None:
    """Raises :class:`NonFiniteError` when a value or a meta-gradient leaf is not finite.

    Args:
      step: the step, named in the message.
      values: named losses, e.g. ``{"outer value": v, "inner losses": losses}``.
      meta_grad: the meta-gradient (arrays), or
      meta_grad_flags: its :func:`leaf_finiteness` flags (cheaper to bring to the host).
      hint: what to try, appended to the message.
    """
    what = [name for name, v in values.items() if not bool(np.all(np.isfinite(np.asarray(v))))]
    leaves: list[str] = []
    if meta_grad_flags is not None:
        leaves = nonfinite_leaves(meta_grad_flags, flags=True)
    elif meta_grad is not None:
        leaves = nonfinite_leaves(meta_grad)
    if leaves:
        what.append(f"meta-gradient in {', '.join(leaves)}")
    if what:
        raise NonFiniteError(step, what, hint)


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)
