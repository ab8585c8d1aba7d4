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
    if metric == "accuracy":
        return float(accuracy_score(y_true, y_pred))
    if metric == "f1_macro":
        return float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
    fn = {"f1_binary": f1_score, "recall": recall_score, "precision": precision_score}[metric]
    if positive is None:
        return float(fn(y_true, y_pred, labels=labels, average="macro", zero_division=0))
    return float(fn(np.asarray(y_true) == positive, np.asarray(y_pred) == positive,
                    zero_division=0))
