"""ROC AUC from ranks, and corruption of training sequences."""

import numpy as np
import pytest

from metagrad.meta.auc import roc_auc
from metagrad.meta.corruption import corrupt


def _pairwise_auc(scores, labels):
    pos, neg = scores[labels], scores[~labels]
    diff = pos[:, None] - neg[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_the_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(200) < 0.3
    scores = np.round(rng.normal(size=200) + labels, 1)  # rounding creates ties
    assert roc_auc(scores, labels) == pytest.approx(_pairwise_auc(scores, labels), abs=1e-12)


def test_auc_extremes_and_errors():
    labels = np.array([True, True, False, False])
    assert roc_auc(np.array([0.9, 0.8, 0.1, 0.2]), labels) == 1.0
    assert roc_auc(np.array([0.1, 0.2, 0.9, 0.8]), labels) == 0.0
    assert roc_auc(np.ones(4), labels) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.ones(3), np.ones(3, bool))
    with pytest.raises(ValueError, match="same length"):
        roc_auc(np.ones(3), labels)


def test_corruption_kinds():
    rng = np.random.default_rng(0)
    tokens = rng.integers(97, 123, (50, 32), dtype=np.uint8)
    for kind in ("shuffle", "random", "domain"):
        out, mask = corrupt(tokens, 0.3, kind, seed=1, domain_text=b"Some English prose. " * 10)
        assert mask.sum() == 15 and out.dtype == np.uint8 and out.shape == tokens.shape
        np.testing.assert_array_equal(out[~mask], tokens[~mask])
        assert np.mean(np.any(out[mask] != tokens[mask], axis=1)) > 0.9
        if kind == "shuffle":  # same bytes, another order
            np.testing.assert_array_equal(np.sort(out[mask], 1), np.sort(tokens[mask], 1))
    again, mask2 = corrupt(tokens, 0.3, "shuffle", seed=1)
    np.testing.assert_array_equal(again, corrupt(tokens, 0.3, "shuffle", seed=1)[0])
    with pytest.raises(ValueError, match="corruption must be one of"):
        corrupt(tokens, 0.3, "noise", seed=0)
    with pytest.raises(ValueError, match="domain_text"):
        corrupt(tokens, 0.3, "domain", seed=0)
