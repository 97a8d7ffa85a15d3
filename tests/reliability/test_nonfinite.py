"""Class 1 of the fault issue: non-finite values are detected, never applied, never saved."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metagrad
from metagrad import checkpoints
from metagrad.fewshot import training
from metagrad.files import dumps, json_ready
from metagrad.nonfinite import NonFiniteError, nonfinite_leaves, raise_if_nonfinite

from .common import CONFIG, metrics, splits, strict_json_lines


def _problem():
    def per_example(p, batch):
        x, y = batch
        return (x @ p - y) ** 2

    return metagrad.Bilevel(
        inner_loss=lambda p, m, b: jnp.mean(jax.nn.sigmoid(m["w"]) * per_example(p, b)),
        outer_loss=lambda p, m, b: jnp.mean(per_example(p, b)) + 0.0 * m["bias"],
        inner_optimizer=optax.sgd(0.1),
        steps=2,
    )


def test_a_nan_in_one_example_is_not_applied_and_its_leaves_are_named():
    x = jnp.arange(12.0).reshape(4, 3) / 10
    y = jnp.array([1.0, 0.0, -1.0, 0.5])
    bad = x.at[2, 1].set(jnp.nan)
    meta = {"w": jnp.zeros(4), "bias": jnp.zeros(())}
    opt = optax.adam(0.1)
    step = metagrad.meta_train_step(_problem(), opt, return_grad=True)
    state = opt.init(meta)
    kwargs = dict(params=jnp.zeros(3), outer_batch=(x, y))
    new, new_state, value, grad = step(meta, state, inner_batch=(bad, y), **kwargs)
    assert not np.isfinite(value)
    # Not applied: the meta-parameters and Adam's moments and count are unchanged.
    for a, b in zip(jax.tree.leaves((new, new_state)), jax.tree.leaves((meta, state)), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(NonFiniteError, match=r"step 7: non-finite outer value; meta-gradient in "
                       r"\['w'\]\. The step was not applied.*lower the learning rates"):  # fmt: skip
        raise_if_nonfinite(7, {"outer value": value}, meta_grad=grad)
    # (``bias`` only enters the outer loss through 0 · bias: its meta-gradient is finite, 0.)
    # A finite step is applied.
    moved, *_ = step(meta, state, inner_batch=(x, y), **kwargs)
    assert not np.array_equal(moved["w"], meta["w"])
    # Without the guard one NaN spreads to every meta-parameter: the reason it is the default.
    unguarded = metagrad.meta_train_step(_problem(), opt, skip_nonfinite=False)
    spread, *_ = unguarded(meta, state, inner_batch=(bad, y), **kwargs)
    assert np.isnan(spread["w"]).all()


def test_nonfinite_leaves_and_strict_json():
    tree = {"a": np.ones(2), "b": [np.array([1.0, np.inf]), np.arange(3)]}
    assert nonfinite_leaves(tree) == ["['b'][0]"]
    assert json_ready({"x": float("nan"), "y": -np.inf, "z": np.float32(2)}) == {
        "x": None, "y": "-inf", "z": 2.0,
    }  # fmt: skip
    assert dumps([np.nan]) == "[null]"


def _nan_from(step_with_nan):
    """``episodes_at`` whose support images are NaN from meta-step ``step_with_nan`` (1-based)."""
    real = training.episodes_at

    def episodes_at(*args):
        episodes = real(*args)
        if args[-1] + 1 >= step_with_nan:
            x = np.asarray(episodes.support_x, np.float32).copy()
            x[0, 0, 0, 0, 0] = np.nan
            episodes = episodes._replace(support_x=x)
        return episodes

    return episodes_at


def test_a_nan_batch_stops_fewshot_training_and_keeps_the_last_finite_checkpoint(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(training, "episodes_at", _nan_from(4))
    data = splits()
    with pytest.raises(NonFiniteError, match="step 4: non-finite outer \\(query\\) loss"):
        training.train(CONFIG, tmp_path, splits=data, show_progress=False)
    # The checkpoint on disk is step 2's, finite; steps 1-3 are logged, as strict JSON.
    assert checkpoints.checkpoint_steps(tmp_path / "checkpoints") == [2]
    meta = training.load_run_state(tmp_path, CONFIG, training.make_model(CONFIG, data))
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(meta.state))
    assert max(m["step"] for m in strict_json_lines(tmp_path / "metrics.jsonl")) == 3


def test_skip_goes_on_without_applying_the_nonfinite_steps(tmp_path, monkeypatch):
    data = splits()
    three = training.train(
        training.TrainConfig(**{**CONFIG.__dict__, "iterations": 3}), tmp_path / "a",
        splits=data, show_progress=False,
    )  # fmt: skip
    monkeypatch.setattr(training, "episodes_at", _nan_from(4))
    result = training.train(
        CONFIG, tmp_path / "b", splits=data, show_progress=False, on_nonfinite="skip"
    )
    assert result["skipped"] == 3
    # Steps 4-6 were not applied: the meta-parameters are those after step 3.
    for a, b in zip(jax.tree.leaves(result["meta"]), jax.tree.leaves(three["meta"]), strict=True):
        np.testing.assert_array_equal(a, b)
    lines = metrics(tmp_path / "b" / "metrics.jsonl")
    assert [m["step"] for m in lines if m["kind"] == "skipped"] == [4, 5, 6]
    assert "outer (query) loss" in lines[-1]["reason"] or "meta-gradient" in lines[-1]["reason"]


def test_a_diverging_inner_learning_rate_stops_at_once(tmp_path):
    config = training.TrainConfig(**{**CONFIG.__dict__, "inner_lr": 1e20})
    with pytest.raises(NonFiniteError, match="step 1: non-finite"):
        training.train(config, tmp_path, splits=splits(), show_progress=False)
    assert checkpoints.checkpoint_steps(tmp_path / "checkpoints") == []
