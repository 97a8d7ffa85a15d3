"""Width-robust second-order optimisers: K-FAC, Shampoo, μP parameterisations, curvature capture."""

from metagrad.optim.coord_check import coord_check, plot_coord_checks
from metagrad.optim.curvature import (
    CurvatureStats,
    LayerInfo,
    capture,
    find_layers,
    leaf_names,
)
from metagrad.optim.experiment import WidthConfig
from metagrad.optim.kfac import DAMPING_RULES, KFACState, factor_damping, kfac
from metagrad.optim.linalg import damped_inverse, damped_inverses, inverse_root, inverse_roots
from metagrad.optim.parameterization import (
    BaseShapes,
    Exponents,
    LeafWidth,
    attention_logit_scale,
    base_shapes,
    exponents,
    init_multipliers,
    kfac_b_trace_floors,
    kfac_damping_scales,
    lr_multipliers,
    make_optimizer,
    scale_by_width,
    scale_init,
    set_base_shapes,
    shampoo_eps_scales,
)
from metagrad.optim.shampoo import ShampooState, shampoo
from metagrad.optim.sweep import plot_sweep, sweep
from metagrad.optim.tasks import ClassificationTask, glyph_task, load_task, synthetic_task

__all__ = [
    "DAMPING_RULES",
    "BaseShapes",
    "ClassificationTask",
    "WidthConfig",
    "coord_check",
    "glyph_task",
    "load_task",
    "plot_coord_checks",
    "plot_sweep",
    "sweep",
    "synthetic_task",
    "CurvatureStats",
    "Exponents",
    "KFACState",
    "LayerInfo",
    "LeafWidth",
    "ShampooState",
    "attention_logit_scale",
    "base_shapes",
    "capture",
    "damped_inverse",
    "damped_inverses",
    "exponents",
    "factor_damping",
    "find_layers",
    "init_multipliers",
    "inverse_root",
    "inverse_roots",
    "kfac",
    "kfac_b_trace_floors",
    "kfac_damping_scales",
    "leaf_names",
    "lr_multipliers",
    "make_optimizer",
    "scale_by_width",
    "scale_init",
    "set_base_shapes",
    "shampoo",
    "shampoo_eps_scales",
]
