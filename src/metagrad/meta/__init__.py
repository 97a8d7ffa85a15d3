"""Meta-learning applications on a byte-level language model of real text.

Both are meta-learned online through truncated unrolls (:mod:`metagrad.meta.online`) and run from
the command line (``metagrad meta reweight``, ``metagrad meta lr``):

* learned data weighting (:mod:`metagrad.meta.reweight`): per-example weights or a scoring
  network, against uniform weighting and an oracle, on partly corrupted text;
* learned per-layer learning rates (:mod:`metagrad.meta.learning_rates`), against a grid of
  fixed learning rates.
"""

from metagrad.meta.auc import roc_auc
from metagrad.meta.corruption import CORRUPTIONS, corrupt
from metagrad.meta.learning_rates import (
    LRConfig,
    layer_groups,
    learned_optimizer,
    run_learning_rates,
)
from metagrad.meta.memory_report import memory_report
from metagrad.meta.online import (
    WindowResult,
    online_meta_step,
    training_window,
    window_value_and_grad,
)
from metagrad.meta.reweight import ReweightConfig, run_reweight
from metagrad.meta.runner import Arm, run_arms
from metagrad.meta.weighting import WEIGHTINGS, PerExampleWeights, Scorer, weighted_mean

__all__ = [
    "CORRUPTIONS",
    "WEIGHTINGS",
    "Arm",
    "LRConfig",
    "PerExampleWeights",
    "ReweightConfig",
    "Scorer",
    "WindowResult",
    "corrupt",
    "layer_groups",
    "learned_optimizer",
    "memory_report",
    "online_meta_step",
    "roc_auc",
    "run_arms",
    "run_learning_rates",
    "run_reweight",
    "training_window",
    "weighted_mean",
    "window_value_and_grad",
]
