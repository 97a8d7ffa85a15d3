"""metagrad: scalable gradient-based meta-learning and bilevel optimisation in JAX.

Public API:
  grad, value_and_grad   gradients whose own derivative is computed in mixed mode
  unroll                 ``jax.lax.scan`` with a differentiation-strategy switch
  plan_unroll            every strategy's compiled memory and time for one loop (what
                         ``unroll(mode="auto")`` chooses from)
  Bilevel, InnerResult, meta_train_step
                         inner loop + outer objective -> exact meta-gradient
  ImplicitConfig, SolveInfo, argmin_solution, root_solution, fixed_point_solution,
  argmin_vjp, root_vjp, solve_linear
                         implicit meta-gradients (IFT): differentiate through the solution of the
                         inner problem; matrix-free CG / Neumann / GMRES / BiCGSTAB solves
  scale_by_learning_rates
                         per-parameter (meta-learned) learning rates as an optax transformation
  compiled_cost, CompiledCost
                         XLA's memory and FLOP figures for a compiled function
  reversible_momentum_sgd, reversible_forward, reversible_reverse, ReversibleState, buffer_limbs
                         exactly reversible momentum SGD: trajectory memory flat in T
  check, check_meta_gradient, CheckReport
                         is a meta-gradient exact (float32 vs a float64 reference) and
                         well-conditioned (sensitivity), and if not, why
  NonFiniteError, raise_if_nonfinite
                         stop a training loop on a NaN/inf loss or meta-gradient, naming where
  EPS_ROOT               ε inside Adam's square root for inner loops that are differentiated through
  MODES                  the differentiation strategies
"""

from metagrad.autodiff import MODES, grad, value_and_grad
from metagrad.bilevel import Bilevel, InnerResult, meta_train_step
from metagrad.diagnostics import CheckReport, check, check_meta_gradient
from metagrad.implicit import (
    ImplicitConfig,
    SolveInfo,
    argmin_solution,
    argmin_vjp,
    fixed_point_solution,
    root_solution,
    root_vjp,
    solve_linear,
)
from metagrad.memory import CompiledCost, compiled_cost
from metagrad.nonfinite import NonFiniteError, raise_if_nonfinite
from metagrad.reversible import (
    ReversibleState,
    buffer_limbs,
    reversible_forward,
    reversible_momentum_sgd,
    reversible_reverse,
)
from metagrad.transforms import EPS_ROOT, scale_by_learning_rates
from metagrad.unrolling import plan_unroll, unroll

__version__ = "0.1.0"

__all__ = [
    "EPS_ROOT",
    "MODES",
    "Bilevel",
    "CheckReport",
    "CompiledCost",
    "ImplicitConfig",
    "InnerResult",
    "NonFiniteError",
    "ReversibleState",
    "SolveInfo",
    "argmin_solution",
    "argmin_vjp",
    "buffer_limbs",
    "check",
    "check_meta_gradient",
    "compiled_cost",
    "fixed_point_solution",
    "grad",
    "meta_train_step",
    "plan_unroll",
    "raise_if_nonfinite",
    "reversible_forward",
    "reversible_momentum_sgd",
    "reversible_reverse",
    "root_solution",
    "root_vjp",
    "scale_by_learning_rates",
    "solve_linear",
    "unroll",
    "value_and_grad",
]
