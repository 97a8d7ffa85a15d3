"""Few-shot meta-learning: the MAML family as one adaptation routine, Lambda patterns, selection.

Public API (re-exports only):
  Algorithm, make_algorithm, ALGORITHMS     MAML / FOMAML / ANIL / BOIL / Meta-SGD / MAML++ / iMAML
  Pattern, structured_family, all_patterns  Lambda patterns (inner step x layer update masks)
  adapt_task, make_meta_step, make_adapt_fn the adaptation routine and jitted steps
  adaptation_flops, adaptation_time         what a pattern costs (XLA FLOPs, wall-clock)
  apply_layers, split_apply                 layer-by-layer forward passes (feature caching)
  Layered, LayerStack                       the layer protocol; any network as a stack of layers
  shard_fewshot_meta_step                   the meta-step on a device mesh (metagrad.distributed)
"""

from metagrad.fewshot.adaptation import (
    TaskResult,
    adapt_task,
    make_adapt_fn,
    make_meta_step,
    meta_batch_loss,
)
from metagrad.fewshot.algorithms import ALGORITHMS, Algorithm, make_algorithm
from metagrad.fewshot.measure import adaptation_flops, adaptation_time
from metagrad.fewshot.network import Layered, LayerStack, apply_layers, n_layers, split_apply
from metagrad.fewshot.patterns import Pattern, all_patterns, structured_family
from metagrad.fewshot.sharding import shard_fewshot_meta_step

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "Pattern",
    "TaskResult",
    "adapt_task",
    "adaptation_flops",
    "adaptation_time",
    "all_patterns",
    "LayerStack",
    "Layered",
    "apply_layers",
    "make_adapt_fn",
    "make_algorithm",
    "make_meta_step",
    "meta_batch_loss",
    "n_layers",
    "shard_fewshot_meta_step",
    "split_apply",
    "structured_family",
]
