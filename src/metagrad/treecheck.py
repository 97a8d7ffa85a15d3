"""Checks on the leaves of a pytree, shared by the engine's entry points.

``Bilevel``, the implicit solutions and the reversible loop all differentiate with respect to a
pytree the user passes (meta-parameters, a solution θ*, initial parameters). An integer leaf there
has no tangent and fails deep inside JAX; an empty pytree gives a meta-gradient of nothing. Both
are caught here, up front, with the leaf's path in the message.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def require_floating_leaves(tree: Any, *, name: str, where: str, hint: str) -> None:
    """Raises unless ``tree`` has at least one leaf and every leaf is floating-point.

    Args:
      tree: the pytree to check.
      name: the argument as the user wrote it (``"meta"``, ``"solution"``, ``"params0"``).
      where: the function that received it, first in the message.
      hint: what to do about an integer leaf (one sentence).

    Raises:
      ValueError: ``tree`` has no leaves.
      TypeError: a leaf is not floating-point; the message names its path and dtype.

    >>> require_floating_leaves({"w": jnp.ones(2), "n": jnp.int32(3)}, name="meta",
    ...                         where="Bilevel", hint="Cast it.")
    Traceback (most recent call last):
    TypeError: Bilevel: meta must contain floating-point arrays only; meta['n'] has dtype int32. Cast it.
    """
    if not jax.tree.leaves(tree):
        raise ValueError(f"{where}: {name} is empty; pass the arrays to differentiate.")
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"{where}: {name} must contain floating-point arrays only; "
                f"{name}{jax.tree_util.keystr(path)} has dtype {dtype}. {hint}"
            )
