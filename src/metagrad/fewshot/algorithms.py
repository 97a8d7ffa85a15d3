"""The MAML family as configurations of one adaptation routine.

Every algorithm here is an ``Algorithm``: a few fields that the single routine in
``metagrad.fewshot.adaptation`` reads. None of them has its own inner loop.

| algorithm | pattern during training | inner learning rate | meta-gradient |
|---|---|---|---|
| ``maml``    | all layers, every step    | fixed scalar              | second order |
| ``fomaml``  | all layers, every step    | fixed scalar              | first order (stop-gradient) |
| ``anil``    | head only                 | fixed scalar              | second order |
| ``boil``    | body only (head frozen)   | fixed scalar              | second order |
| ``metasgd`` | all layers                | per parameter, meta-learned | second order |
| ``mamlpp``  | all layers                | per layer and step (K × L table), meta-learned | second order |

References:
  Finn, Abbeel, Levine. *Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks*,
  ICML 2017 (MAML, first-order MAML).
  Raghu, Raghu, Bengio, Vinyals. *Rapid Learning or Feature Reuse?*, ICLR 2020 (ANIL).
  Oh, Yoo, Kim, Yun. *BOIL: Towards Representation Change for Few-shot Learning*, ICLR 2021.
  Li, Zhou, Chen, Li. *Meta-SGD*, 2017, arXiv:1707.09835.
  Antoniou, Edwards, Storkey. *How to train your MAML*, ICLR 2019 (MAML++; only its learned
  per-layer per-step learning rates, LSLR, are implemented here).
  Rajeswaran, Finn, Kakade, Levine. *Meta-Learning with Implicit Gradients*, NeurIPS 2019
  (iMAML: λ = 2, 5 conjugate-gradient steps, 16 inner gradient steps for Omniglot 5-way).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from metagrad.autodiff import validate_mode
from metagrad.fewshot.patterns import Pattern
from metagrad.implicit import NEGATIVE_CURVATURE
from metagrad.transforms import scale_by_learning_rates, scale_by_step_learning_rates
from metagrad.validation import require_one_of

ALGORITHMS: tuple[str, ...] = ("maml", "fomaml", "anil", "boil", "metasgd", "mamlpp", "imaml")
METHODS: tuple[str, ...] = ("unroll", "implicit")
LAYER_RULES: tuple[str, ...] = ("all", "head", "body")
LEARNED_LR: tuple[str | None, ...] = (None, "per_parameter", "per_layer_step")


# The options of the implicit solve, with the values that mean "not used": an unrolled algorithm
# must leave them there (cg_steps is not among them: it has a default for every algorithm).
IMPLICIT_OPTIONS: dict[str, Any] = {
    "cg_damping": 0.0,
    "cg_negative_curvature": "continue",
    "stationarity_tol": None,
    "cg_max_gain": None,
}


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """A member of the MAML family.

    Attributes:
      name: label for logs.
      steps: inner steps K during meta-training.
      inner_lr: the inner SGD learning rate (the initial value when it is learned).
      first_order: drop second-order terms (first-order MAML).
      layers: which layers the inner loop updates during meta-training: ``"all"``, ``"head"``
        (ANIL) or ``"body"`` (BOIL). Ignored when ``pattern`` is given.
      pattern: an explicit Lambda pattern used during meta-training (K rows).
      learned_lr: ``None`` (fixed ``inner_lr``), ``"per_parameter"`` (Meta-SGD) or
        ``"per_layer_step"`` (MAML++ LSLR).
      mode: differentiation strategy of the second-order meta-gradient: ``"mixflow"``,
        ``"remat"``, ``"reverse"``, or ``"auto"`` (the fastest mode and checkpoint schedule of
        one task's inner loop whose compiled memory fits ``memory_budget``; see
        ``metagrad.Bilevel``).
      memory_budget: bytes of one task's inner loop for ``mode="auto"`` (None: no limit). Tasks
        are vmapped, so a meta-batch of B tasks needs about B times that.
      proximal: λ ≥ 0 of the proximal term ``λ/2 ‖θ − θ₀‖²`` added to the inner (support) loss
        (iMAML); 0: none.
      method: ``"unroll"`` (differentiate the inner steps) or ``"implicit"`` (implicit function
        theorem at the adapted parameters: ``(I + H/λ)⁻¹ ∇L_query``, iMAML). ``"implicit"``
        needs ``proximal > 0`` (without it, the minimum does not depend on θ₀), all layers
        adapted at every step, a fixed learning rate and ``mode="mixflow"``.
      cg_steps: conjugate-gradient iterations of the implicit solve (iMAML: 5; truncated on
        purpose, so the solve does not warn when it stops short of convergence).
      cg_damping: ridge δ ≥ 0 added to the implicit system: the meta-gradient becomes
        ``λ (H + (λ + δ) I)⁻¹ ∇L_query`` (``ImplicitConfig.damping``). The iMAML authors' code
        solves with such a ridge (its ``cg_damping``: ``(2I + H/(λ + 10)) x = g``, the same as
        δ = λ + 20 here up to a scale), which weights curvature less: a biased, better-conditioned
        meta-gradient between iMAML's (δ = 0) and first-order MAML's (δ → ∞). Implicit only.
      inner_momentum: β in [0, 1) of heavy-ball momentum in the inner optimiser
        (``optax.sgd(inner_lr, momentum=β)``); 0: plain gradient descent (MAML's). Only with a
        fixed learning rate. With ``method="implicit"`` it changes how well the inner problem is
        solved in ``steps`` steps, not the formula of the meta-gradient (which only assumes the
        minimum is reached).
      cg_negative_curvature: ``"continue"`` (plain CG, iMAML's) or ``"stop"``: the implicit
        solve returns the CG iterate before the first direction of non-positive curvature of
        ``I + H/λ`` (``ImplicitConfig.negative_curvature``). The system is indefinite where the
        support loss's Hessian at θ* has eigenvalues below −λ, and CG's iterates then diverge.
        Implicit only.
      stationarity_tol: with ``method="implicit"``, a task whose inner loop ended away from a
        stationary point, ``‖∇ inner loss(θ*)‖ > stationarity_tol``, contributes no
        meta-gradient (its query loss still counts in the reported loss). The implicit function
        theorem holds only at a stationary point; where the inner loop diverged (e.g. heavy ball
        past its stable step size on a sharp task) the implicit meta-gradient is meaningless.
        None (default): every task counts.
      cg_max_gain: with ``method="implicit"``, a task's meta-gradient ``λ (H + λI)⁻¹ g`` (g: the
        query loss's gradient at θ*) is capped at ``cg_max_gain · ‖g‖``, its direction kept
        (``ImplicitConfig.max_gain = cg_max_gain / λ``). With a positive semi-definite H the
        exact meta-gradient is never longer than g, so 1 only touches tasks whose system is
        near-singular or indefinite, where CG's solution can be tens of times longer than any
        other task's and unrelated to the true derivative. None (default): no cap.
    """

    name: str = "maml"
    steps: int = 5
    inner_lr: float = 0.4
    first_order: bool = False
    layers: str = "all"
    pattern: Pattern | None = None
    learned_lr: str | None = None
    mode: str = "mixflow"
    memory_budget: int | None = None
    proximal: float = 0.0
    method: str = "unroll"
    cg_steps: int = 5
    cg_damping: float = 0.0
    inner_momentum: float = 0.0
    cg_negative_curvature: str = "continue"
    stationarity_tol: float | None = None
    cg_max_gain: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"Algorithm: steps must be a positive int; got {self.steps!r}.")
        if not self.inner_lr > 0:
            raise ValueError(f"Algorithm: inner_lr must be > 0; got {self.inner_lr!r}.")
        require_one_of("Algorithm: layers", self.layers, LAYER_RULES)
        require_one_of("Algorithm: learned_lr", self.learned_lr, LEARNED_LR)
        if self.pattern is not None and self.pattern.steps != self.steps:
            raise ValueError(
                f"Algorithm: pattern has {self.pattern.steps} rows but steps={self.steps}; give "
                "one row per inner step."
            )
        if self.mode != "auto":
            validate_mode(self.mode, "Algorithm: mode")
        if self.memory_budget is not None and (
            self.mode != "auto" or not isinstance(self.memory_budget, int) or self.memory_budget < 1
        ):
            raise ValueError(
                "Algorithm: memory_budget must be None, or a positive int (bytes) with "
                f"mode='auto'; got memory_budget={self.memory_budget!r} with mode={self.mode!r}."
            )
        if not self.proximal >= 0:
            raise ValueError(f"Algorithm: proximal must be >= 0; got {self.proximal!r}.")
        if self.method not in METHODS:
            raise ValueError(f"Algorithm: method must be one of {METHODS}; got {self.method!r}.")
        if not isinstance(self.cg_steps, int) or self.cg_steps < 1:
            raise ValueError(f"Algorithm: cg_steps must be a positive int; got {self.cg_steps!r}.")
        if not (isinstance(self.cg_damping, int | float) and 0 <= self.cg_damping < math.inf):
            raise ValueError(
                f"Algorithm: cg_damping must be a finite number >= 0; got {self.cg_damping!r}."
            )
        require_one_of(
            "Algorithm: cg_negative_curvature", self.cg_negative_curvature, NEGATIVE_CURVATURE
        )
        if not (isinstance(self.inner_momentum, int | float) and 0 <= self.inner_momentum < 1):
            raise ValueError(
                f"Algorithm: inner_momentum must be in [0, 1); got {self.inner_momentum!r}."
            )
        if self.inner_momentum and self.learned_lr is not None:
            raise ValueError(
                f"Algorithm {self.name!r}: inner_momentum needs a fixed learning rate; got "
                f"learned_lr={self.learned_lr!r}."
            )
        for name in ("stationarity_tol", "cg_max_gain"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and 0 < value < math.inf):
                raise ValueError(
                    f"Algorithm: {name} must be a finite number > 0 (or None); got {value!r}."
                )
        for name, default in IMPLICIT_OPTIONS.items():
            if getattr(self, name) != default and self.method != "implicit":
                raise ValueError(
                    f"Algorithm {self.name!r}: {name} applies to method='implicit' only; got "
                    f"method={self.method!r}."
                )
        if self.method == "implicit":
            problems = []
            if not self.proximal > 0:
                problems.append(
                    "proximal > 0 (without the proximal term the adapted parameters do not "
                    "depend on θ₀, so the implicit meta-gradient of θ₀ is zero)"
                )
            if self.learned_lr is not None:
                problems.append(
                    f"a fixed learning rate (learned_lr={self.learned_lr!r}: learning rates do "
                    "not move the minimum, so they get no implicit meta-gradient)"
                )
            if self.layers != "all" or (self.pattern is not None and self.pattern.density < 1):
                problems.append("all layers adapted at every step (layers='all', no pattern)")
            if self.first_order:
                problems.append("first_order=False")
            if self.mode != "mixflow":
                problems.append(f"mode='mixflow' (got {self.mode!r})")
            if problems:
                raise ValueError(
                    f"Algorithm {self.name!r}: method='implicit' needs " + "; ".join(problems) + "."
                )

    def train_pattern(self, n_layers: int) -> Pattern:
        """The pattern used during meta-training for a model with ``n_layers`` layers."""
        if self.pattern is not None:
            if self.pattern.layers != n_layers:
                raise ValueError(
                    f"Algorithm: pattern has {self.pattern.layers} columns but the model has "
                    f"{n_layers} layers."
                )
            return self.pattern
        if self.layers == "head":
            return Pattern.top(self.steps, n_layers, 1)
        if self.layers == "body":
            return Pattern.body(self.steps, n_layers)
        return Pattern.full(self.steps, n_layers)

    def init_meta(self, params: list[dict[str, jax.Array]]) -> dict[str, Any]:
        """Meta-parameters: ``{"params": θ₀}``, plus ``"lr"`` when learning rates are learned."""
        meta: dict[str, Any] = {"params": params}
        if self.learned_lr == "per_parameter":
            meta["lr"] = jax.tree.map(lambda p: jnp.full_like(p, self.inner_lr), params)
        elif self.learned_lr == "per_layer_step":
            # The (steps x layers) table, stored as one length-K vector per layer.
            dtype = jax.tree.leaves(params)[0].dtype
            meta["lr"] = [jnp.full((self.steps,), self.inner_lr, dtype) for _ in params]
        return meta

    def inner_optimizer(
        self, meta: dict[str, Any], first_layer: int
    ) -> optax.GradientTransformation:
        """The inner optimiser for the layers ``first_layer ..`` (the uncached suffix)."""
        if self.learned_lr == "per_parameter":
            return scale_by_learning_rates(meta["lr"][first_layer:])
        if self.learned_lr == "per_layer_step":
            return scale_by_step_learning_rates(meta["lr"][first_layer:])
        if self.inner_momentum:
            return optax.sgd(self.inner_lr, momentum=self.inner_momentum)
        return optax.sgd(self.inner_lr)


def at_test_time(algorithm: Algorithm, *, proximal: float | None = None) -> Algorithm:
    """The algorithm that adapts at evaluation time, where no meta-gradient is taken.

    Evaluation only runs the inner loop, so the proximal term may be changed (or dropped: the
    iMAML authors evaluate with λ = 0, plain fine-tuning from θ₀) and the implicit solve is off.

    Args:
      algorithm: the trained algorithm.
      proximal: test-time λ ≥ 0 of ``λ/2 ‖θ − θ₀‖²``; None keeps the algorithm's.

    Returns:
      ``algorithm`` itself if ``proximal`` is None, else a copy with that ``proximal``,
      ``method="unroll"`` and none of the implicit solve's options.

    References:
      Rajeswaran, Finn, Kakade & Levine, *Meta-Learning with Implicit Gradients*, NeurIPS 2019
      (their evaluation script adapts with λ = 0).
    """
    if proximal is None:
        return algorithm
    return dataclasses.replace(
        algorithm,
        proximal=proximal,
        method="unroll",
        **IMPLICIT_OPTIONS,
    )


def make_algorithm(name: str, **overrides: Any) -> Algorithm:
    """The named configuration, with field overrides (``steps``, ``inner_lr``, ``mode``, ...).

    Args:
      name: one of ``ALGORITHMS``.
      **overrides: fields of :class:`Algorithm`.

    Returns:
      The ``Algorithm``.
    """
    presets: dict[str, dict[str, Any]] = {
        "maml": {},
        "fomaml": {"first_order": True},
        "anil": {"layers": "head"},
        "boil": {"layers": "body"},
        "metasgd": {"learned_lr": "per_parameter"},
        "mamlpp": {"learned_lr": "per_layer_step"},
        "imaml": {"proximal": 2.0, "method": "implicit", "cg_steps": 5, "steps": 16},
    }
    if name not in presets:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}; got {name!r}.")
    return Algorithm(name=name, **{**presets[name], **overrides})
