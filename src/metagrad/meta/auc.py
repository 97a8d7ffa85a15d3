"""ROC AUC from ranks (no scikit-learn needed)."""

from __future__ import annotations

import numpy as np


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative (ties count one half).

    Computed with the Mann–Whitney U statistic from average ranks, which handles ties exactly:
    ``AUC = (sum of positive ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``.

    Args:
      scores: ``(n,)`` real scores; higher means "more likely positive".
      labels: ``(n,)`` booleans (or 0/1), True for positives.

    Returns:
      The AUC in [0, 1].

    References:
      Hanley & McNeil. *The meaning and use of the area under a ROC curve*. Radiology 143, 1982.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError(
            f"roc_auc: scores and labels need the same length; got {scores.shape} and "
            f"{labels.shape}."
        )
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"roc_auc: needs both classes; got {n_pos} positives and {n_neg} negatives."
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("roc_auc: scores must be finite.")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, np.float64)
    # Average rank (1-based) over each run of tied scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [scores.size]])
    average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
    ranks[order] = np.repeat(average, ends - starts)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))
