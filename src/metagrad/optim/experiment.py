"""One width experiment: a model at a given width, its parameterisation, optimiser and training.

Shared by the coordinate check (:mod:`metagrad.optim.coord_check`) and the transfer sweep
(:mod:`metagrad.optim.sweep`) so that both train exactly the same way. A whole training run is
one ``jax.lax.scan`` compiled once per (optimiser, parameterisation, width); the learning rate is
an argument of the compiled function, so a learning-rate grid costs one compilation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from metagrad.models import MLP, Conv4, DecoderLM
from metagrad.optim.curvature import capture, find_layers
from metagrad.optim.parameterization import (
    OPTIMIZERS,
    PARAMETERIZATIONS,
    BaseShapes,
    attention_logit_scale,
    base_shapes,
    make_optimizer,
    set_base_shapes,
)
from metagrad.optim.tasks import ClassificationTask

Array = jax.Array
MODELS = ("mlp", "conv4", "lm")


@dataclasses.dataclass(frozen=True)
class WidthConfig:
    """What is trained at every width.

    Attributes:
      optimizer: ``"sgd"``, ``"adam"``, ``"kfac"`` or ``"shampoo"``.
      param: ``"sp"`` or ``"mup"``.
      model: ``"mlp"`` (``depth`` hidden layers of the given width), ``"conv4"`` (the width is
        the number of channels) or ``"lm"`` (the decoder LM with ``depth`` blocks and ``heads``
        heads on a token task such as :func:`metagrad.optim.tasks.text_task`; under μP its
        attention logits are scaled by ``1 / head_dim``, see :func:`make_model`).
      depth: number of hidden layers of the MLP (blocks of the LM).
      heads: attention heads of the LM (fixed across widths: the head dimension grows).
      base_width: the width whose hyper-parameters are transferred (μP equals SP there).
      activation: the MLP's activation.
      batch_size: examples per step.
      momentum: heavy-ball momentum (SGD, K-FAC, Shampoo).
      damping: K-FAC's ``ρ``.
      damping_rule: K-FAC's damping rule (``"trace"``, ``"pi"``, ``"absolute"``).
      refresh: K-FAC inverse / Shampoo root refresh interval (steps).
      stats_every: factor / statistics refresh interval (steps).
      shampoo_eps: Shampoo's ``ε``.
      shampoo_eps_mode: ``"relative"`` or ``"absolute"``.
      shampoo_exponent: Shampoo's power (1/4 or 1/2).
      shampoo_warmup: Shampoo recomputes its roots at every one of the first this many steps.
      shampoo_graft: Shampoo's grafting (``"none"``, ``"sgd"``, ``"rmsprop"``); a grafted
        Shampoo takes the grafted optimiser's width exponents.
      block_size: Shampoo's block size.
      zero_readout: μP only (ignored under SP, which keeps the standard initialisation): the
        read-out weights start at zero (:func:`metagrad.optim.scale_init`).
      zero_query: μP only, LM only: every block's query projection starts at zero
        (:meth:`metagrad.models.DecoderLM.zero_query`).
      b_trace_floor: μP K-FAC with the trace rule only (ignored otherwise, as the command line
        applies it to every run of a sweep; SP keeps the plain rule): the smallest
        ``tr(B)`` of the damping at the base width, scaled ``∝ 1 / fan_out_mult`` per layer
        (:func:`metagrad.optim.kfac_b_trace_floors`); what lets K-FAC start from a zero read-out.
    """

    optimizer: str = "kfac"
    param: str = "mup"
    model: str = "mlp"
    depth: int = 3
    heads: int = 4
    base_width: int = 64
    activation: str = "relu"
    batch_size: int = 128
    momentum: float = 0.0
    damping: float = 1e-2
    damping_rule: str = "trace"
    refresh: int = 10
    stats_every: int = 1
    shampoo_eps: float = 1e-4
    shampoo_eps_mode: str = "relative"
    shampoo_exponent: float = 0.25
    shampoo_warmup: int = 0
    shampoo_graft: str = "none"
    block_size: int = 1024
    zero_readout: bool = False
    zero_query: bool = False
    b_trace_floor: float = 0.0

    def __post_init__(self) -> None:
        for name, choices in (
            ("optimizer", OPTIMIZERS),
            ("param", PARAMETERIZATIONS),
            ("model", MODELS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"WidthConfig: {name} must be one of {choices}; got {getattr(self, name)!r}."
                )
        for name in ("depth", "heads", "base_width", "batch_size", "refresh", "stats_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"WidthConfig: {name} must be a positive int; got {v!r}.")
        if not (math.isfinite(self.b_trace_floor) and self.b_trace_floor >= 0.0):
            raise ValueError(
                f"WidthConfig: b_trace_floor must be finite and >= 0; got {self.b_trace_floor!r}."
            )
        if self.zero_query and self.model != "lm":
            raise ValueError(
                f"WidthConfig: zero_query needs the lm model (attention); got model={self.model!r}."
            )

    def optimizer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the optimiser itself."""
        if self.optimizer == "kfac":
            return {
                "damping": self.damping,
                "damping_rule": self.damping_rule,
                "inverse_every": self.refresh,
                "stats_every": self.stats_every,
                "b_trace_floor": self.b_trace_floor
                if self.param == "mup" and self.damping_rule == "trace"
                else 0.0,
            }
        if self.optimizer == "shampoo":
            return {
                "eps": self.shampoo_eps,
                "eps_mode": self.shampoo_eps_mode,
                "exponent": self.shampoo_exponent,
                "precond_every": self.refresh,
                "precond_warmup": self.shampoo_warmup,
                "graft": self.shampoo_graft,
                "stats_every": self.stats_every,
                "block_size": self.block_size,
            }
        return {}


@dataclasses.dataclass(frozen=True)
class Setup:
    """A model at one width with its parameterisation and optimiser (learning rate 1).

    Attributes:
      model: the :class:`~metagrad.models.MLP` or :class:`~metagrad.models.Conv4`.
      width: the width.
      shapes: per-parameter width information.
      optimizer: the optax transformation, with learning rate 1 (runs multiply by ``lr``).
      loss: ``loss(params, x, y)``, mean softmax cross-entropy.
      grad_and_stats: :func:`metagrad.optim.capture` of ``loss``.
      init: ``init(key) -> params`` with the parameterisation's initialisation.
    """

    model: Any
    width: int
    shapes: BaseShapes
    optimizer: optax.GradientTransformationExtraArgs
    loss: Callable[..., Array]
    grad_and_stats: Callable[..., Any]
    init: Callable[[Array], Any]


def make_model(config: WidthConfig, width: int, task: ClassificationTask) -> Any:
    """The model of ``config`` at ``width`` for ``task``."""
    if config.model == "mlp":
        d_in = int(jnp.prod(jnp.array(task.input_shape)))
        return MLP(
            sizes=(d_in, *([width] * config.depth), task.n_classes), activation=config.activation
        )
    if config.model == "lm":
        if len(task.input_shape) != 1 or not jnp.issubdtype(task.x_train.dtype, jnp.integer):
            raise ValueError(
                "the lm model needs a token task (int inputs of shape (n, seq_len)), e.g. "
                f"load_task('text'); got inputs of shape {task.input_shape} and dtype "
                f"{task.x_train.dtype}."
            )
        # μP: 1/d attention, equal to the standard 1/sqrt(d) at the base width.
        scale = attention_logit_scale(
            width // config.heads, config.base_width // config.heads, config.param
        )
        return DecoderLM(
            vocab_size=task.n_classes,
            width=width,
            depth=config.depth,
            heads=config.heads,
            max_len=task.input_shape[0],
            attn_logit_scale=scale,
        )
    h, w, c = task.input_shape
    if h != w:
        raise ValueError(f"conv4 needs square images; the task has input shape {task.input_shape}.")
    return Conv4(n_classes=task.n_classes, channels=width, in_channels=c, image_size=h)


def init_label(config: dict[str, Any]) -> str:
    """`` (zero read-out)``, `` (zero read-out + query)``, `` (zero query)`` or ``""`` for a
    result's ``config`` dict (plot titles); only μP runs use the zero initialisations."""
    if config.get("param") != "mup":
        return ""
    parts = [n for n, k in (("read-out", "zero_readout"), ("query", "zero_query")) if config.get(k)]
    return f" (zero {' + '.join(parts)})" if parts else ""


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy of integer labels."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def build(config: WidthConfig, width: int, task: ClassificationTask) -> Setup:
    """Builds the model, parameterisation and optimiser of ``config`` at ``width``.

    Args:
      config: the experiment.
      width: the width to build.
      task: the data (for input and output sizes).

    Returns:
      A :class:`Setup`.
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"build: width must be a positive int; got {width!r}.")
    model = make_model(config, width, task)
    base = make_model(config, config.base_width, task)
    key = jax.random.key(0)
    shape_params = jax.eval_shape(model.init, key)
    base_params = jax.eval_shape(base.init, key)
    x_dtype = jnp.int32 if config.model == "lm" else jnp.float32
    x_shape = jax.ShapeDtypeStruct((config.batch_size, *_input_shape(config, task)), x_dtype)
    y_shape = jax.ShapeDtypeStruct((config.batch_size, *task.y_train.shape[1:]), jnp.int32)

    def loss(params, x, y):
        return cross_entropy(model.apply(params, x), y)

    layers = find_layers(loss, shape_params, x_shape, y_shape)
    shapes = base_shapes(shape_params, base_params, layers=layers)
    opt = make_optimizer(
        config.optimizer,
        1.0,
        shapes,
        param=config.param,
        layers=layers if config.optimizer in ("kfac", "shampoo") else None,
        momentum=config.momentum,
        **config.optimizer_kwargs(),
    )

    mup = config.param == "mup"  # the zero initialisations are μP rules; SP stays standard
    readout = None
    if mup and config.zero_readout:
        # The read-out is zero at every width, the base width included, where no axis is wide
        # and every role would be "finite": name it by its role at twice the base width.
        wider = jax.eval_shape(make_model(config, 2 * config.base_width, task).init, key)
        readout = {
            w.name: "output"
            for w in base_shapes(wider, base_params, layers=layers).leaves
            if w.role == "output"
        }

    def init(k: Array) -> Any:
        params = model.init(k)
        params, _ = set_base_shapes(
            params,
            base_params,
            param=config.param,
            layers=layers,
            roles=readout,
            zero_readout=readout is not None,
        )
        if mup and config.zero_query:
            params = model.zero_query(params)
        return params

    return Setup(model, width, shapes, opt, loss, capture(loss), init)


def _input_shape(config: WidthConfig, task: ClassificationTask) -> tuple[int, ...]:
    if config.model == "mlp":
        return (int(jnp.prod(jnp.array(task.input_shape))),)
    return task.input_shape


def prepare_inputs(config: WidthConfig, x: Any) -> Array:
    """Flattens images for the MLP; leaves them for the conv net; tokens (int32) for the LM."""
    if config.model == "lm":
        return jnp.asarray(x, jnp.int32)
    x = jnp.asarray(x, jnp.float32)
    return x.reshape(len(x), -1) if config.model == "mlp" else x


def make_step(setup: Setup) -> Callable[..., Any]:
    """One training step ``(params, state, lr, x, y) -> (params, state, loss)``, not jitted."""
    opt = setup.optimizer

    def step(params, state, lr, x, y):
        loss, grads, stats = setup.grad_and_stats(params, x, y)
        updates, state = opt.update(grads, state, params, curvature=stats)
        updates = jax.tree_util.tree_map(lambda u: lr * u, updates)
        return optax.apply_updates(params, updates), state, loss

    return step


def make_train(
    setup: Setup,
    steps: int,
    batch_size: int,
    observe: Callable[..., Any] | None = None,
) -> Callable[..., Any]:
    """A compiled training run ``(params, lr, key, x, y, *extra) -> (params, records)``.

    Each step samples a minibatch (with replacement, from ``key``) and takes one step.

    Args:
      setup: the model, optimiser and loss at one width.
      steps: training steps.
      batch_size: examples per step.
      observe: ``(params, loss, *extra) -> record`` after each step; default: the minibatch
        loss before the step (a coordinate check records its feature changes instead).

    Returns:
      The jitted run; ``records`` stacks one record per step.
    """
    step = make_step(setup)

    def run(params, lr, key, x, y, *extra):
        state = setup.optimizer.init(params)
        n = x.shape[0]

        def body(carry, t):
            params, state = carry
            idx = jax.random.randint(jax.random.fold_in(key, t), (batch_size,), 0, n)
            params, state, loss = step(params, state, lr, x[idx], y[idx])
            record = loss if observe is None else observe(params, loss, *extra)
            return (params, state), record

        (params, _), records = jax.lax.scan(body, (params, state), jnp.arange(steps))
        return params, records

    return jax.jit(run)


def evaluate(
    setup: Setup, params: Any, x: Array, y: Array, chunk: int = 1024
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``params`` on ``(x, y)``."""
    apply = jax.jit(setup.model.apply)
    total, correct = 0.0, 0
    for i in range(0, len(x), chunk):
        logits = apply(params, x[i : i + chunk])
        yb = y[i : i + chunk]
        total += float(cross_entropy(logits, yb)) * len(yb)
        correct += int(jnp.sum(jnp.argmax(logits, -1) == yb))
    return total / len(x), correct / len(x)
