"""The few-shot layer's model protocol: Lambda patterns on an Equinox conv network."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

from metagrad.fewshot import LayerStack, Pattern, adapt_task, make_algorithm, n_layers
from metagrad.fewshot.network import apply_layers, cross_entropy

WAYS, SHOTS, QUERIES = 3, 2, 2


def _equinox_conv(key, dtype):
    """A small Equinox conv net (conv-relu, conv-relu-mean-pool, linear head) as a LayerStack."""
    k1, k2, k3 = jax.random.split(key, 3)
    layers = [
        eqx.nn.Conv2d(1, 4, 3, padding=1, key=k1),
        eqx.nn.Conv2d(4, 4, 3, padding=1, key=k2),
        eqx.nn.Linear(4, WAYS, key=k3),
    ]
    layers = jax.tree.map(lambda x: x.astype(dtype) if eqx.is_array(x) else x, layers)
    parts = [eqx.partition(layer, eqx.is_array) for layer in layers]
    statics = [static for _, static in parts]

    def conv(p, h, static):
        return jax.nn.relu(jax.vmap(eqx.combine(p, static))(h))

    def pooled(p, h, static):
        return jnp.mean(conv(p, h, static), axis=(2, 3))

    def head(p, h, static):
        return jax.vmap(eqx.combine(p, static))(h)

    funcs = (
        lambda p, h: conv(p, h, statics[0]),
        lambda p, h: pooled(p, h, statics[1]),
        lambda p, h: head(p, h, statics[2]),
    )
    return LayerStack(funcs), [p for p, _ in parts]


def _task(key, dtype):
    k1, k2 = jax.random.split(key)
    sx = jax.random.normal(k1, (WAYS * SHOTS, 1, 6, 6), dtype)
    qx = jax.random.normal(k2, (WAYS * QUERIES, 1, 6, 6), dtype)
    return sx, jnp.repeat(jnp.arange(WAYS), SHOTS), qx, jnp.repeat(jnp.arange(WAYS), QUERIES)


def _reference(model, params, task, pattern, lr):
    """Explicit per-layer SGD updates with jax.grad of the whole network."""
    sx, sy, qx, qy = task
    for row in pattern.matrix:
        g = jax.grad(lambda p: cross_entropy(apply_layers(model, p, sx), sy))(params)
        params = [
            jax.tree.map(lambda a, b: a - lr * b, p, gl) if on else p
            for p, gl, on in zip(params, g, row, strict=True)
        ]
    return cross_entropy(apply_layers(model, params, qx), qy)


def _rel(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    num = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(la, lb, strict=True))
    return num / max(max(float(jnp.max(jnp.abs(y))) for y in lb), 1e-30)


@pytest.mark.parametrize("code", ["011/001", "001/011"])
def test_lambda_pattern_on_an_equinox_conv_model_matches_a_plain_reference(x64, code):
    """Second-order meta-gradient (mixed mode) of a Lambda pattern with a frozen, cached prefix."""
    model, params = _equinox_conv(jax.random.PRNGKey(0), jnp.float64)
    task = _task(jax.random.PRNGKey(1), jnp.float64)
    assert n_layers(model) == 3
    pattern = Pattern.parse(code)
    alg = make_algorithm("maml", steps=2, inner_lr=0.3, mode="mixflow")
    meta = alg.init_meta(params)
    result = adapt_task(model, alg, meta, task, pattern=pattern)
    # The never-updated first layer keeps its exact parameters.
    for a, b in zip(jax.tree.leaves(result.params[0]), jax.tree.leaves(params[0]), strict=True):
        assert bool(jnp.all(a == b))
    got = jax.grad(lambda m: adapt_task(model, alg, m, task, pattern=pattern).loss)(meta)
    want = jax.grad(lambda m: _reference(model, m["params"], task, pattern, 0.3))(meta)
    assert _rel(got["params"], want["params"]) < 1e-9


def test_models_without_the_protocol_get_a_clear_error():
    with pytest.raises(TypeError, match="Wrap other networks .* in metagrad.fewshot.LayerStack"):
        n_layers(object())
    with pytest.raises(TypeError, match="LayerStack: functions must be a non-empty tuple"):
        LayerStack(())
