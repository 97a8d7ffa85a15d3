"""The one adaptation routine: patterns, algorithms and meta-gradients against plain references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metagrad import Bilevel
from metagrad.fewshot import Pattern, adapt_task, adaptation_flops, make_algorithm
from metagrad.fewshot.network import apply_layers, cross_entropy
from metagrad.memory import compiled_cost
from metagrad.models import MLP, Conv4

SIZES = (6, 8, 7, 3)
N_LAYERS = len(SIZES) - 1


def _task(key, ways=3, shots=2, queries=2, dim=SIZES[0]):
    k1, k2 = jax.random.split(key)
    sx = jax.random.normal(k1, (ways * shots, dim))
    qx = jax.random.normal(k2, (ways * queries, dim))
    sy = jnp.repeat(jnp.arange(ways), shots)
    qy = jnp.repeat(jnp.arange(ways), queries)
    return sx, sy, qx, qy


def _setup(dtype=jnp.float32):
    model = MLP(SIZES, activation="tanh")
    params = model.init(jax.random.PRNGKey(0), dtype)
    task = jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
        _task(jax.random.PRNGKey(1)),
    )
    return model, params, task


def reference(model, meta, task, pattern, lr, *, first_order=False, lrs=None):
    """Plain Python loop with explicit per-layer updates (jax.grad of the whole model)."""
    sx, sy, qx, qy = task
    params = meta["params"]
    for k, row in enumerate(pattern.matrix):
        g = jax.grad(lambda p: cross_entropy(model.apply(p, sx), sy))(params)
        if first_order:
            g = jax.lax.stop_gradient(g)
        new = []
        for layer, (p, gl, on) in enumerate(zip(params, g, row, strict=True)):
            if not on:
                new.append(p)
                continue
            if lrs == "per_parameter":
                rate = meta["lr"][layer]
                new.append(jax.tree.map(lambda a, b, r: a - r * b, p, gl, rate))
            elif lrs == "per_layer_step":
                rate = meta["lr"][layer][k]
                new.append(jax.tree.map(lambda a, b, r=rate: a - r * b, p, gl))
            else:
                new.append(jax.tree.map(lambda a, b: a - lr * b, p, gl))
        params = new
    return cross_entropy(model.apply(params, qx), qy), params


def _rel(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    num = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(la, lb, strict=True))
    return num / max(max(float(jnp.max(jnp.abs(y))) for y in lb), 1e-30)


def test_apply_layers_equals_model_apply():
    model, params, (sx, *_) = _setup()
    np.testing.assert_allclose(apply_layers(model, params, sx), model.apply(params, sx), rtol=1e-6)
    conv = Conv4(n_classes=3, channels=4, n_blocks=2, image_size=4)
    cp = conv.init(jax.random.PRNGKey(2))
    x = jax.random.uniform(jax.random.PRNGKey(3), (5, 4, 4, 1))
    feats = apply_layers(conv, cp[:1], x)
    np.testing.assert_allclose(apply_layers(conv, cp[1:], feats, 1), conv.apply(cp, x), rtol=1e-5)


@pytest.mark.parametrize(
    ("code", "cache"),
    [("001/011/111", True), ("110/110/001", True), ("000/010/000", True), ("001/011/111", False)],
)
def test_pattern_masking_equals_explicit_per_layer_updates(code, cache):
    model, params, task = _setup()
    pattern = Pattern.parse(code)
    alg = make_algorithm("maml", steps=3, inner_lr=0.3)
    meta = alg.init_meta(params)
    result = jax.jit(
        lambda m: adapt_task(model, alg, m, task, pattern=pattern, cache_features=cache)
    )(meta)
    ref_loss, ref_params = jax.jit(lambda m: reference(model, m, task, pattern, 0.3))(meta)
    assert _rel(result.params, ref_params) < 1e-5
    np.testing.assert_allclose(result.loss, ref_loss, rtol=1e-5)


@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_frozen_layers_receive_exactly_zero_update(inner):
    model, params, task = _setup()
    opt = optax.sgd(0.5) if inner == "sgd" else optax.adam(0.1)
    masks = [[True, False, True], [False, False, True], [True, False, False]]

    def loss(p, m, b):
        return cross_entropy(model.apply(p, b[0]), b[1])

    problem = Bilevel(loss, loss, opt, 3, init_params=lambda m: m, update_masks=masks)
    out = problem.adapt(params, inner_batch=task[:2])
    for a, b in zip(jax.tree.leaves(out.params[1]), jax.tree.leaves(params[1]), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))  # never updated: bit-identical
    assert not np.array_equal(np.asarray(out.params[2]["w"]), np.asarray(params[2]["w"]))


def _meta_grad(model, alg, meta, task, pattern=None, cache=True):
    return jax.jit(
        jax.grad(
            lambda m: adapt_task(model, alg, m, task, pattern=pattern, cache_features=cache).loss
        )
    )(meta)


@pytest.mark.parametrize(
    ("mode", "code"),
    [
        ("reverse", None),
        ("reverse", "011/001/111"),
        ("remat", "011/001/111"),
        ("mixflow", None),
        ("mixflow", "011/001/111"),
    ],
)
def test_second_order_maml_matches_reference(x64, mode, code):
    model, params, task = _setup(jnp.float64)
    pattern = Pattern.parse(code) if code else Pattern.full(3, N_LAYERS)
    alg = make_algorithm("maml", steps=3, inner_lr=0.3, mode=mode)
    meta = alg.init_meta(params)
    got = _meta_grad(model, alg, meta, task, pattern)
    want = jax.jit(jax.grad(lambda m: reference(model, m, task, pattern, 0.3)[0]))(meta)
    assert _rel(got, want) < 1e-9


@pytest.mark.parametrize("budget", [None, 2**22])
def test_auto_mode_matches_reference(x64, budget):
    # mode="auto" picks a mode and checkpoint schedule for one task's inner loop (vmapped over
    # tasks in training); whatever it picks, the meta-gradient is the exact one.
    model, params, task = _setup(jnp.float64)
    pattern = Pattern.parse("011/001/111")
    alg = make_algorithm("maml", steps=3, inner_lr=0.3, mode="auto", memory_budget=budget)
    meta = alg.init_meta(params)
    got = _meta_grad(model, alg, meta, task, pattern)
    want = jax.jit(jax.grad(lambda m: reference(model, m, task, pattern, 0.3)[0]))(meta)
    assert _rel(got, want) < 1e-9


def test_memory_budget_needs_auto_mode():
    with pytest.raises(ValueError, match="memory_budget must be None, or a positive int .* "
                       "got memory_budget=1024 with mode='mixflow'"):  # fmt: skip
        make_algorithm("maml", memory_budget=1024)
    with pytest.raises(ValueError, match="method='implicit' needs mode='mixflow' \\(got 'auto'\\)"):
        make_algorithm("imaml", mode="auto")


def test_first_order_maml_matches_reference(x64):
    model, params, task = _setup(jnp.float64)
    alg = make_algorithm("fomaml", steps=3, inner_lr=0.3)
    meta = alg.init_meta(params)
    got = _meta_grad(model, alg, meta, task)
    # First-order MAML: the query-loss gradient at the adapted parameters.
    _, adapted = reference(model, meta, task, Pattern.full(3, N_LAYERS), 0.3)
    sx, sy, qx, qy = task
    want = jax.grad(lambda p: cross_entropy(model.apply(p, qx), qy))(adapted)
    assert _rel(got["params"], want) < 1e-9
    second = _meta_grad(model, make_algorithm("maml", steps=3, inner_lr=0.3), meta, task)
    assert _rel(got, second) > 1e-4  # and it really differs from second order


def test_maml_with_inner_momentum_matches_reference(x64):
    """Heavy-ball momentum (optax.sgd(lr, momentum=β): v ← βv + g, θ ← θ − lr·v), unrolled."""
    model, params, task = _setup(jnp.float64)
    lr, beta = 0.3, 0.6
    alg = make_algorithm("maml", steps=3, inner_lr=lr, inner_momentum=beta)
    meta = alg.init_meta(params)
    sx, sy, qx, qy = task

    def want_loss(m):
        p = m["params"]
        v = jax.tree.map(jnp.zeros_like, p)
        for _ in range(3):
            g = jax.grad(lambda q: cross_entropy(model.apply(q, sx), sy))(p)
            v = jax.tree.map(lambda a, b: beta * a + b, v, g)
            p = jax.tree.map(lambda a, b: a - lr * b, p, v)
        return cross_entropy(model.apply(p, qx), qy)

    got = _meta_grad(model, alg, meta, task)
    want = jax.jit(jax.grad(want_loss))(meta)
    assert _rel(got, want) < 1e-9
    plain = _meta_grad(model, make_algorithm("maml", steps=3, inner_lr=lr), meta, task)
    assert _rel(got, plain) > 1e-4  # momentum really changes the inner loop


def test_inner_momentum_is_checked():
    with pytest.raises(ValueError, match=r"inner_momentum must be in \[0, 1\); got 1.0"):
        make_algorithm("maml", inner_momentum=1.0)
    with pytest.raises(ValueError, match="inner_momentum must be in"):
        make_algorithm("maml", inner_momentum=float("nan"))
    with pytest.raises(ValueError, match="inner_momentum needs a fixed learning rate"):
        make_algorithm("metasgd", inner_momentum=0.5)


@pytest.mark.parametrize("name", ["metasgd", "mamlpp"])
def test_learned_learning_rates_match_reference(x64, name):
    model, params, task = _setup(jnp.float64)
    alg = make_algorithm(name, steps=2, inner_lr=0.3)
    meta = alg.init_meta(params)
    # Make the rates differ per parameter / step so that indexing errors show.
    meta["lr"] = jax.tree.map(
        lambda r: r * (1 + 0.1 * jnp.arange(r.size).reshape(r.shape) / r.size), meta["lr"]
    )
    pattern = Pattern.parse("011/111")
    got = _meta_grad(model, alg, meta, task, pattern)
    want = jax.jit(
        jax.grad(lambda m: reference(model, m, task, pattern, 0.3, lrs=alg.learned_lr)[0])
    )(meta)
    assert _rel(got, want) < 1e-9
    if name == "mamlpp":
        # Layer 0 is frozen at step 0: its step-0 learning rate gets exactly zero meta-gradient.
        assert float(got["lr"][0][0]) == 0.0 and float(got["lr"][0][1]) != 0.0


def test_anil_and_boil_patterns():
    model, params, task = _setup()
    for name, frozen in [("anil", [0, 1]), ("boil", [2])]:
        alg = make_algorithm(name, steps=2, inner_lr=0.3)
        r = adapt_task(model, alg, alg.init_meta(params), task)
        for layer in frozen:
            assert np.array_equal(np.asarray(r.params[layer]["w"]), np.asarray(params[layer]["w"]))


def test_compiled_program_shrinks_for_head_only():
    conv = Conv4(n_classes=3, channels=16, n_blocks=2, image_size=8)
    params = conv.init(jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (6, 8, 8, 1))
    y = jnp.repeat(jnp.arange(3), 2)
    task = (x, y, x, y)
    alg = make_algorithm("maml", steps=2, inner_lr=0.4)
    meta = alg.init_meta(params)

    def flops(pattern):
        fn = jax.jit(lambda m, t: adapt_task(conv, alg, m, t, pattern=pattern).loss)
        return compiled_cost(fn, meta, task).flops

    full, top2, head = (flops(Pattern.top(2, 3, m)) for m in (3, 2, 1))
    assert head < top2 < full
    # Per-step accounting (XLA counts a loop body once): the head-only pattern is much cheaper.
    per_step = {
        p.name: adaptation_flops(conv, alg, meta, task, p)["total"]
        for p in (Pattern.full(2, 3), Pattern.top(2, 3, 1))
    }
    assert per_step["head"] < 0.7 * per_step["full"]
