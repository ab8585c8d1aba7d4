"""The shortcuts that make a cross-validated trial cheaper compute the same numbers as the code
they replace: scikit-learn's metrics, ``np.median`` per bin, tree-by-tree traversal."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from homunculus.ir.quantised import QTree, QTreeEnsemble
from homunculus.models.binning import bin_medians, fit_binning
from homunculus.models.clustering import distinct_rows
from homunculus.search.metrics import class_indices, fast_accuracy, fast_f1_macro, score


def label_pairs(seed: int, count: int):
    """Random true/predicted class indices, some classes absent from either side."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n, k = int(rng.integers(1, 400)), int(rng.integers(2, 9))
        y_true = rng.integers(0, int(rng.integers(1, k + 1)), n)
        right = rng.random(n) < rng.random()
        yield np.where(right, y_true, rng.integers(0, k, n)), y_true, k


def test_fast_metrics_equal_scikit_learn_bit_for_bit() -> None:
    for y_pred, y_true, k in label_pairs(0, 500):
        expected = float(f1_score(y_true, y_pred, labels=list(range(k)), average="macro",
                                  zero_division=0))
        assert fast_f1_macro(y_true, y_pred, k) == expected
        assert score("f1_macro", y_true, y_pred, k, None) == expected
        assert fast_accuracy(y_true, y_pred, k) == float(accuracy_score(y_true, y_pred))


def test_labels_outside_the_classes_go_to_scikit_learn() -> None:
    y_true, y_pred = np.array([0, 1, 2]), np.array([0, 1, 1])
    assert class_indices(y_true, y_pred, 3)
    assert not class_indices(y_true, y_pred, 2)  # class 2 is not a class index of 2 classes
    assert not class_indices(y_true, y_pred.astype(float), 3)
    assert not class_indices(y_true[:0], y_pred[:0], 3)
    expected = float(f1_score(y_true, y_pred, labels=[0, 1], average="macro", zero_division=0))
    assert score("f1_macro", y_true, y_pred, 2, None) == expected


@pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.float64])
def test_bin_medians_are_numpy_medians(dtype) -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        values = rng.integers(0, int(rng.choice([4, 50, 60000])), int(rng.integers(1, 300)))
        values = values.astype(dtype)
        edges = np.unique(rng.integers(0, 65535, int(rng.integers(1, 40)))).astype(np.int64)
        edges = np.unique(np.append(edges, 65535))
        idx = np.searchsorted(edges, values, side="left")
        expected = [np.median(values[idx == b]) if (idx == b).any() else np.nan
                    for b in range(len(edges))]
        np.testing.assert_array_equal(bin_medians(np.sort(values), edges), expected)


def test_fit_binning_represents_empty_bins_by_their_middle() -> None:
    binning = fit_binning(np.array([0, 0, 10, 11]), 4, 8)
    np.testing.assert_array_equal(binning.upper_edges, [5, 10, 15])
    np.testing.assert_array_equal(binning.representatives, [0.0, 10.0, 11.0])
    sparse = fit_binning(np.array([3, 3, 3]), 4, 2)  # one distinct value: one bin to the top
    np.testing.assert_array_equal(sparse.representatives, [3.0])
    none = fit_binning(np.array([], dtype=np.int64), 4, 2)
    np.testing.assert_array_equal(none.representatives, [7.5])


def test_quantile_cuts_are_numpy_lower_quantiles() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        values = rng.geometric(0.01, int(rng.integers(50, 500))).clip(0, 4095)
        n_bins = int(rng.integers(2, 20))
        if len(np.unique(values)) <= n_bins:
            continue
        qs = np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1], method="lower")
        cuts = np.unique(qs.astype(np.int64))
        expected = np.unique(np.concatenate([cuts[cuts < 4095], [4095]]))
        np.testing.assert_array_equal(fit_binning(values, 12, n_bins).upper_edges, expected)


def random_tree(rng: np.random.Generator, n_features: int, n_classes: int,
                depth: int) -> QTree:
    """A random tree whose node ids are not in depth-first order (as xgboost numbers them)."""
    feature, threshold, left, right, scores = [], [], [], [], []

    def add(level: int) -> int:
        node = len(feature)
        feature.append(-2)
        threshold.append(0)
        left.append(-1)
        right.append(-1)
        scores.append(tuple(int(v) for v in rng.integers(-50, 50, n_classes)))
        if level < depth and rng.random() < 0.8:
            feature[node] = int(rng.integers(0, n_features))
            threshold[node] = int(rng.integers(0, 256))
            left[node], right[node] = add(level + 1), add(level + 1)
        return node

    add(0)
    return QTree(tuple(feature), tuple(threshold), tuple(left), tuple(right), tuple(scores))


def walk(tree: QTree, row: np.ndarray) -> int:
    """The leaf one row lands in, one node at a time."""
    node = 0
    while tree.feature[node] >= 0:
        go_left = row[tree.feature[node]] <= tree.threshold[node]
        node = tree.left[node] if go_left else tree.right[node]
    return node


def test_forest_walk_equals_row_by_row_walks() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        n_features, n_classes = int(rng.integers(1, 5)), int(rng.integers(2, 6))
        trees = tuple(random_tree(rng, n_features, n_classes, int(rng.integers(0, 7)))
                      for _ in range(int(rng.integers(1, 12))))
        ensemble = QTreeEnsemble(trees, tuple(int(v) for v in rng.integers(-9, 9, n_classes)))
        x = rng.integers(0, 256, (int(rng.integers(1, 200)), n_features))
        leaves = [[walk(tree, row) for row in x] for tree in trees]
        for tree, leaf in zip(trees, leaves, strict=True):
            np.testing.assert_array_equal(tree.leaf_index(x), leaf)
        expected = np.asarray(ensemble.bias) + sum(
            np.asarray(tree.leaf_scores)[leaf] for tree, leaf in zip(trees, leaves, strict=True))
        np.testing.assert_array_equal(ensemble.scores(x), expected)
    assert ensemble.scores(x[:0]).shape == (0, n_classes)


def test_distinct_rows_caps_the_count_of_unique_rows() -> None:
    rng = np.random.default_rng(4)
    for _ in range(300):
        n, levels = int(rng.integers(0, 400)), int(rng.integers(1, 4))
        x = rng.integers(0, levels, (n, int(rng.integers(1, 3))))
        x[rng.random(n) < 0.9] = 0  # mostly one row: the distinct ones sit late
        cap = int(rng.integers(1, 17))
        assert distinct_rows(x, cap) == min(cap, len(np.unique(x, axis=0)))


@pytest.mark.parametrize("n_classes", [2, 4])
def test_xgboost_on_float32_labels_is_the_same_booster(n_classes) -> None:
    import xgboost as xgb

    from homunculus.models.base import get_family

    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (300, 3))
    y = (x[:, 0] // (256 // n_classes)).clip(0, n_classes - 1)
    family = get_family("xgb")
    params = family.default_params()
    trained = family.train(params, x, y, n_classes, (8, 8, 8), 0)
    reference = xgb.XGBClassifier(
        n_estimators=params["xgb_n_estimators"], max_depth=params["xgb_max_depth"],
        learning_rate=params["xgb_learning_rate"], random_state=0, n_jobs=1, tree_method="hist",
        objective="binary:logistic" if n_classes == 2 else "multi:softprob",
    ).fit(x.astype(np.float64), y)
    assert trained.float_model.get_booster().save_raw() == reference.get_booster().save_raw()
    np.testing.assert_array_equal(trained.float_model.classes_, np.arange(n_classes))
