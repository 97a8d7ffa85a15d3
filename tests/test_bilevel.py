"""Bilevel meta-gradients in every mode equal a plain reverse-over-reverse reference (float64)."""

import dataclasses

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import metagrad
from metagrad import Bilevel

STEPS = 3
OPTIMIZERS = {
    "sgd": lambda lr: optax.sgd(lr),
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": lambda lr: optax.adam(lr),
}


def _rel_err(a, b):
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    num = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(a, b, strict=True))
    den = max(float(jnp.max(jnp.abs(y))) for y in b)
    return num / max(den, 1e-30)


def mlp_init(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (a, b)) / jnp.sqrt(a), "b": 0.1 * jnp.ones(b)}
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def mlp_apply(params, x):
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def per_example(params, batch):
    return jnp.sum((mlp_apply(params, batch["x"]) - batch["y"]) ** 2, axis=-1)


def _data(key, sizes, steps=STEPS, n=5):
    kx, ky, kv = jax.random.split(key, 3)
    batches = {
        "x": jax.random.normal(kx, (steps, n, sizes[0])),
        "y": jax.random.normal(ky, (steps, n, sizes[-1])),
    }
    val = {"x": jax.random.normal(kv, (n, sizes[0])), "y": jnp.ones((n, sizes[-1]))}
    return batches, val


def reference_value(meta, *, inner_loss, outer_loss, make_opt, params0, batches, val):
    """Plain Python loop, jax.grad inside: the reverse-over-reverse reference."""
    params = params0(meta)
    opt = make_opt(meta)
    state = opt.init(params)
    for t in range(STEPS):
        g = jax.grad(inner_loss)(params, meta, jax.tree.map(lambda b, t=t: b[t], batches))
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return outer_loss(params, meta, val)


def _configuration(where, opt_name, params):
    make = OPTIMIZERS[opt_name]
    outer = lambda p, m, b: jnp.mean(per_example(p, b))  # noqa: E731
    plain = lambda p, m, b: jnp.mean(per_example(p, b))  # noqa: E731
    if where == "loss_weights":
        meta = jnp.linspace(0.5, 1.5, 5)
        return meta, dict(
            inner_loss=lambda p, m, b: jnp.mean(m * per_example(p, b)),
            outer_loss=outer,
            make_opt=lambda m: make(0.05),
            params0=lambda m: params,
        )
    if where == "learning_rate":
        meta = {"lr": jnp.asarray(0.05)}
        return meta, dict(
            inner_loss=plain,
            outer_loss=outer,
            make_opt=lambda m: make(m["lr"]),
            params0=lambda m: params,
        )
    if where == "inject_hyperparams":
        meta = {"lr": jnp.asarray(0.05)}
        return meta, dict(
            inner_loss=plain,
            outer_loss=outer,
            make_opt=lambda m: optax.inject_hyperparams(make)(lr=m["lr"]),
            params0=lambda m: params,
        )
    if where == "per_parameter_lr":
        meta = jax.tree.map(
            lambda p: jnp.full_like(p, 0.05) * (1 + 0.1 * jnp.arange(p.shape[-1])), params
        )
        momentum = {"sgd": 0.0, "momentum": 0.9, "adam": 0.0}[opt_name]
        first = optax.scale_by_adam() if opt_name == "adam" else optax.trace(decay=momentum)
        return meta, dict(
            inner_loss=plain,
            outer_loss=outer,
            make_opt=lambda m: optax.chain(first, metagrad.scale_by_learning_rates(m)),
            params0=lambda m: params,
        )
    if where == "initial_params":  # MAML
        return params, dict(
            inner_loss=plain, outer_loss=outer, make_opt=lambda m: make(0.05), params0=lambda m: m
        )
    raise AssertionError(where)


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize(
    "where",
    ["loss_weights", "learning_rate", "inject_hyperparams", "per_parameter_lr", "initial_params"],
)
def test_every_mode_matches_reference(x64, opt_name, where):
    sizes = (3, 4, 2)
    params = mlp_init(jax.random.PRNGKey(0), sizes)
    batches, val = _data(jax.random.PRNGKey(1), sizes)
    meta, cfg = _configuration(where, opt_name, params)
    ref_value, ref_grad = jax.jit(
        jax.value_and_grad(lambda m: reference_value(m, **cfg, batches=batches, val=val))
    )(meta)
    maml = where == "initial_params"
    for mode in metagrad.MODES:
        problem = Bilevel(
            inner_loss=cfg["inner_loss"],
            outer_loss=cfg["outer_loss"],
            inner_optimizer=cfg["make_opt"],
            steps=STEPS,
            init_params=(lambda m: m) if maml else None,
            mode=mode,
        )
        value, grad = jax.jit(
            lambda m, problem=problem: problem.value_and_grad(
                m, params=None if maml else params, inner_batches=batches, outer_batch=val
            )
        )(meta)
        assert float(value) == pytest.approx(float(ref_value), rel=1e-12)
        assert _rel_err(grad, ref_grad) <= 1e-8, (mode, _rel_err(grad, ref_grad))


@settings(max_examples=6, deadline=None)
@given(
    hidden=st.lists(st.integers(1, 5), min_size=0, max_size=2),
    d_in=st.integers(1, 4),
    d_out=st.integers(1, 3),
    steps=st.integers(1, 4),
    mode=st.sampled_from(["remat", "mixflow"]),
    seed=st.integers(0, 2**16),
)
def test_random_mlps_and_horizons(hidden, d_in, d_out, steps, mode, seed):
    with jax.enable_x64(True):
        sizes = (d_in, *hidden, d_out)
        params = mlp_init(jax.random.PRNGKey(seed), sizes)
        batches, val = _data(jax.random.PRNGKey(seed + 1), sizes, steps=steps, n=3)
        meta = {"w": jnp.linspace(0.5, 1.5, 3), "lr": jnp.asarray(0.1)}

        def value(m, mode):
            problem = Bilevel(
                inner_loss=lambda p, m, b: jnp.mean(m["w"] * per_example(p, b)),
                outer_loss=lambda p, m, b: jnp.mean(per_example(p, b)),
                inner_optimizer=lambda m: optax.sgd(m["lr"], momentum=0.5),
                steps=steps,
                mode=mode,
            )
            return problem.outer_value(m, params=params, inner_batches=batches, outer_batch=val)

        ref = jax.grad(value)(meta, "reverse")
        got = jax.grad(value)(meta, mode)
        assert _rel_err(got, ref) <= 1e-8


def test_same_batch_every_step_equals_stacked(x64):
    sizes = (3, 4, 2)
    params = mlp_init(jax.random.PRNGKey(2), sizes)
    batches, val = _data(jax.random.PRNGKey(3), sizes)
    one = jax.tree.map(lambda b: b[0], batches)
    stacked = jax.tree.map(lambda b: jnp.stack([b] * STEPS), one)
    problem = Bilevel(
        inner_loss=lambda p, m, b: jnp.mean(per_example(p, b)),
        outer_loss=lambda p, m, b: jnp.mean(per_example(p, b)),
        inner_optimizer=optax.sgd(0.1),
        steps=STEPS,
        init_params=lambda m: m,
    )
    a = problem.value_and_grad(params, inner_batch=one, outer_batch=val)
    b = problem.value_and_grad(params, inner_batches=stacked, outer_batch=val)
    assert _rel_err(a, b) < 1e-12
    result = problem.adapt(params, inner_batch=one)
    assert result.losses.shape == (STEPS,) and bool(result.losses[-1] < result.losses[0])


def test_jitted_meta_training_with_optax_outer_optimizer():
    """Learn per-example loss weights: examples with flipped targets should be down-weighted."""
    key = jax.random.PRNGKey(4)
    x = jax.random.normal(key, (STEPS, 8, 3))
    w_true = jnp.array([[1.0], [-2.0], [0.5]])
    y = x @ w_true
    corrupt = jnp.arange(8) < 3
    y_noisy = jnp.where(corrupt[None, :, None], -y, y)
    val = {"x": x[0], "y": y[0]}
    problem = Bilevel(
        inner_loss=lambda p, m, b: jnp.mean(
            jax.nn.softplus(m) * jnp.sum((b["x"] @ p - b["y"]) ** 2, -1)
        ),
        outer_loss=lambda p, m, b: jnp.mean((b["x"] @ p - b["y"]) ** 2),
        inner_optimizer=optax.sgd(0.1),
        steps=STEPS,
    )
    outer_opt = optax.adam(0.1)
    meta = jnp.zeros(8)
    state = outer_opt.init(meta)
    step = metagrad.meta_train_step(problem, outer_opt)
    data = dict(params=jnp.zeros((3, 1)), inner_batches={"x": x, "y": y_noisy}, outer_batch=val)
    first = None
    for _ in range(30):
        meta, state, value = step(meta, state, **data)
        first = value if first is None else first
    assert float(value) < 0.5 * float(first)
    assert float(jnp.mean(meta[:3])) < float(jnp.mean(meta[3:]))


# -- other model libraries ------------------------------------------------------------------------


def _check_library_model(apply, params, x64_data):
    batches, val = x64_data

    def inner(p, w, b):
        return jnp.mean(w * jnp.sum((apply(p, b["x"]) - b["y"]) ** 2, -1))

    outer = lambda p, w, b: jnp.mean((apply(p, b["x"]) - b["y"]) ** 2)  # noqa: E731
    meta = jnp.linspace(0.5, 1.5, 5)
    grads = {}
    for mode in metagrad.MODES:
        problem = Bilevel(
            inner_loss=inner,
            outer_loss=outer,
            inner_optimizer=optax.adam(0.05),
            steps=STEPS,
            mode=mode,
        )
        grads[mode] = problem.value_and_grad(
            meta, params=params, inner_batches=batches, outer_batch=val
        )[1]
    assert _rel_err(grads["mixflow"], grads["reverse"]) <= 1e-8
    assert _rel_err(grads["remat"], grads["reverse"]) <= 1e-8


def test_equinox_model(x64):
    model = eqx.nn.MLP(3, 2, width_size=4, depth=2, activation=jnp.tanh, key=jax.random.PRNGKey(5))
    model = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    apply = lambda p, x: jax.vmap(eqx.combine(p, static))(x)  # noqa: E731
    _check_library_model(apply, params, _data(jax.random.PRNGKey(6), (3, 2)))


def test_flax_model(x64):
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2, param_dtype=jnp.float64)(
                nn.tanh(nn.Dense(4, param_dtype=jnp.float64)(x))
            )

    net = Net()
    params = net.init(jax.random.PRNGKey(7), jnp.zeros((1, 3)))
    _check_library_model(net.apply, params, _data(jax.random.PRNGKey(8), (3, 2)))


# -- errors -------------------------------------------------------------------------------------


def _simple_problem(**kw):
    base = dict(
        inner_loss=lambda p, m, b: jnp.sum((p - m) ** 2),
        outer_loss=lambda p, m, b: jnp.sum(p),
        inner_optimizer=optax.sgd(0.1),
        steps=2,
    )
    base.update(kw)
    return Bilevel(**base)


def test_unknown_mode():
    with pytest.raises(
        ValueError, match="mode must be one of 'reverse', 'remat', 'mixflow'; got 'auto-magic'"
    ):
        _simple_problem(mode="auto-magic")


def test_bad_steps_and_types():
    with pytest.raises(ValueError, match="steps must be a positive int; got 0"):
        _simple_problem(steps=0)
    with pytest.raises(TypeError, match="inner_optimizer must be an optax.GradientTransformation"):
        _simple_problem(inner_optimizer=0.1)
    with pytest.raises(TypeError, match="inner_loss must be a function"):
        _simple_problem(inner_loss=None)


def test_non_float_meta_parameters():
    with pytest.raises(
        TypeError,
        match="meta must contain floating-point arrays only; meta\\['n'\\] has dtype int32",
    ):
        _simple_problem().value_and_grad(
            {"n": jnp.array(3)}, params=jnp.ones(2), inner_batch=0.0, outer_batch=0.0
        )


def test_non_scalar_losses():
    with pytest.raises(TypeError, match="scalar floating-point loss"):
        _simple_problem(inner_loss=lambda p, m, b: (p - m) ** 2).value_and_grad(
            jnp.ones(2), params=jnp.ones(2), inner_batch=0.0, outer_batch=0.0
        )
    with pytest.raises(TypeError, match="outer_loss must return a scalar; got shape \\(2,\\)"):
        _simple_problem(outer_loss=lambda p, m, b: p).value_and_grad(
            jnp.ones(2), params=jnp.ones(2), inner_batch=0.0, outer_batch=0.0
        )


def test_batches_and_params_arguments():
    problem = _simple_problem()
    with pytest.raises(ValueError, match="exactly one of inner_batches"):
        problem.value_and_grad(jnp.ones(2), params=jnp.ones(2), outer_batch=0.0)
    with pytest.raises(ValueError, match="leading axis of size steps=2; found shape \\(3, 4\\)"):
        problem.value_and_grad(
            jnp.ones(2), params=jnp.ones(2), inner_batches=jnp.ones((3, 4)), outer_batch=0.0
        )
    with pytest.raises(ValueError, match="no initial parameters"):
        problem.value_and_grad(jnp.ones(2), inner_batch=0.0, outer_batch=0.0)
    with pytest.raises(ValueError, match="got both init_params"):
        _simple_problem(init_params=lambda m: m).value_and_grad(
            jnp.ones(2), params=jnp.ones(2), inner_batch=0.0, outer_batch=0.0
        )


def test_mismatched_pytrees():
    """Per-parameter learning rates with the wrong structure, and meta/param mismatch in the loss."""
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    problem = _simple_problem(
        inner_loss=lambda p, m, b: jnp.sum(p["a"] ** 2) + jnp.sum(p["b"] ** 2),
        inner_optimizer=lambda m: metagrad.scale_by_learning_rates(m),
        outer_loss=lambda p, m, b: jnp.sum(p["a"]),
    )
    with pytest.raises(
        ValueError, match="learning_rates must have the structure of the parameters"
    ):
        problem.value_and_grad({"a": jnp.ones(2)}, params=params, inner_batch=0.0, outer_batch=0.0)


def _weights_problem(**kw):
    return Bilevel(
        inner_loss=lambda p, w, b: jnp.mean(w * per_example(p, b)),
        outer_loss=lambda p, w, b: jnp.mean(per_example(p, b)),
        inner_optimizer=optax.adam(0.05, eps_root=metagrad.EPS_ROOT),
        steps=STEPS,
        **kw,
    )


def test_windows_continue_from_the_returned_state_like_one_long_loop(x64):
    """Two windows of T steps, the second from the first's parameters and Adam state (returned by
    value_and_grad(return_inner=True)), end where one loop of 2T steps ends."""
    sizes = (2, 4, 1)
    params = jax.tree.map(lambda x: x.astype(jnp.float64), mlp_init(jax.random.PRNGKey(0), sizes))
    batches, val = _data(jax.random.PRNGKey(1), sizes, steps=2 * STEPS)
    batches = jax.tree.map(lambda x: x.astype(jnp.float64), batches)
    val = jax.tree.map(lambda x: x.astype(jnp.float64), val)
    w = jnp.linspace(0.5, 1.5, 5)
    first = jax.tree.map(lambda x: x[:STEPS], batches)
    second = jax.tree.map(lambda x: x[STEPS:], batches)
    problem = _weights_problem()
    _, _, inner = problem.value_and_grad(
        w, params=params, inner_batches=first, outer_batch=val, return_inner=True
    )
    value, grad, inner2 = problem.value_and_grad(
        w,
        params=inner.params,
        opt_state=inner.opt_state,
        inner_batches=second,
        outer_batch=val,
        return_inner=True,
    )
    long = dataclasses.replace(problem, steps=2 * STEPS).adapt(
        w, params=params, inner_batches=batches
    )
    assert _rel_err(inner2.params, long.params) < 1e-12
    assert _rel_err(inner2.opt_state, long.opt_state) < 1e-12
    # The truncated meta-gradient treats the window's start as constant: same as reverse mode.
    ref = dataclasses.replace(problem, mode="reverse").value_and_grad(
        w, params=inner.params, opt_state=inner.opt_state, inner_batches=second, outer_batch=val
    )
    assert float(value) == pytest.approx(float(ref[0]), rel=1e-12)
    assert _rel_err(grad, ref[1]) < 1e-10


def test_auto_mode_with_a_budget_is_exact(x64):
    sizes = (2, 4, 1)
    params = jax.tree.map(lambda x: x.astype(jnp.float64), mlp_init(jax.random.PRNGKey(0), sizes))
    batches, val = _data(jax.random.PRNGKey(1), sizes)
    batches = jax.tree.map(lambda x: x.astype(jnp.float64), batches)
    val = jax.tree.map(lambda x: x.astype(jnp.float64), val)
    w = jnp.linspace(0.5, 1.5, 5)
    data = {"params": params, "inner_batches": batches, "outer_batch": val}
    auto = _weights_problem(mode="auto", memory_budget=2**30).value_and_grad(w, **data)
    ref = _weights_problem(mode="reverse").value_and_grad(w, **data)
    assert _rel_err(auto[1], ref[1]) < 1e-10


def test_mode_and_budget_errors():
    with pytest.raises(ValueError, match="memory_budget is used by mode='auto' only"):
        _weights_problem(memory_budget=2**20)
    with pytest.raises(ValueError, match="mode='auto' chooses the schedule too"):
        _weights_problem(mode="auto", schedule="sqrt")
    with pytest.raises(ValueError, match="memory_budget must be a positive int"):
        _weights_problem(mode="auto", memory_budget=0.5)


def test_meta_train_step_takes_any_objective(x64):
    """One builder: a function objective with aux, and the meta-gradient returned on request."""
    opt = optax.sgd(0.1)

    def objective(m, *, x):
        return jnp.sum((m - x) ** 2), {"x_mean": jnp.mean(x)}

    step = metagrad.meta_train_step(objective, opt, has_aux=True, return_grad=True)
    m = jnp.ones(3)
    new, _, value, aux, grad = step(m, opt.init(m), x=jnp.zeros(3))
    assert float(value) == 3.0 and float(aux["x_mean"]) == 0.0
    assert jnp.allclose(grad, 2 * m) and jnp.allclose(new, m - 0.1 * 2 * m)
    with pytest.raises(ValueError, match="return_inner is for a Bilevel"):
        metagrad.meta_train_step(objective, opt, return_inner=True)
    with pytest.raises(ValueError, match="has_aux is for objective functions"):
        metagrad.meta_train_step(_weights_problem(), opt, has_aux=True)
    with pytest.raises(TypeError, match="objective must be a metagrad.Bilevel or a function"):
        metagrad.meta_train_step(3, opt)
