"""Quantised models: the integer semantics every generated pipeline must reproduce bit for bit.

Two model shapes cover the families of the compiler core:
- `QTreeEnsemble`: trees with integer thresholds (``x <= t`` goes left) whose leaves hold integer
  score vectors; scores of all trees are summed with a bias and the class is the arg-max.
- `QLookupSum`: per feature, a binning of the raw value into intervals, each holding an integer
  score vector; the vectors of all features are summed with a bias and the class is the arg-max.

Arg-max ties go to the lowest class index. Inputs are unsigned integers of the declared widths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from homunculus.ir.dense import QMLP, DenseLayer


@dataclass(frozen=True)
class QTree:
    """A binary tree over integer features. ``feature[i] < 0`` marks a leaf."""

    feature: tuple[int, ...]
    threshold: tuple[int, ...]
    left: tuple[int, ...]
    right: tuple[int, ...]
    leaf_scores: tuple[tuple[int, ...], ...]  # per node; only leaves' rows are used

    def leaf_index(self, x: np.ndarray) -> np.ndarray:
        """Index of the leaf each row of ``x`` (n, n_features) lands in."""
        return FlatForest.of((self,)).leaf_index(np.asarray(x, dtype=np.int64))[0]

    def scores(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.leaf_scores, dtype=np.int64)[self.leaf_index(x)]

    def leaves(self) -> list[int]:
        return [i for i, f in enumerate(self.feature) if f < 0]

    def paths(self) -> dict[int, list[tuple[int, int, bool]]]:
        """For every leaf, the (feature, threshold, went_left) conditions on its root path."""
        out: dict[int, list[tuple[int, int, bool]]] = {}
        stack: list[tuple[int, list[tuple[int, int, bool]]]] = [(0, [])]
        while stack:
            node, conds = stack.pop()
            if self.feature[node] < 0:
                out[node] = conds
                continue
            f, t = self.feature[node], self.threshold[node]
            stack.append((self.left[node], [*conds, (f, t, True)]))
            stack.append((self.right[node], [*conds, (f, t, False)]))
        return out


@dataclass(frozen=True)
class QTreeEnsemble:
    trees: tuple[QTree, ...]
    bias: tuple[int, ...]
    kind: str = "tree_ensemble"

    @property
    def n_classes(self) -> int:
        return len(self.bias)

    def scores(self, x: np.ndarray) -> np.ndarray:
        total = np.tile(np.asarray(self.bias, dtype=np.int64), (len(x), 1))
        if not self.trees or not len(x):
            return total
        flat = FlatForest.of(self.trees)
        return total + flat.leaf_scores[flat.leaf_index(x)].sum(axis=0)


@dataclass(frozen=True)
class FlatForest:
    """All trees of an ensemble as one array of nodes (tree ``t``'s node ``i`` is node
    ``offset[t] + i``), so a batch of rows walks every tree at once: one pass per level instead
    of one per level and tree. A leaf is its own child on both sides."""

    roots: np.ndarray  # (n_trees,)
    column: np.ndarray  # feature tested at each node (0 at leaves)
    threshold: np.ndarray
    children: np.ndarray  # node 2i + 1: left child of node i (x <= threshold), 2i: right child
    leaf: np.ndarray  # bool
    leaf_scores: np.ndarray  # (n_nodes, n_classes)

    @staticmethod
    def of(trees: tuple[QTree, ...]) -> FlatForest:
        sizes = np.array([len(t.feature) for t in trees])
        roots = np.cumsum(sizes) - sizes
        shift = np.repeat(roots, sizes)
        feature = np.concatenate([t.feature for t in trees]).astype(np.int64)
        leaf = feature < 0
        nodes = np.arange(len(feature))
        left = np.where(leaf, nodes, np.concatenate([t.left for t in trees]) + shift)
        right = np.where(leaf, nodes, np.concatenate([t.right for t in trees]) + shift)
        return FlatForest(roots, np.where(leaf, 0, feature),
                          np.concatenate([t.threshold for t in trees]).astype(np.int64),
                          np.stack([right, left], axis=1).reshape(-1), leaf,
                          np.concatenate([np.asarray(t.leaf_scores, dtype=np.int64).reshape(
                              len(t.feature), -1) for t in trees]))

    def leaf_index(self, x: np.ndarray) -> np.ndarray:
        """(n_trees, n_rows) node of the leaf each row lands in, per tree (tree-major: each
        level's gathers and the final sum over trees run on contiguous rows)."""
        n = len(x)
        by_feature = np.ascontiguousarray(x.T).reshape(-1)  # feature j of row i at j * n + i
        rows = np.arange(n)
        node = np.repeat(self.roots[:, None], n, axis=1)
        while not self.leaf[node].all():
            go_left = by_feature[self.column[node] * n + rows] <= self.threshold[node]
            node = self.children[2 * node + go_left]
        return node


@dataclass(frozen=True)
class FeatureBins:
    """A partition of a feature's range into intervals ``(prev_edge, edge]`` with score vectors."""

    feature: int
    upper_edges: tuple[int, ...]  # inclusive upper edge of each bin; the last is the width's max
    scores: tuple[tuple[int, ...], ...]  # one score vector per bin

    def bin_index(self, values: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.asarray(self.upper_edges, dtype=np.int64), values, side="left")


@dataclass(frozen=True)
class QLookupSum:
    bins: tuple[FeatureBins, ...]
    bias: tuple[int, ...]
    kind: str = "lookup_sum"

    @property
    def n_classes(self) -> int:
        return len(self.bias)

    def scores(self, x: np.ndarray) -> np.ndarray:
        total = np.tile(np.asarray(self.bias, dtype=np.int64), (len(x), 1))
        for fb in self.bins:
            total += np.asarray(fb.scores, dtype=np.int64)[fb.bin_index(x[:, fb.feature])]
        return total


QuantisedModel = QTreeEnsemble | QLookupSum | QMLP


def int_rows(rows: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """An integer matrix as tuples of Python ints (one C-level conversion, not one per value)."""
    return tuple(map(tuple, np.asarray(rows, dtype=np.int64).tolist()))


def predict_index(model: QuantisedModel, x: np.ndarray) -> np.ndarray:
    """Class indices the quantised model predicts for integer feature rows ``x``."""
    return np.argmax(model.scores(np.asarray(x, dtype=np.int64)), axis=1)


def to_json(model: QuantisedModel) -> dict[str, Any]:
    """A plain-JSON description of the quantised model (what `from_json` reads back)."""
    if isinstance(model, QMLP):
        return {"kind": model.kind, "input_shift": list(model.input_shift),
                "layers": [{"weights": [list(r) for r in layer.weights],
                            "bias": list(layer.bias), "multiplier": layer.multiplier,
                            "shift": layer.shift, "activation": layer.activation,
                            "lut": None if layer.lut is None else list(layer.lut)}
                           for layer in model.layers],
                **({"carried_in": True} if model.carried_in else {}),
                **({"carries_out": True} if model.carries_out else {})}
    if isinstance(model, QTreeEnsemble):
        return {
            "kind": model.kind,
            "bias": list(model.bias),
            "trees": [
                {
                    "feature": list(t.feature),
                    "threshold": list(t.threshold),
                    "left": list(t.left),
                    "right": list(t.right),
                    "leaf_scores": [list(s) for s in t.leaf_scores],
                }
                for t in model.trees
            ],
        }
    return {
        "kind": model.kind,
        "bias": list(model.bias),
        "bins": [
            {"feature": b.feature, "upper_edges": list(b.upper_edges),
             "scores": [list(s) for s in b.scores]}
            for b in model.bins
        ],
    }


def from_json(data: dict[str, Any]) -> QuantisedModel:
    if data["kind"] == "mlp":
        layers = tuple(
            DenseLayer(tuple(tuple(r) for r in d["weights"]), tuple(d["bias"]), d["multiplier"],
                       d["shift"], d["activation"], None if d["lut"] is None else tuple(d["lut"]))
            for d in data["layers"])
        return QMLP(tuple(data["input_shift"]), layers,
                    carried_in=bool(data.get("carried_in", False)),
                    carries_out=bool(data.get("carries_out", False)))
    if data["kind"] == "tree_ensemble":
        trees = tuple(
            QTree(tuple(t["feature"]), tuple(t["threshold"]), tuple(t["left"]), tuple(t["right"]),
                  tuple(tuple(s) for s in t["leaf_scores"]))
            for t in data["trees"]
        )
        return QTreeEnsemble(trees=trees, bias=tuple(data["bias"]))
    bins = tuple(
        FeatureBins(b["feature"], tuple(b["upper_edges"]), tuple(tuple(s) for s in b["scores"]))
        for b in data["bins"]
    )
    return QLookupSum(bins=bins, bias=tuple(data["bias"]))


@dataclass
class ScoreQuantiser:
    """Maps float score vectors to integers with one scale so that sums fit ``score_bits``."""

    scale: float

    @staticmethod
    def for_terms(term_ranges: list[float], score_bits: int) -> ScoreQuantiser:
        """Pick the scale so the worst-case spread of the summed scores fits ``score_bits``.

        ``term_ranges`` holds, per summed term (tree or feature table, bias included), the spread
        max - min of its float values; after per-term offsetting, the total spread is their sum.
        """
        spread = float(sum(term_ranges))
        top = float(2**score_bits - 1)
        scale = top / spread if spread > 0 else 1.0
        return ScoreQuantiser(scale=scale)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return np.floor(np.asarray(values, dtype=np.float64) * self.scale + 0.5).astype(np.int64)
