"""k-means as a lookup-and-sum pipeline: per-feature tables of negative squared distances.

The arg-max picks the nearest centroid; a cluster -> class map (majority class of the training
points in that cluster) turns the winner into a class in the verdict table.

Features are min-max scaled with the training data's range, so that a 16-bit port and an 8-bit
TTL weigh alike. Of three seeded k-means runs, the one whose cluster -> class map classifies the
training rows best is kept (inertia breaks ties): the clustering serves a classifier, and the
restarts cost what n_init=3 did. Both choices were measured against standardised features and
the lowest inertia (docs/benchmarks.md, `bench/small_tabular.py`).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import optuna
from sklearn.cluster import KMeans
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler
from threadpoolctl import ThreadpoolController

from homunculus.ir.quantised import QuantisedModel
from homunculus.models.base import TrainedModel, register, two_bin_lookup
from homunculus.models.binning import fit_binnings
from homunculus.models.lookup import MappedClassifier, build_lookup_sum, representatives_scaled

RESTARTS = 3


def majority_map(clusters: np.ndarray, y: np.ndarray, k: int, n_classes: int) -> np.ndarray:
    """Each cluster's majority training class (an empty cluster gets the overall majority)."""
    overall = int(np.bincount(y, minlength=n_classes).argmax())
    return np.array([int(np.bincount(y[clusters == c], minlength=n_classes).argmax())
                     if np.any(clusters == c) else overall for c in range(k)], dtype=np.int64)


def best_restart(z: np.ndarray, y: np.ndarray, k: int, n_classes: int, seed: int,
                 restarts: int = RESTARTS) -> tuple[KMeans, np.ndarray]:
    """Of ``restarts`` seeded k-means runs on ``z``, the one whose cluster -> class map is the
    most accurate on the training rows (then the lowest inertia), with that map."""
    best: tuple[tuple[float, float], KMeans, np.ndarray] | None = None
    for r in range(restarts):
        with thread_pools().limit(limits=1):
            km = KMeans(n_clusters=k, n_init=1, random_state=seed + 7919 * r).fit(z)
        mapping = majority_map(km.labels_, y, k, n_classes)
        key = (float(np.mean(mapping[km.labels_] == y)), -float(km.inertia_))
        if best is None or key > best[0]:
            best = (key, km, mapping)
    assert best is not None
    return best[1], best[2]


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
        k = max(distinct_rows(x, params["kmeans_clusters"]), 1)
        scaler = MinMaxScaler().fit(x.astype(np.float64))
        km, mapping = best_restart(scaler.transform(x.astype(np.float64)), y, k, n_classes,
                                   seed)
        model = make_pipeline(scaler, km)
        # (x - data_min) / range, as the representatives' (r - mean) / scale
        offset, spread = scaler.data_min_, 1.0 / scaler.scale_
        binnings = fit_binnings(x, widths, params["kmeans_bins"])
        reps = representatives_scaled(binnings, offset, spread)
        contributions = [-(r[:, None] - km.cluster_centers_[None, :, j]) ** 2
                         for j, r in enumerate(reps)]
        q = build_lookup_sum(binnings, contributions, np.zeros(km.n_clusters),
                             params["kmeans_score_bits"])
        return TrainedModel(self.name, params, MappedClassifier(model, mapping), q,
                            winner_to_class=tuple(int(v) for v in mapping))


def distinct_rows(x: np.ndarray, cap: int) -> int:
    """``min(cap, number of distinct rows of x)``, from the shortest prefix of ``x`` (growing
    4x at a time) that shows ``cap`` of them: all rows' ``np.unique`` costs ~2 ms a fit."""
    n = 4 * max(cap, 1)
    while True:
        seen = len(np.unique(x[:n], axis=0))
        if seen >= cap or n >= len(x):
            return min(seen, cap)
        n *= 4


@cache
def thread_pools() -> ThreadpoolController:
    """The native thread pools (OpenMP, BLAS), found once (looking them up costs ~2 ms a call).
    k-means fits run on one thread of each: on a trial's few thousand rows the threads'
    synchronisation costs ~10x the CPU time of the fit on a 2-core machine (bench/cv_cost.py),
    and one thread gives the same centroids on every machine, whatever its core count."""
    return ThreadpoolController()


register(KMeansFamily())
