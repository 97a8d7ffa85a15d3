"""SP / μP: roles from base shapes, and the exponents of the table checked across two widths."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metagrad.models import MLP
from metagrad.optim import (
    base_shapes,
    exponents,
    find_layers,
    init_multipliers,
    kfac_b_trace_floors,
    kfac_damping_scales,
    lr_multipliers,
    make_optimizer,
    scale_by_width,
    set_base_shapes,
    shampoo_eps_scales,
)

BASE = MLP(sizes=(12, 8, 8, 3))


def _params(width, key=0):
    return MLP(sizes=(12, width, width, 3)).init(jax.random.key(key))


def _shapes(width):
    return base_shapes(jax.eval_shape(lambda: _params(width)), jax.eval_shape(lambda: _params(8)))


# (b_in, b_hid, b_out, c_in, c_hid, c_out) from methods.md section 3.
TABLE = {
    ("sgd", "sp"): (0, 0.5, 0.5, 0, 0, 0),
    ("sgd", "mup"): (0, 0.5, 1, -1, 0, 1),
    ("adam", "mup"): (0, 0.5, 1, 0, 1, 1),
    ("shampoo", "mup"): (0, 0.5, 1, -0.5, 0, 0.5),
    ("kfac", "mup"): (0, 0.5, 1, 0, 0, 0),
    ("kfac", "sp"): (0, 0.5, 0.5, 0, 0, 0),
}


def test_roles_inferred_from_base_shapes():
    roles = _shapes(32).roles()
    assert roles == {
        "0/w": "input",
        "0/b": "vector",
        "1/w": "hidden",
        "1/b": "vector",
        "2/w": "output",
        "2/b": "finite",
    }
    # Same width as the base: nothing is wide, nothing will be rescaled.
    assert set(_shapes(8).roles().values()) == {"finite"}
    # Equinox / PyTorch layout (out, in): the first axis is the fan-out.
    p = {"first": jnp.zeros((32, 12)), "last": jnp.zeros((3, 32))}
    b = {"first": jnp.zeros((8, 12)), "last": jnp.zeros((3, 8))}
    assert base_shapes(p, b, layout="out_in").roles() == {"first": "input", "last": "output"}
    assert base_shapes(p, b, roles={"last": "hidden"}, layout="out_in").roles()["last"] == "hidden"


def test_layers_give_the_fan_axes_whatever_the_layout():
    p = {"w": jnp.zeros((3, 32))}  # used as x @ w.T: (out, in) storage
    b = {"w": jnp.zeros((3, 8))}
    layers = find_layers(lambda q, x: jnp.sum(x @ q["w"].T), p, jnp.zeros((2, 32)))
    assert layers[0].fan_in_axes == (1,)
    assert base_shapes(p, b, layers=layers).roles() == {"w": "output"}
    assert base_shapes(p, b).roles() == {"w": "input"}  # the default layout would be wrong


@pytest.mark.parametrize("key", sorted(TABLE))
def test_exponents_by_comparing_two_widths(key):
    """Init std and per-layer learning rate ratios between widths 64 and 1024 follow the table."""
    opt, param = key
    b_in, b_hid, b_out, c_in, c_hid, c_out = TABLE[key]
    exps = exponents(opt, param)
    ratio = 1024 / 64
    s16, s64 = _shapes(64), _shapes(1024)
    lr16, lr64 = lr_multipliers(s16, exps), lr_multipliers(s64, exps)
    for layer, c in ((0, c_in), (1, c_hid), (2, c_out)):
        np.testing.assert_allclose(math.log(lr64[layer]["w"] / lr16[layer]["w"], ratio), -c)
    # Init: empirical standard deviations of actually initialised and rescaled weights.
    p16, _ = set_base_shapes(_params(64), _params(8), param=param)
    p64, _ = set_base_shapes(_params(1024), _params(8), param=param)
    for layer, b, fan_in_fixed in ((0, b_in, True), (1, b_hid, False), (2, b_out, False)):
        std16, std64 = float(jnp.std(p16[layer]["w"])), float(jnp.std(p64[layer]["w"]))
        # Var ∝ width^(-2b) for the wide fan-in; the input layer's fan-in is fixed.
        expected = 0.0 if fan_in_fixed else -b
        np.testing.assert_allclose(math.log(std64 / std16, ratio), expected, atol=0.04)


def test_general_rule_for_shampoo_exponent_and_grafting():
    e = exponents("shampoo", "mup", shampoo_exponent=0.5)
    assert (e.c["input"], e.c["hidden"], e.c["output"]) == (0.0, 0.0, 0.0)
    assert exponents("shampoo", "mup", graft="rmsprop").c == exponents("adam", "mup").c
    assert exponents("shampoo", "mup", one_d="diagonal").c["vector"] == 0.0
    assert exponents("shampoo", "mup").c["vector"] == -1.0


def test_damping_and_eps_width_scaling():
    s = _shapes(32)
    layers = find_layers(
        lambda p, x: jnp.sum(MLP(sizes=(12, 32, 32, 3)).apply(p, x)),
        jax.eval_shape(lambda: _params(32)),
        jnp.zeros((2, 12)),
    )
    scales = kfac_damping_scales(s, layers, "mup")
    # ρ_A ∝ fan_in (Θ(1) input, Θ(M) hidden/output), ρ_B ∝ 1/fan_out (Θ(1/M) in/hid, Θ(1) out).
    assert scales == {"0/w": (1.0, 0.25), "1/w": (4.0, 0.25), "2/w": (4.0, 1.0)}
    assert set(kfac_damping_scales(s, layers, "sp").values()) == {(1.0, 1.0)}
    # The floor of tr(B) follows tr(B) = E‖δ‖²: ∝ 1/fan_out under μP, unscaled under SP.
    assert kfac_b_trace_floors(s, layers, 1e-3, "mup") == {
        "0/w": 2.5e-4,
        "1/w": 2.5e-4,
        "2/w": 1e-3,
    }
    assert set(kfac_b_trace_floors(s, layers, 1e-3, "sp").values()) == {1e-3}
    eps = shampoo_eps_scales(s, "mup")
    assert (eps[0]["w"], eps[1]["w"], eps[2]["w"]) == (0.25, 1.0, 4.0)
    assert eps[0]["b"] == 1 / 16
    mults = init_multipliers(s, "mup")
    assert mults[2]["w"] == 0.5 and mults[1]["w"] == 1.0


def test_make_optimizer_applies_per_layer_learning_rates():
    s = _shapes(32)
    params = _params(32)
    grads = jax.tree.map(jnp.ones_like, params)
    opt = make_optimizer("sgd", 0.1, s, param="mup")
    updates, _ = opt.update(grads, opt.init(params), params)
    assert float(updates[0]["w"][0, 0]) == pytest.approx(-0.4)  # input: lr × width multiplier
    assert float(updates[1]["w"][0, 0]) == pytest.approx(-0.1)
    assert float(updates[2]["w"][0, 0]) == pytest.approx(-0.025)
    plain = make_optimizer("sgd", 0.1)
    updates, _ = plain.update(grads, plain.init(params), params)
    assert float(updates[0]["w"][0, 0]) == pytest.approx(-0.1)
    u, _ = scale_by_width({"a": 2.0}).update({"a": jnp.ones(2)}, optax.EmptyState())
    np.testing.assert_array_equal(u["a"], 2.0)


def test_errors_name_the_argument():
    s = _shapes(32)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        exponents("lbfgs")
    with pytest.raises(ValueError, match="param must be one of"):
        exponents("sgd", "ntk")
    with pytest.raises(ValueError, match="same tree structure"):
        base_shapes(_params(32), {"w": jnp.zeros(3)})
    with pytest.raises(ValueError, match="same number of axes"):
        base_shapes({"w": jnp.zeros((3, 4))}, {"w": jnp.zeros(3)})
    with pytest.raises(ValueError, match="layout must be one of"):
        base_shapes(_params(32), _params(8), layout="nchw")
    with pytest.raises(ValueError, match="roles\\['0/w'\\] must be one of"):
        base_shapes(_params(32), _params(8), roles={"0/w": "readout"})
    with pytest.raises(ValueError, match="unknown parameters"):
        base_shapes(_params(32), _params(8), roles={"9/w": "input"})
    with pytest.raises(ValueError, match="layers is required"):
        make_optimizer("kfac", 0.1, s)
    with pytest.raises(TypeError, match="shapes must be the BaseShapes"):
        make_optimizer("sgd", 0.1, {"w": 1})
    with pytest.raises(ValueError, match="momentum must be in"):
        make_optimizer("sgd", 0.1, s, momentum=1.0)
    with pytest.raises(ValueError, match="same tree structure as the updates"):
        scale_by_width({"a": 1.0, "b": 2.0}).update({"a": jnp.ones(2)}, optax.EmptyState())
