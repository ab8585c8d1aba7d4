"""Naive Bayes families (Gaussian, categorical over bins) as lookup-and-sum pipelines."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from sklearn.naive_bayes import CategoricalNB, GaussianNB

from homunculus.ir.quantised import QuantisedModel
from homunculus.models.base import TrainedModel, register, two_bin_lookup
from homunculus.models.binning import fit_binnings
from homunculus.models.lookup import BinnedClassifier, build_lookup_sum

# Log-likelihoods more than this many nats below a table's best are clipped (see build_lookup_sum).
LOG_CLIP = 30.0


def _class_columns(values: np.ndarray, classes: np.ndarray, n_classes: int,
                   fill: float) -> np.ndarray:
    out = np.full((values.shape[0], n_classes), fill, dtype=np.float64)
    out[:, np.asarray(classes, dtype=np.int64)] = values
    return out


class GaussianNBFamily:
    name = "gnb"
    description = "Gaussian naive Bayes (per-feature binned log-likelihood tables, summed)"

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {
            "gnb_bins": trial.suggest_int("gnb_bins", 2, 256, log=True),
            "gnb_var_smoothing": trial.suggest_float("gnb_var_smoothing", 1e-12, 1e-2, log=True),
            "gnb_score_bits": trial.suggest_int("gnb_score_bits", 6, 16),
        }

    def default_params(self) -> dict[str, Any]:
        return {"gnb_bins": 64, "gnb_var_smoothing": 1e-9, "gnb_score_bits": 12}

    def smallest_model(self, widths: tuple[int, ...], n_classes: int) -> QuantisedModel:
        """The smallest pipeline this family can produce (for candidate selection)."""
        return two_bin_lookup(widths, n_classes)

    def minimal_params(self) -> dict[str, Any]:
        return {"gnb_bins": 2, "gnb_var_smoothing": 1e-9, "gnb_score_bits": 6}

    def train(self, params: dict[str, Any], x: np.ndarray, y: np.ndarray, n_classes: int,
              widths: tuple[int, ...], seed: int) -> TrainedModel:
        model = GaussianNB(var_smoothing=params["gnb_var_smoothing"]).fit(x.astype(np.float64), y)
        binnings = fit_binnings(x, widths, params["gnb_bins"])
        contributions = []
        for j, b in enumerate(binnings):
            mu, var = model.theta_[:, j], model.var_[:, j]
            rep = b.representatives[:, None]
            ll = -0.5 * np.log(2 * np.pi * var)[None, :] - (rep - mu[None, :]) ** 2 / (2 * var)
            contributions.append(_class_columns(ll, model.classes_, n_classes, ll.min()))
        prior = _class_columns(np.log(model.class_prior_)[None, :], model.classes_, n_classes,
                               -LOG_CLIP)[0]
        q = build_lookup_sum(binnings, contributions, prior, params["gnb_score_bits"], LOG_CLIP)
        return TrainedModel(self.name, params, model, q)


class CategoricalNBFamily:
    name = "cnb"
    description = "categorical naive Bayes over per-feature bins (log-probability tables, summed)"

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {
            "cnb_bins": trial.suggest_int("cnb_bins", 2, 256, log=True),
            "cnb_alpha": trial.suggest_float("cnb_alpha", 0.01, 10.0, log=True),
            "cnb_score_bits": trial.suggest_int("cnb_score_bits", 6, 16),
        }

    def default_params(self) -> dict[str, Any]:
        return {"cnb_bins": 64, "cnb_alpha": 1.0, "cnb_score_bits": 12}

    def smallest_model(self, widths: tuple[int, ...], n_classes: int) -> QuantisedModel:
        """The smallest pipeline this family can produce (for candidate selection)."""
        return two_bin_lookup(widths, n_classes)

    def minimal_params(self) -> dict[str, Any]:
        return {"cnb_bins": 2, "cnb_alpha": 1.0, "cnb_score_bits": 6}

    def train(self, params: dict[str, Any], x: np.ndarray, y: np.ndarray, n_classes: int,
              widths: tuple[int, ...], seed: int) -> TrainedModel:
        binnings = fit_binnings(x, widths, params["cnb_bins"])
        wrapped = BinnedClassifier(binnings, None)
        codes = wrapped.transform(x)
        nb = CategoricalNB(alpha=params["cnb_alpha"],
                           min_categories=np.array([b.n_bins for b in binnings])).fit(codes, y)
        wrapped.model = nb
        contributions = [
            _class_columns(nb.feature_log_prob_[j].T, nb.classes_, n_classes,
                           float(nb.feature_log_prob_[j].min()))
            for j in range(len(binnings))
        ]
        prior = _class_columns(nb.class_log_prior_[None, :], nb.classes_, n_classes,
                               -LOG_CLIP)[0]
        q = build_lookup_sum(binnings, contributions, prior, params["cnb_score_bits"], LOG_CLIP)
        return TrainedModel(self.name, params, wrapped, q)


register(GaussianNBFamily())
register(CategoricalNBFamily())
