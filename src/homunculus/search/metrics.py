"""The metrics a spec may optimise."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

METRICS = ("f1_macro", "f1_binary", "accuracy", "recall", "precision")
NEEDS_POSITIVE = {"f1_binary"}


def score(metric: str, y_true: np.ndarray, y_pred: np.ndarray, n_classes: int,
          positive: int | None) -> float:
    """``metric`` of the predictions; recall/precision are binary for ``positive``, else macro."""
    labels = list(range(n_classes))
    if metric in FAST and class_indices(y_true, y_pred, n_classes):
        return FAST[metric](np.asarray(y_true), np.asarray(y_pred), n_classes)
    if metric == "accuracy":
        return float(accuracy_score(y_true, y_pred))
    if metric == "f1_macro":
        return float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
    fn = {"f1_binary": f1_score, "recall": recall_score, "precision": precision_score}[metric]
    if positive is None:
        return float(fn(y_true, y_pred, labels=labels, average="macro", zero_division=0))
    return float(fn(np.asarray(y_true) == positive, np.asarray(y_pred) == positive,
                    zero_division=0))


def class_indices(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> bool:
    """Whether both label vectors are equally long, non-empty and hold class indices
    0..n_classes-1 only (what the fast metrics need; anything else goes to scikit-learn)."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    return (t.ndim == p.ndim == 1 and len(t) == len(p) > 0 and t.dtype.kind in "iu"
            and p.dtype.kind in "iu" and min(t.min(), p.min()) >= 0
            and max(t.max(), p.max()) < n_classes)


def fast_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """``accuracy_score`` without scikit-learn's input checks (~1 ms a call), same float."""
    return float(np.mean(y_true == y_pred))


def fast_f1_macro(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Macro F1 over classes 0..n_classes-1 (0 for a class neither true nor predicted), the
    arithmetic of scikit-learn's ``f1_score(..., average="macro", zero_division=0)`` step by
    step, so the same float, without its input checks (~5 ms a call; a trial scores every
    fold)."""
    true_sum = np.bincount(y_true, minlength=n_classes).astype(np.float64)
    pred_sum = np.bincount(y_pred, minlength=n_classes).astype(np.float64)
    tp = np.bincount(y_true[y_true == y_pred], minlength=n_classes).astype(np.float64)
    denom = true_sum + pred_sum
    empty = denom == 0
    f = 2 * tp / np.where(empty, 1.0, denom)
    f[empty] = 0.0
    return float(np.nanmean(f))


FAST = {"accuracy": fast_accuracy, "f1_macro": fast_f1_macro}
"""Metrics computed without scikit-learn when the labels are class indices (tests check every
one against scikit-learn bit for bit)."""
