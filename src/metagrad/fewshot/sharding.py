"""The few-shot meta-training step on a device mesh: the meta-batch of tasks split along ``"data"``.

``metagrad.distributed`` shards any per-task objective (:class:`~metagrad.distributed.ShardedMetaStep`);
this module gives it the MAML family's per-task loss and accuracy
(``metagrad.fewshot.meta_batch_loss``). See ``docs/distributed.md``.

References:
  Finn et al., ICML 2017 (MAML).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax
from jax.sharding import Mesh

from metagrad.distributed import ShardedMetaStep, ShardingPlan
from metagrad.fewshot.adaptation import batch_metrics, make_meta_step, meta_batch_loss

Meta = Any


def shard_fewshot_meta_step(
    model: Any,
    algorithm: Any,
    outer_optimizer: optax.GradientTransformation,
    mesh: Mesh | ShardingPlan | None = None,
    *,
    params: str = "replicate",
    pattern: Any = None,
    kind: str = "classification",
) -> Callable[..., tuple[Meta, Any, dict[str, jax.Array]]]:
    """``metagrad.fewshot.make_meta_step`` on a mesh: tasks split along ``"data"``.

    Args:
      model: a ``Conv4`` or ``MLP``.
      algorithm: the MAML-family configuration (``metagrad.fewshot.make_algorithm``).
      outer_optimizer: optax transformation of the meta-parameters.
      mesh: a mesh from ``metagrad.distributed.make_mesh`` (or a ``ShardingPlan``); ``None`` (default)
        returns ``make_meta_step`` itself, the single-device step.
      params: ``"replicate"`` or ``"fsdp"`` (see ``metagrad.distributed.ShardingPlan``).
      pattern: the Lambda pattern used during meta-training (default: the algorithm's).
      kind: ``"classification"`` or ``"regression"``.

    Returns:
      ``step(meta, opt_state, tasks) -> (meta, opt_state, {"loss", "accuracy"})``, the same
      numbers as the single-device step (up to the order of floating-point sums).

    References:
      Finn et al., ICML 2017 (MAML).
    """
    if mesh is None:
        return make_meta_step(model, algorithm, outer_optimizer, pattern=pattern, kind=kind)

    def per_task(meta: Meta, tasks: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
        _, per = meta_batch_loss(model, algorithm, meta, tuple(tasks), pattern=pattern, kind=kind)
        return per["loss"], per

    plan = mesh if isinstance(mesh, ShardingPlan) else ShardingPlan(mesh, params=params)
    return ShardedMetaStep(per_task, outer_optimizer, plan, finish=batch_metrics)


__all__ = ["shard_fewshot_meta_step"]
