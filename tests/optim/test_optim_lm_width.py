"""μP for the decoder LM: attention scale, roles, the width experiments on a token task."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metagrad.models import DecoderLM
from metagrad.optim import attention_logit_scale
from metagrad.optim.coord_check import coord_check
from metagrad.optim.experiment import WidthConfig, build
from metagrad.optim.tasks import ClassificationTask

TINY = {"model": "lm", "depth": 1, "heads": 2, "base_width": 8, "batch_size": 4}


@pytest.fixture(scope="module")
def tokens():
    rng = np.random.default_rng(0)
    seqs = rng.integers(0, 16, (48, 9)).astype(np.int32)
    return ClassificationTask(
        seqs[:32, :-1], seqs[:32, 1:], seqs[32:, :-1], seqs[32:, 1:], 16, "tokens"
    )


def test_attention_scale_and_features(x64):
    lm = DecoderLM(vocab_size=11, width=16, depth=2, heads=2, max_len=8)
    params = lm.init(jax.random.key(0), jnp.float64)
    tok = jnp.asarray(np.random.default_rng(1).integers(0, 11, (3, 8)))
    # None is the standard 1/sqrt(head_dim); μP's scale equals it at the base width.
    explicit = DecoderLM(**{**lm.__dict__, "attn_logit_scale": attention_logit_scale(8, 8)})
    np.testing.assert_allclose(explicit.apply(params, tok), lm.apply(params, tok), rtol=1e-12)
    wide = DecoderLM(**{**lm.__dict__, "attn_logit_scale": attention_logit_scale(8, 2)})
    assert not np.allclose(wide.apply(params, tok), lm.apply(params, tok))
    logits, feats = lm.apply(params, tok, return_features=True)
    assert len(feats) == len(lm.feature_names) == 6
    assert lm.feature_names[0] == "embed" and lm.feature_names[-1] == "logits"
    np.testing.assert_array_equal(feats[-1], logits)
    assert feats[1].shape == (3, 8, 16)
    with pytest.raises(ValueError, match="attn_logit_scale must be None"):
        DecoderLM(attn_logit_scale=-1.0)


def test_lm_roles_and_mup_attention(tokens):
    setup = build(WidthConfig(optimizer="adam", param="mup", **TINY), 32, tokens)
    roles = setup.shapes.roles()
    assert roles["embed"] == "input" and roles["unembed"] == "output"
    assert {roles[f"blocks/0/{k}/w"] for k in ("attn/qkv", "attn/out", "mlp/up", "mlp/down")} == {
        "hidden"
    }
    assert roles["blocks/0/attn_norm/scale"] == "vector"
    # heads fixed: head_dim 16 at width 32 against 4 at the base width 8 -> 2 / 16.
    assert setup.model.attn_logit_scale == pytest.approx(2.0 / 16)
    sp = build(WidthConfig(optimizer="adam", param="sp", **TINY), 32, tokens)
    assert sp.model.attn_logit_scale is None
    # μP read-out init: variance 1/width² relative to SP's 1/width at the base -> 4x smaller std.
    p_mup = setup.init(jax.random.key(0))
    p_sp = sp.init(jax.random.key(0))
    ratio = float(jnp.std(p_mup["unembed"]) / jnp.std(p_sp["unembed"]))
    assert ratio == pytest.approx(0.5, rel=1e-6)  # (32 / 8)^(-1/2)


def test_lm_coord_check_runs_with_kfac(tokens):
    # K-FAC captures the LM's dense layers (B x S rows each); the embedding is a look-up.
    config = WidthConfig(optimizer="kfac", param="mup", refresh=1, **TINY)
    r = coord_check(config, [8, 16], tokens, lr=2.0**-4, steps=2, seeds=1, progress=False)
    assert r["layers"] == ["embed", "block0.attn", "block0.mlp", "logits"]
    deltas = np.asarray([r["delta_h"][k] for k in r["layers"]])
    assert np.all(np.isfinite(deltas)) and np.all(deltas > 0)


def test_lm_needs_a_token_task():
    images = ClassificationTask(
        np.zeros((4, 3), np.float32),
        np.zeros(4, np.int32),
        np.zeros((2, 3), np.float32),
        np.zeros(2, np.int32),
        2,
        "floats",
    )
    with pytest.raises(ValueError, match="the lm model needs a token task"):
        build(WidthConfig(optimizer="adam", **TINY), 8, images)


def test_zero_readout_is_a_mup_init(x64):
    from metagrad.models import MLP
    from metagrad.optim import base_shapes, scale_init, set_base_shapes

    key = jax.random.key(0)
    params = MLP(sizes=(12, 32, 32, 3)).init(key, jnp.float64)
    base = jax.eval_shape(MLP(sizes=(12, 8, 8, 3)).init, key)
    shapes = base_shapes(params, base)
    plain = scale_init(params, shapes, "mup")
    zeroed, _ = set_base_shapes(params, base, param="mup", zero_readout=True)
    leaves = zip(
        shapes.leaves,
        jax.tree_util.tree_leaves(zeroed),
        jax.tree_util.tree_leaves(plain),
        strict=True,
    )
    for w, got, want in leaves:
        if w.role == "output":
            assert w.name == "2/w" and np.all(np.asarray(got) == 0)
        else:  # every other parameter keeps μP's (here: the standard) initialisation
            np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="zero_readout is a μP rule"):
        scale_init(params, shapes, "sp", zero_readout=True)


def test_zero_query_gives_uniform_causal_attention(x64):
    lm = DecoderLM(vocab_size=11, width=16, depth=2, heads=2, max_len=8)
    params = lm.init(jax.random.key(0), jnp.float64)
    params = jax.tree_util.tree_map(lambda a: a + 0.1, params)  # non-zero biases too
    zq = lm.zero_query(params)
    for blk, orig in zip(zq["blocks"], params["blocks"], strict=True):
        w, b = blk["attn"]["qkv"]["w"], blk["attn"]["qkv"]["b"]
        assert np.all(np.asarray(w[:, :16]) == 0) and np.all(np.asarray(b[:16]) == 0)
        np.testing.assert_array_equal(w[:, 16:], orig["attn"]["qkv"]["w"][:, 16:])  # k, v kept
        np.testing.assert_array_equal(b[16:], orig["attn"]["qkv"]["b"][16:])
    np.testing.assert_array_equal(
        params["blocks"][0]["attn"]["qkv"]["w"][:, 0],
        0.1 + lm.init(jax.random.key(0), jnp.float64)["blocks"][0]["attn"]["qkv"]["w"][:, 0],
    )  # the input is not modified
    # q = 0: every query attends uniformly to the positions up to its own.
    from metagrad.models.transformer import causal_self_attention

    attn = zq["blocks"][0]["attn"]
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 16)))
    out = causal_self_attention(attn, x, heads=2, logit_scale=0.3)
    v = x @ attn["qkv"]["w"][:, 32:] + attn["qkv"]["b"][32:]
    mean_v = jnp.cumsum(v, axis=1) / jnp.arange(1, 6)[None, :, None]
    np.testing.assert_allclose(out, mean_v @ attn["out"]["w"] + attn["out"]["b"], rtol=1e-12)

    # The query still gets a gradient (through the keys), which finite differences confirm.
    tok = jnp.asarray(np.random.default_rng(1).integers(0, 11, (3, 8)))

    def loss(q):
        p = {
            **zq,
            "blocks": [
                {
                    **zq["blocks"][0],
                    "attn": {
                        **attn,
                        "qkv": {**attn["qkv"], "w": attn["qkv"]["w"].at[:, :16].set(q)},
                    },
                },
                zq["blocks"][1],
            ],
        }
        return jnp.mean(lm.sequence_losses(p, tok))

    q0 = jnp.zeros((16, 16))
    g = jax.grad(loss)(q0)
    assert float(jnp.max(jnp.abs(g))) > 1e-6
    d = jnp.asarray(np.random.default_rng(2).normal(size=(16, 16)))
    eps = 1e-6
    fd = (loss(q0 + eps * d) - loss(q0 - eps * d)) / (2 * eps)
    np.testing.assert_allclose(jnp.sum(g * d), fd, rtol=1e-6)


def test_width_config_zero_inits_are_mup_only(tokens):
    mup = build(
        WidthConfig(optimizer="adam", param="mup", zero_readout=True, zero_query=True, **TINY),
        16,
        tokens,
    )
    p = mup.init(jax.random.key(0))
    assert np.all(np.asarray(p["unembed"]) == 0)
    assert np.all(np.asarray(p["blocks"][0]["attn"]["qkv"]["w"][:, :16]) == 0)
    assert np.all(np.asarray(mup.model.apply(p, tokens.x_train[:2])) == 0)  # zero logits
    # ... at the base width too, where no axis is wide (every role there is "finite").
    at_base = build(
        WidthConfig(optimizer="adam", param="mup", zero_readout=True, zero_query=True, **TINY),
        8,
        tokens,
    ).init(jax.random.key(0))
    assert np.all(np.asarray(at_base["unembed"]) == 0)
    assert np.all(np.asarray(at_base["blocks"][0]["attn"]["qkv"]["w"][:, :8]) == 0)
    # SP ignores both: its initialisation is the standard one.
    sp_cfg = {"optimizer": "adam", "param": "sp", **TINY}
    sp = build(WidthConfig(zero_readout=True, zero_query=True, **sp_cfg), 16, tokens)
    plain = build(WidthConfig(**sp_cfg), 16, tokens)
    for a, b in zip(
        jax.tree_util.tree_leaves(sp.init(jax.random.key(0))),
        jax.tree_util.tree_leaves(plain.init(jax.random.key(0))),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="zero_query needs the lm model"):
        WidthConfig(model="mlp", zero_query=True)
    # A coordinate check from the zero read-out runs for K-FAC too (finite, non-zero updates).
    config = WidthConfig(optimizer="kfac", param="mup", refresh=1, zero_readout=True, **TINY)
    r = coord_check(config, [8, 16], tokens, lr=2.0**-4, steps=2, seeds=1, progress=False)
    deltas = np.asarray([r["delta_h"][k] for k in r["layers"]])
    assert np.all(np.isfinite(deltas)) and np.all(deltas[:, :, -1] > 0)
    # The logits start at zero, so their change from init is their size (mean |h_t|).
    np.testing.assert_allclose(r["value"]["logits"], r["delta_h"]["logits"], rtol=1e-6)
    assert set(r["slopes_value"]) == set(r["slopes"]) and r["probe_size"] == 32  # all 32 examples


def test_cli_zero_init_and_probe_flags():
    from metagrad.cli import build_parser
    from metagrad.cli.width import _configs

    args = build_parser().parse_args(
        ["width", "coord-check", "--model", "lm", "--zero-readout", "--zero-query"]
        + ["--probe-size", "8", "--param", "mup,sp", "--optimizer", "adam"]
    )
    assert args.probe_size == 8
    configs = _configs(args, ["adam"], ["mup", "sp"], ["trace"])
    assert [(c.param, c.zero_readout, c.zero_query) for c in configs] == [
        ("mup", True, True),
        ("sp", True, True),  # kept in the config; build() applies them to μP only
    ]
    plain = build_parser().parse_args(["width", "sweep", "--model", "lm"])
    assert not plain.zero_readout and not plain.zero_query
