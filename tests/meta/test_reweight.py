"""Learned data weighting: corrupted examples lose weight; resume after a kill is exact."""

import json

import numpy as np
import pytest

from metagrad.data import TextConfig, load_stdlib_text
from metagrad.meta.corruption import corrupt
from metagrad.meta.lm_task import eval_indices
from metagrad.meta.reweight import ReweightConfig, ReweightData, run_reweight

TINY = dict(width=16, depth=1, heads=2, seq=16, batch=8, outer_batch=16, steps=2,
            train_sequences=48, eval_sequences=16)  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return load_stdlib_text(
        TextConfig(seq_len=16), cache_dir=tmp_path_factory.mktemp("cache"), progress=False
    )


def _data(corpus, config):
    rng = np.random.default_rng(0)
    pool = rng.choice(len(corpus.train), config.train_sequences, replace=False)
    train, corrupted = corrupt(corpus.train.tokens[pool], config.fraction, config.corruption, 0)
    val = corpus.val.tokens
    return ReweightData(train, corrupted, val, val[eval_indices(0, 16, len(val))],
                        corpus.test.tokens[:16], "stdlib")  # fmt: skip


def _metrics(path):
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    for line in lines:
        line.pop("time_s", None)
    return lines


@pytest.mark.parametrize("weights", ["per-example", "scorer"])
def test_weights_of_corrupted_examples_decrease(corpus, tmp_path, weights):
    config = ReweightConfig(**TINY, corruption="random", weights=weights, meta_steps=6,
                            meta_lr=0.3 if weights == "per-example" else 0.03, lr=1e-2,
                            eval_every=0, checkpoint_every=0)  # fmt: skip
    data = _data(corpus, config)
    result = run_reweight(config, tmp_path, data=data, show_progress=False)
    w, bad = result["weights"], result["corrupted"]
    # Uniform random bytes are obviously corrupted: their weights fall below the start (0.5)
    # and below the clean sequences' weights.
    assert np.mean(w[bad]) < 0.45 < np.mean(w[~bad])
    assert result["auc"] > 0.8


def test_resume_after_kill_gives_the_same_metrics(corpus, tmp_path):
    config = ReweightConfig(**TINY, meta_steps=5, eval_every=2, checkpoint_every=2)
    data = _data(corpus, config)
    full = run_reweight(config, tmp_path / "a", data=data, show_progress=False)
    # Killed after step 3: the checkpoint is at step 2, step 3's lines are orphaned.
    killed = run_reweight(config, tmp_path / "b", data=data, show_progress=False, stop_after=3)
    assert killed["killed"]
    resumed = run_reweight(config, tmp_path / "b", data=data, show_progress=False)
    a, b = _metrics(tmp_path / "a" / "metrics.jsonl"), _metrics(tmp_path / "b" / "metrics.jsonl")
    assert [m["step"] for m in a if m["arm"] == "learned"] == [0, 1, 2, 2, 3, 4, 4, 5, 5]
    assert a == b
    np.testing.assert_array_equal(full["weights"], resumed["weights"])
    # Another configuration does not silently continue this run.
    other = ReweightConfig(**{**config.__dict__, "lr": 1e-2})
    with pytest.raises(ValueError, match="another configuration; it differs in lr"):
        run_reweight(other, tmp_path / "b", data=data, show_progress=False)
