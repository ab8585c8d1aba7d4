"""The family protocol and the registry of families."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import optuna

from homunculus.ir.quantised import QuantisedModel
from homunculus.models.categorical import CategoryTable


@dataclass(frozen=True)
class TrainedModel:
    """A trained float model and its quantised integer twin, with the outputs->class map."""

    family: str
    params: dict[str, Any]
    float_model: Any
    quantised: QuantisedModel
    # index of the quantised arg-max -> class index; None = identity (k-means maps clusters)
    winner_to_class: tuple[int, ...] | None = None
    # the hybrid's exact-match table over a categorical feature: its hits take its class
    shortcut: CategoryTable | None = None

    def predict_float(self, x: np.ndarray) -> np.ndarray:
        pred = np.asarray(self.float_model.predict(np.asarray(x, dtype=np.float64)),
                          dtype=np.int64)
        return pred if self.shortcut is None else self.shortcut.apply(x, pred)

    def predict_quantised(self, x: np.ndarray) -> np.ndarray:
        from homunculus.ir.quantised import predict_index

        winners = predict_index(self.quantised, x)
        pred = winners if self.winner_to_class is None else np.asarray(
            self.winner_to_class, dtype=np.int64)[winners]
        return pred if self.shortcut is None else self.shortcut.apply(x, pred)


class Family(Protocol):
    """What every model family provides to the search."""

    name: str
    description: str

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample this family's hyperparameters (names prefixed with the family name)."""

    def default_params(self) -> dict[str, Any]:
        """The hand-tuned default configuration (the benchmark's baseline)."""

    def minimal_params(self) -> dict[str, Any]:
        """A small, fast configuration (for tests)."""

    def smallest_model(self, widths: tuple[int, ...], n_classes: int) -> QuantisedModel:
        """The smallest pipeline the family can produce, built without training."""

    def train(self, params: dict[str, Any], x: np.ndarray, y: np.ndarray, n_classes: int,
              widths: tuple[int, ...], seed: int) -> TrainedModel:
        """Train the float model on integer features and quantise it."""


FAMILIES: dict[str, Family] = {}

# Why a family that needs dense arithmetic (``requires_dense = True``) cannot run on a target
# without it (match-action switches).
DENSE_REASON = ("its multiply-accumulate layers do not map to match-action tables; use the XDP "
                "or C targets")


def default_configurations(family: Family, n_features: int, max_entries: int | None = None
                           ) -> list[dict[str, Any]]:
    """The family's hand-tuned default first, then the further defaults it proposes for data
    with ``n_features`` features on a target limited to ``max_entries`` table entries (an
    optional ``data_defaults(n_features, max_entries)`` method): the configurations a search
    tries before sampling."""
    more = getattr(family, "data_defaults", None)
    return [family.default_params(),
            *(more(n_features, max_entries) if more is not None else [])]


def sqrt_feature_share(n_features: int, low: float, high: float) -> float:
    """scikit-learn's ``max_features="sqrt"`` as a share of ``n_features`` (``floor(sqrt(n))``
    of them), within the search space's ``[low, high]``. Rounded up to 4 decimals: scikit-learn
    draws ``int(share * n)`` features, and 2/7 rounded to 0.2857 would draw one."""
    share = max(1, int(n_features ** 0.5)) / max(n_features, 1)
    return min(max(math.ceil(share * 10_000 - 1e-9) / 10_000, low), high)


def requires_dense(family: Family) -> bool:
    return bool(getattr(family, "requires_dense", False))


def register(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    from homunculus.models import bayes, clustering, linear, mlp, trees  # noqa: F401  (registry)

    return FAMILIES[name]


def all_families() -> dict[str, Family]:
    get_family("dt")
    return dict(FAMILIES)


def stump_ensemble(n_trees: int, n_classes: int, width: int) -> QuantisedModel:
    """The smallest tree model: ``n_trees`` one-split stumps voting for different classes."""
    from homunculus.ir.quantised import QTree, QTreeEnsemble

    trees = []
    for i in range(n_trees):
        lo, hi = [0] * n_classes, [0] * n_classes
        lo[i % n_classes], hi[(i + 1) % n_classes] = 1, 1
        trees.append(QTree((0, -2, -2), ((1 << width) // 2 - 1, 0, 0), (1, -1, -1), (2, -1, -1),
                           ((0,) * n_classes, tuple(lo), tuple(hi))))
    return QTreeEnsemble(trees=tuple(trees), bias=(0,) * n_classes)


def two_bin_lookup(widths: tuple[int, ...], n_scores: int) -> QuantisedModel:
    """The smallest lookup-and-sum model over all features: two bins each, every score varying."""
    from homunculus.ir.quantised import FeatureBins, QLookupSum

    bins = tuple(
        FeatureBins(j, ((1 << w) // 2 - 1, (1 << w) - 1),
                    (tuple(range(n_scores)), tuple(reversed(range(n_scores)))))
        for j, w in enumerate(widths)
    )
    return QLookupSum(bins=bins, bias=(0,) * n_scores)
