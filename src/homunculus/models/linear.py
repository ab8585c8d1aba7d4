"""Linear SVM as a lookup-and-sum pipeline: per-feature tables of binned w * x contributions."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from homunculus.ir.quantised import QuantisedModel
from homunculus.models.base import TrainedModel, register, two_bin_lookup
from homunculus.models.binning import fit_binnings
from homunculus.models.lookup import build_lookup_sum, representatives_scaled


class LinearSVMFamily:
    name = "svm"
    description = "linear SVM, one-vs-rest (per-feature binned w*x tables, summed)"

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {
            "svm_c": trial.suggest_float("svm_c", 1e-3, 10.0, log=True),
            "svm_bins": trial.suggest_int("svm_bins", 2, 256, log=True),
            "svm_score_bits": trial.suggest_int("svm_score_bits", 6, 16),
        }

    def default_params(self) -> dict[str, Any]:
        return {"svm_c": 1.0, "svm_bins": 64, "svm_score_bits": 12}

    def smallest_model(self, widths: tuple[int, ...], n_classes: int) -> QuantisedModel:
        """The smallest pipeline this family can produce (for candidate selection)."""
        return two_bin_lookup(widths, n_classes)

    def minimal_params(self) -> dict[str, Any]:
        return {"svm_c": 1.0, "svm_bins": 2, "svm_score_bits": 6}

    def train(self, params: dict[str, Any], x: np.ndarray, y: np.ndarray, n_classes: int,
              widths: tuple[int, ...], seed: int) -> TrainedModel:
        model = make_pipeline(StandardScaler(), LinearSVC(C=params["svm_c"], max_iter=5000,
                                                          random_state=seed))
        model.fit(x.astype(np.float64), y)
        scaler, svc = model[0], model[1]
        classes = np.asarray(svc.classes_, dtype=np.int64)
        coef, intercept = np.atleast_2d(svc.coef_), np.atleast_1d(svc.intercept_)
        binnings = fit_binnings(x, widths, params["svm_bins"])
        reps = representatives_scaled(binnings, scaler.mean_, scaler.scale_)
        if len(classes) == 2:
            # One decision function: the second class wins iff w.x + b > 0.
            contributions = [np.stack([np.zeros_like(r), coef[0, j] * r], axis=1)
                             for j, r in enumerate(reps)]
            bias = np.array([0.0, intercept[0]])
            score_classes = classes
        else:
            contributions = [r[:, None] * coef[None, :, j] for j, r in enumerate(reps)]
            bias, score_classes = intercept, classes
        contributions = [_expand(c, score_classes, n_classes) for c in contributions]
        bias = _expand(bias[None, :], score_classes, n_classes)[0]
        q = build_lookup_sum(binnings, contributions, bias, params["svm_score_bits"])
        return TrainedModel(self.name, params, model, q)


def _expand(values: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Scores for classes the estimator never saw sit far below every other score."""
    low = float(values.min()) - 1.0 - float(np.ptp(values))
    out = np.full((values.shape[0], n_classes), low)
    out[:, classes] = values
    return out


register(LinearSVMFamily())
