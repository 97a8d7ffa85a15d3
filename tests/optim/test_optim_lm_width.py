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
