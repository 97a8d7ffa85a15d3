"""Meta-gradient benchmark: memory, time and exactness of the three differentiation modes.

Cases (one ``Bilevel`` configuration each; the mode is the only thing that changes):

* ``lm``: a decoder-only LM with per-sequence loss weights as meta-parameters, through T Adam
  steps (ε inside the square root, ``eps_root=1e-8``: with ε outside, this meta-gradient is
  ill-conditioned, see ``metagrad.diagnostics``). This is the MixFlow-MG paper's setting scaled to a CPU (default B=4, S=512, 4 layers,
  width 128, T=8).
* ``mlp``: an MLP with per-parameter learning rates (Meta-SGD style) through T SGD-momentum steps.
  The same problem can also be built with the exactly reversible inner loop
  (``mode="reversible"``, ``metagrad.reversible_momentum_sgd``).
* ``maml``: second-order MAML on the conv4 backbone, 5-way 1-shot with 15 queries, 5 inner SGD
  steps, a meta-batch of 4 tasks mapped sequentially.

References:
    Kemaev et al., *Scalable Meta-Learning via Mixed-Mode Differentiation*, ICML 2025.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metagrad.bilevel import Bilevel
from metagrad.diagnostics import DEFAULT_DELTA, float64_reference, relative_error
from metagrad.models import MLP, Conv4, DecoderLM
from metagrad.reversible import reversible_momentum_sgd
from metagrad.schedules import Schedule
from metagrad.transforms import EPS_ROOT, scale_by_learning_rates

CASES: tuple[str, ...] = ("lm", "mlp", "maml")

REVERSIBLE = "reversible"
"""Pseudo-mode of the ``mlp`` case: its momentum-SGD loop run by ``reversible_momentum_sgd``."""

MOMENTUM = (9, 10)
"""Momentum decay γ = 9/10 of the ``mlp`` case (a ratio of ints, as the reversible loop needs)."""


@dataclasses.dataclass(frozen=True)
class LMSize:
    """Sizes of the language-model case (defaults: the paper's setting scaled to a CPU), and the
    ``eps_root`` of its inner Adam (``0.0`` reproduces the ill-conditioned configuration)."""

    batch: int = 4
    seq: int = 512
    layers: int = 4
    width: int = 128
    steps: int = 8
    eps_root: float = EPS_ROOT


@dataclasses.dataclass(frozen=True)
class Built:
    """A compiled-ready meta-gradient: ``fn(*args) -> (outer value, meta-gradient)``."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    description: str
    per_step_state_bytes: int  # bytes of θ, optimiser state and g kept per step: the T-term
    problem: Bilevel | None = None  # the case as one Bilevel problem (for metagrad.check)
    check_inputs: dict[str, Any] = dataclasses.field(default_factory=dict)  # its meta and data
    perturb: int = 1  # index in args of the initial parameters (perturbed by the sensitivity)


def _tree_bytes(*trees: Any) -> int:
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for t in trees for x in jax.tree.leaves(t))


def _jit_meta_grad(problem: Bilevel, *, fixed_params: bool, same_batch: bool) -> Callable[..., Any]:
    def fn(meta: Any, params: Any, inner: Any, outer: Any) -> Any:
        data = {"inner_batch" if same_batch else "inner_batches": inner, "outer_batch": outer}
        return problem.value_and_grad(meta, params=params if fixed_params else None, **data)

    return jax.jit(fn)


def build_lm(mode: str, size: LMSize = LMSize(), seed: int = 0, schedule: Schedule = None) -> Built:
    """Per-sequence loss weights of a decoder LM, meta-learned through ``size.steps`` Adam steps.

    Args:
      mode: differentiation mode of the inner loop (``metagrad.MODES``).
      size: model, data and loop sizes.
      seed: PRNG seed of the parameters and the random tokens.
      schedule: trajectory checkpoint schedule of the inner loop (see ``metagrad.unroll``).

    Returns:
      The jitted meta-gradient and its arguments.
    """
    lm = DecoderLM(vocab_size=256, width=size.width, depth=size.layers, heads=4, max_len=size.seq)
    k_params, k_tokens, k_val = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = lm.init(k_params)
    n = size.steps * size.batch
    tokens = jax.random.randint(k_tokens, (size.steps, size.batch, size.seq), 0, 256, jnp.int32)
    batches = {"tokens": tokens, "index": jnp.arange(n, dtype=jnp.int32).reshape(size.steps, -1)}
    val = jax.random.randint(k_val, (size.batch, size.seq), 0, 256, jnp.int32)
    weights = jnp.ones((n,), jnp.float32)

    def inner_loss(p: Any, w: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
        return jnp.mean(w[batch["index"]] * lm.sequence_losses(p, batch["tokens"]))

    problem = Bilevel(
        inner_loss=inner_loss,
        outer_loss=lambda p, w, tok: jnp.mean(lm.sequence_losses(p, tok)),
        inner_optimizer=optax.adam(1e-3, eps_root=size.eps_root),
        steps=size.steps,
        mode=mode,
        schedule=schedule,
    )
    desc = (
        f"decoder LM {_count(params) / 1e6:.2f}M params, B={size.batch}, S={size.seq}, "
        f"{size.layers} layers, width {size.width}, T={size.steps} Adam steps, "
        f"per-sequence loss weights, eps_root={size.eps_root:g}"
    )
    return Built(
        _jit_meta_grad(problem, fixed_params=True, same_batch=False),
        (weights, params, batches, val),
        desc,
        4 * _tree_bytes(params),  # θ, Adam's two moments, g
        problem,
        {"meta": weights, "params": params, "inner_batches": batches, "outer_batch": val},
    )


def build_mlp(
    mode: str,
    sizes: Sequence[int] = (256, 1024, 1024, 1024, 10),
    batch: int = 256,
    steps: int = 8,
    seed: int = 0,
    schedule: Schedule = None,
) -> Built:
    """Per-parameter learning rates of an MLP classifier through ``steps`` SGD-momentum steps.

    Args:
      mode: differentiation mode of the inner loop (``metagrad.MODES``), or ``"reversible"``: the
        same trajectory (up to fixed-point rounding) run by ``reversible_momentum_sgd``, whose
        backward pass reverses it instead of storing it.
      sizes: layer widths, input first.
      batch: examples per inner step (and in the outer batch).
      steps: inner steps T.
      seed: PRNG seed of the parameters and the random data.
      schedule: trajectory checkpoint schedule of the inner loop (not with ``"reversible"``).

    Returns:
      The jitted meta-gradient and its arguments.

    References:
      Maclaurin, Duvenaud, Adams. *Gradient-based Hyperparameter Optimization through Reversible
      Learning*. ICML 2015 (the reversible loop).
    """
    mlp = MLP(sizes=tuple(sizes), activation="relu")
    k_params, k_x, k_y = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = mlp.init(k_params)
    x = jax.random.normal(k_x, (steps + 1, batch, sizes[0]))
    y = jax.random.randint(k_y, (steps + 1, batch), 0, sizes[-1], jnp.int32)
    lrs = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)

    def xent(p: Any, _: Any, b: tuple[jax.Array, jax.Array]) -> jax.Array:
        logits = mlp.apply(p, b[0])
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, b[1]))

    desc = (
        f"MLP {'-'.join(map(str, sizes))} ({_count(params) / 1e6:.2f}M params), batch {batch}, "
        f"T={steps} SGD-momentum steps, per-parameter learning rates"
    )
    args = (lrs, params, (x[:steps], y[:steps]), (x[steps], y[steps]))
    gamma = MOMENTUM[0] / MOMENTUM[1]
    if mode == REVERSIBLE:
        if schedule is not None:
            raise ValueError(
                f"build_mlp: mode='reversible' stores no trajectory, so it takes no schedule; got "
                f"schedule={schedule!r}."
            )

        def outer_value(m: Any, p0: Any, inner: Any, outer: Any) -> jax.Array:
            # optax.trace keeps v' = γv + g and steps θ -= lr·v'; the paper's parameterisation
            # v' = γv − (1−γ)g, θ += α·v' is the same trajectory with α = lr / (1 − γ).
            alpha = jax.tree.map(lambda lr: lr / (1 - gamma), m)
            p_t = reversible_momentum_sgd(
                xent, p0, inner, learning_rate=alpha, decay=MOMENTUM, meta=None
            )
            return xent(p_t, None, outer)

        return Built(
            jax.jit(jax.value_and_grad(outer_value)),
            args,
            desc.replace("SGD-momentum steps", "reversible SGD-momentum steps"),
            3 * _tree_bytes(params),  # what the stored trajectory would cost per step
        )
    problem = Bilevel(
        inner_loss=xent,
        outer_loss=xent,
        inner_optimizer=lambda m: optax.chain(optax.trace(decay=gamma), scale_by_learning_rates(m)),
        steps=steps,
        mode=mode,
        schedule=schedule,
    )
    return Built(
        _jit_meta_grad(problem, fixed_params=True, same_batch=False),
        args,
        desc,
        3 * _tree_bytes(params),  # θ, momentum, g
        problem,
        {"meta": lrs, "params": params, "inner_batches": args[2], "outer_batch": args[3]},
    )


def build_maml(
    mode: str,
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    steps: int = 5,
    meta_batch: int = 4,
    channels: int = 64,
    seed: int = 0,
) -> Built:
    """Second-order MAML on conv4: θ₀ is the meta-parameter; tasks are mapped sequentially."""
    net = Conv4(n_classes=ways, channels=channels, in_channels=1, image_size=28)
    k_params, k_s, k_q = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = net.init(k_params)
    support = (
        jax.random.uniform(k_s, (meta_batch, ways * shots, 28, 28, 1)),
        jnp.tile(jnp.arange(ways, dtype=jnp.int32).repeat(shots), (meta_batch, 1)),
    )
    query = (
        jax.random.uniform(k_q, (meta_batch, ways * queries, 28, 28, 1)),
        jnp.tile(jnp.arange(ways, dtype=jnp.int32).repeat(queries), (meta_batch, 1)),
    )

    def xent(p: Any, _: Any, b: tuple[jax.Array, jax.Array]) -> jax.Array:
        logits = net.apply(p, b[0])
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, b[1]))

    problem = Bilevel(
        inner_loss=xent,
        outer_loss=xent,
        inner_optimizer=optax.sgd(0.4),
        steps=steps,
        init_params=lambda m: m,
        mode=mode,
    )

    def meta_batch_loss(meta: Any, tasks: Any) -> jax.Array:
        per_task = jax.lax.map(
            lambda t: problem.outer_value(meta, inner_batch=t[0], outer_batch=t[1]), tasks
        )
        return jnp.mean(per_task)

    fn = jax.jit(jax.value_and_grad(meta_batch_loss))
    desc = (
        f"second-order MAML, conv4 {channels} ch ({_count(params) / 1e6:.2f}M params), "
        f"{ways}-way {shots}-shot, {queries} queries, T={steps} SGD steps, meta-batch {meta_batch}"
    )
    first_task = {
        "meta": params,
        "inner_batch": jax.tree.map(lambda x: x[0], support),
        "outer_batch": jax.tree.map(lambda x: x[0], query),
    }
    return Built(
        fn, (params, (support, query)), desc, 2 * _tree_bytes(params), problem, first_task, 0
    )


def build(case: str, mode: str, *, schedule: Schedule = None, **overrides: Any) -> Built:
    """Builds the named case for ``mode`` and ``schedule`` (keyword overrides go to the case's
    builder: ``LMSize`` fields for ``lm``, ``build_mlp``/``build_maml`` keywords otherwise)."""
    if case == "lm":
        return build_lm(mode, LMSize(**overrides), schedule=schedule)
    if case == "mlp":
        return build_mlp(mode, schedule=schedule, **overrides)
    if schedule is not None:
        raise ValueError(f"case {case!r} takes no schedule; got schedule={schedule!r}.")
    if case == "maml":
        return build_maml(mode, **overrides)
    raise ValueError(f"case must be one of {', '.join(CASES)}; got {case!r}.")


def _count(params: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


# -- running ----------------------------------------------------------------------------------


def run(
    cases: Sequence[str],
    modes: Sequence[str],
    repeats: int = 3,
    overrides: dict[str, dict[str, Any]] | None = None,
    *,
    reference_mode: str = "remat",
    delta: float = DEFAULT_DELTA,
) -> list[dict[str, Any]]:
    """Measures every (case, mode): compiled memory, median time, and exactness.

    Exactness is measured against a float64 reference on the CPU (``metagrad.diagnostics``),
    never by two float32 modes agreeing: on a CPU they may run the same operations. Beside it, the
    sensitivity of the float64 meta-gradient to a relative ``delta`` perturbation of the initial
    parameters says whether the figure means anything (a well-conditioned meta-gradient moves by
    about ``delta``).

    Args:
      cases: case names from ``CASES``.
      modes: differentiation modes.
      repeats: timed runs per measurement after a warm-up run.
      overrides: per-case keyword overrides of the builders' sizes, e.g. ``{"lm": {"seq": 128}}``.
      reference_mode: mode of the float64 reference: ``"remat"`` (default: reverse-over-reverse
        with per-step checkpoints, a fraction of ``"reverse"``'s memory in float64) or
        ``"reverse"``.
      delta: relative perturbation of the sensitivity estimate.

    Returns:
      One dict per (case, mode), JSON-ready.
    """
    from metagrad.bench.report import measure
    from metagrad.progress import progress_bar

    overrides = overrides or {}
    rows: list[dict[str, Any]] = []
    with progress_bar() as bar:
        task = bar.add_task("meta-grad benchmark", total=len(cases) * (len(modes) + 1), status="")
        for case in cases:
            bar.update(task, status=f"{case} / float64 {reference_mode} reference and sensitivity")
            ref = _reference(case, overrides.get(case, {}), reference_mode, delta)
            bar.advance(task)
            # float32 reverse mode: kept as a second column (agreement between float32 modes).
            reverse = None
            for mode in sorted(modes, key=lambda m: m != "reverse"):
                bar.update(task, status=f"{case} / {mode}: compiling and timing")
                built = build(case, mode, **overrides.get(case, {}))
                result = measure(built.fn, built.args, repeats)
                _, meta_grad = result.pop("output")
                if mode == "reverse":
                    reverse = meta_grad
                rows.append(
                    {
                        "case": case,
                        "mode": mode,
                        "description": built.description,
                        "rel_error_vs_float64": relative_error(meta_grad, ref.grad),
                        "sensitivity": ref.sensitivity,
                        "delta": delta,
                        "reference": {"mode": reference_mode, "dtype": ref.dtype, "device": "cpu"},
                        "rel_error_vs_reverse": (
                            float("nan") if reverse is None else relative_error(meta_grad, reverse)
                        ),
                        **result,
                    }
                )
                bar.advance(task)
        bar.update(task, status="done")
    return rows


def _reference(case: str, overrides: dict[str, Any], reference_mode: str, delta: float) -> Any:
    """The case's float64 meta-gradient and its sensitivity (one perturbation direction)."""
    built = build(case, reference_mode, **overrides)
    return float64_reference(
        lambda mode: build(case, mode, **overrides).fn,
        built.args,
        perturb=built.perturb,
        reference_mode=reference_mode,
        delta=delta,
        directions=1,
    )


# What ``--sweep P=...`` may name: the short names, then every LMSize field.
SWEEP_ALIASES = {"T": "steps", "S": "seq", "B": "batch"}


def _sweep_names() -> tuple[str, ...]:
    return (*SWEEP_ALIASES, *(f.name for f in dataclasses.fields(LMSize)))


def sweep(
    parameter: str, values: Sequence[int], modes: Sequence[str], base: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Compiled memory of the LM case as one size varies (compile only: nothing is run).

    Args:
      parameter: ``"T"`` (inner steps) or ``"S"`` (sequence length), or any ``LMSize`` field.
      values: the values to sweep.
      modes: differentiation modes.
      base: other ``LMSize`` overrides.

    Returns:
      One dict per (value, mode) with the compiled memory and the predicted per-step term.
    """
    from metagrad.memory import MiB, compiled_cost
    from metagrad.progress import progress_bar

    field = SWEEP_ALIASES.get(parameter, parameter)
    if field not in {f.name for f in dataclasses.fields(LMSize)}:
        raise ValueError(
            f"--sweep: unknown parameter {parameter!r}; use T (inner steps), S (sequence length), "
            "B (batch) or an LM size field (batch, seq, layers, width, steps)."
        )
    rows = []
    with progress_bar() as bar:
        task = bar.add_task(f"sweep {parameter}", total=len(values) * len(modes), status="")
        for value in values:
            for mode in modes:
                bar.update(task, status=f"{parameter}={value} / {mode}: compiling")
                size = LMSize(**{**(base or {}), field: value})
                built = build_lm(mode, size)
                cost = compiled_cost(built.fn, *built.args)
                rows.append(
                    {
                        "parameter": parameter,
                        "value": value,
                        "mode": mode,
                        "temp_mib": cost.temp_bytes / MiB,
                        "total_mib": cost.total_bytes / MiB,
                        "per_step_state_mib": built.per_step_state_bytes / MiB,
                    }
                )
                bar.advance(task)
    return rows


def per_step_growth(rows: Sequence[dict[str, Any]], mode: str) -> float:
    """Least-squares slope of temp memory (MiB) against T for one mode of a T sweep."""
    points = [(r["value"], r["temp_mib"]) for r in rows if r["mode"] == mode]
    if len(points) < 2:
        return float("nan")
    t, m = np.array(points, dtype=float).T
    return float(np.polyfit(t, m, 1)[0])


SWEEP_NAMES: tuple[str, ...] = _sweep_names()
