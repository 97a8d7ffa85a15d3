"""Few-shot accuracy with a 95% confidence interval over many test tasks."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from metagrad.data import ClassDataset, episodes_at
from metagrad.fewshot.adaptation import Meta, make_adapt_fn
from metagrad.fewshot.algorithms import Algorithm
from metagrad.fewshot.network import Model
from metagrad.fewshot.patterns import Pattern
from metagrad.stats import mean_ci95


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Accuracy over test tasks.

    Attributes:
      accuracy: mean query accuracy over tasks (fraction).
      ci95: half-width of the 95% confidence interval (1.96 standard errors over tasks).
      tasks: number of tasks.
      loss: mean query loss.
      per_task: the accuracy of every task.
    """

    accuracy: float
    ci95: float
    tasks: int
    loss: float
    per_task: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures (percent), without the per-task array."""
        return {
            "accuracy_pct": 100 * self.accuracy,
            "ci95_pct": 100 * self.ci95,
            "tasks": self.tasks,
            "loss": self.loss,
        }


def evaluate(
    model: Model,
    algorithm: Algorithm,
    meta: Meta,
    dataset: ClassDataset,
    *,
    ways: int,
    shots: int,
    queries: int = 15,
    tasks: int = 600,
    batch: int = 25,
    seed: int = 1234,
    pattern: Pattern | None = None,
    steps: int | None = None,
) -> Evaluation:
    """Adapts to ``tasks`` episodes of ``dataset`` and reports query accuracy ± 95% CI.

    Episodes come from ``episodes_at(dataset, ..., seed, i)`` for ``i = 0, 1, ...`` (``batch``
    tasks each), so two evaluations with the same seed see the same tasks (paired comparisons of
    patterns).

    Args:
      model: the learner.
      algorithm: the learner.
      meta: the learner.
      dataset: the evaluation split.
      ways: the episode shape.
      shots: the episode shape.
      queries: the episode shape.
      tasks: number of tasks (≥ 600 for the usual reporting).
      batch: tasks per compiled call.
      seed: episode seed.
      pattern: test-time pattern (default: the algorithm's training pattern).
      steps: test-time inner steps.

    Returns:
      An :class:`Evaluation`.
    """
    if tasks < 1 or batch < 1:
        raise ValueError(f"evaluate: tasks and batch must be >= 1; got {tasks} and {batch}.")
    batch = min(batch, tasks)  # never sample (and compile for) more tasks than asked
    fn = make_adapt_fn(model, algorithm, pattern=pattern, steps=steps)
    accs, losses = [], []
    for i in range(math.ceil(tasks / batch)):
        ep = episodes_at(dataset, ways, shots, queries, batch, seed, i)
        out = fn(meta, tuple(ep))
        accs.append(np.asarray(out["accuracy"]))
        losses.append(np.asarray(out["loss"]))
    acc = np.concatenate(accs)[:tasks].astype(np.float64)
    loss = np.concatenate(losses)[:tasks].astype(np.float64)
    mean, ci = mean_ci95(acc)
    return Evaluation(mean, ci, len(acc), float(loss.mean()), acc)
