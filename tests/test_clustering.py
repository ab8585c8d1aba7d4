"""The k-means family: min-max scaled features, and the restart whose cluster -> class map
classifies the training rows best."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.datasets import load_iris

from homunculus.models.clustering import RESTARTS, best_restart, majority_map


def iris_uint8() -> tuple[np.ndarray, np.ndarray]:
    data = load_iris()
    lo, hi = data.data.min(axis=0), data.data.max(axis=0)
    return np.round(255 * (data.data - lo) / (hi - lo)).astype(np.int64), data.target


def training_accuracy(km: KMeans, mapping: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(mapping[km.labels_] == y))


def test_majority_map_gives_empty_clusters_the_overall_majority() -> None:
    y = np.array([0, 1, 1, 2, 1])
    assert majority_map(np.array([0, 0, 2, 2, 2]), y, 4, 3).tolist() == [0, 1, 1, 1]


def test_the_kept_restart_is_the_most_accurate_of_the_seeded_runs() -> None:
    x, y = iris_uint8()
    z = x / 255.0
    km, mapping = best_restart(z, y, 8, 3, seed=0)
    runs = [KMeans(n_clusters=8, n_init=1, random_state=0 + 7919 * r).fit(z)
            for r in range(RESTARTS)]
    accuracies = [training_accuracy(r, majority_map(r.labels_, y, 8, 3), y) for r in runs]
    assert training_accuracy(km, mapping, y) == max(accuracies)
    assert len(set(accuracies)) > 1  # the runs differ here, so the choice is not trivial
