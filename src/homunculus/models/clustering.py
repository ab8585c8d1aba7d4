"""k-means as a lookup-and-sum pipeline: per-feature tables of negative squared distances.

The arg-max picks the nearest centroid; a cluster -> class map (majority class of the training
points in that cluster) turns the winner into a class in the verdict table.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from sklearn.cluster import KMeans
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from homunculus.ir.quantised import QuantisedModel
from homunculus.models.base import TrainedModel, register, two_bin_lookup
from homunculus.models.binning import fit_binnings
from homunculus.models.lookup import MappedClassifier, build_lookup_sum, representatives_scaled


class KMeansFamily:
    name = "kmeans"
    description = "k-means with a cluster->class map (per-feature distance tables, summed)"

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {
            "kmeans_clusters": trial.suggest_int("kmeans_clusters", 2, 16),
            "kmeans_bins": trial.suggest_int("kmeans_bins", 2, 256, log=True),
            "kmeans_score_bits": trial.suggest_int("kmeans_score_bits", 6, 16),
        }

    def default_params(self) -> dict[str, Any]:
        return {"kmeans_clusters": 8, "kmeans_bins": 64, "kmeans_score_bits": 12}

    def smallest_model(self, widths: tuple[int, ...], n_classes: int) -> QuantisedModel:
        """The smallest pipeline this family can produce (for candidate selection)."""
        return two_bin_lookup(widths, 2)

    def minimal_params(self) -> dict[str, Any]:
        return {"kmeans_clusters": 2, "kmeans_bins": 2, "kmeans_score_bits": 6}

    def train(self, params: dict[str, Any], x: np.ndarray, y: np.ndarray, n_classes: int,
              widths: tuple[int, ...], seed: int) -> TrainedModel:
        k = min(params["kmeans_clusters"], len(np.unique(x, axis=0)))
        model = make_pipeline(StandardScaler(), KMeans(n_clusters=max(k, 1), n_init=3,
                                                       random_state=seed))
        clusters = model.fit_predict(x.astype(np.float64))
        scaler, km = model[0], model[1]
        mapping = np.zeros(km.n_clusters, dtype=np.int64)
        overall = int(np.bincount(y, minlength=n_classes).argmax())
        for c in range(km.n_clusters):
            members = y[clusters == c]
            mapping[c] = int(np.bincount(members, minlength=n_classes).argmax()) if len(
                members) else overall
        binnings = fit_binnings(x, widths, params["kmeans_bins"])
        reps = representatives_scaled(binnings, scaler.mean_, scaler.scale_)
        contributions = [-(r[:, None] - km.cluster_centers_[None, :, j]) ** 2
                         for j, r in enumerate(reps)]
        q = build_lookup_sum(binnings, contributions, np.zeros(km.n_clusters),
                             params["kmeans_score_bits"])
        return TrainedModel(self.name, params, MappedClassifier(model, mapping), q,
                            winner_to_class=tuple(int(v) for v in mapping))


register(KMeansFamily())
