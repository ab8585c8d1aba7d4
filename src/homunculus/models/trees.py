"""Tree families: decision tree, random forest, gradient-boosted trees (xgboost).

All three quantise to a `QTreeEnsemble`: integer thresholds (``x <= t`` goes left) and integer
leaf score vectors. A decision tree keeps its exact prediction (one-hot leaves); a forest scales
its leaf class distributions to ``leaf_bits``; boosted trees scale their leaf margins so that the
summed scores fit ``score_bits``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import optuna
import xgboost as xgb
from sklearn.ensemble import RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier

from homunculus.ir.quantised import QTree, QTreeEnsemble, QuantisedModel, ScoreQuantiser, int_rows
from homunculus.models.base import TrainedModel, register, sqrt_feature_share, stump_ensemble

RF_FEATURE_SHARE = (0.2, 1.0)  # the search space of rf_max_features
XGB_STEP = (0.05, 1.0)  # the search space of xgb_learning_rate
XGB_RESIZED_STEP = 0.6  # the largest step a booster cut to the limits is given (resize)
FEW_TREES = 8  # the trees the forest's data default keeps under an entries limit


def _full_class_rows(values: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Place per-node class columns (for the classes the estimator saw) into n_classes columns."""
    out = np.zeros((values.shape[0], n_classes), dtype=np.float64)
    out[:, np.asarray(classes, dtype=np.int64)] = values
    return out


def sklearn_tree_to_qtree(estimator: Any, leaf_rows: np.ndarray) -> QTree:
    """Convert a fitted sklearn tree; ``x <= thr`` on float32 is ``x <= floor(thr)`` on ints."""
    t = estimator.tree_
    thresholds = [int(math.floor(v)) if f >= 0 else 0 for f, v in zip(t.feature, t.threshold,
                                                                        strict=True)]
    return QTree(
        feature=tuple(t.feature.tolist()),
        threshold=tuple(thresholds),
        left=tuple(t.children_left.tolist()),
        right=tuple(t.children_right.tolist()),
        leaf_scores=int_rows(leaf_rows),
    )


class DecisionTreeFamily:
    name = "dt"
    description = "decision tree (one ternary entry per leaf over thermometer-coded features)"

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {
            "dt_max_depth": trial.suggest_int("dt_max_depth", 1, 12),
            "dt_min_samples_leaf": trial.suggest_int("dt_min_samples_leaf", 1, 32, log=True),
            "dt_criterion": trial.suggest_categorical("dt_criterion", ["gini", "entropy"]),
        }

    def default_params(self) -> dict[str, Any]:
        return {"dt_max_depth": 5, "dt_min_samples_leaf": 1, "dt_criterion": "gini"}

    def smallest_model(self, widths: tuple[int, ...], n_classes: int) -> QuantisedModel:
        """The smallest pipeline this family can produce (for candidate selection)."""
        return stump_ensemble(1, n_classes, widths[0])

    def minimal_params(self) -> dict[str, Any]:
        return {"dt_max_depth": 1, "dt_min_samples_leaf": 1, "dt_criterion": "gini"}

    def train(self, params: dict[str, Any], x: np.ndarray, y: np.ndarray, n_classes: int,
              widths: tuple[int, ...], seed: int) -> TrainedModel:
        model = DecisionTreeClassifier(
            max_depth=params["dt_max_depth"], min_samples_leaf=params["dt_min_samples_leaf"],
            criterion=params["dt_criterion"], random_state=seed,
        ).fit(x.astype(np.float64), y)
        proba = _full_class_rows(model.tree_.value[:, 0, :], model.classes_, n_classes)
        onehot = np.zeros_like(proba, dtype=np.int64)
        onehot[np.arange(len(proba)), np.argmax(proba, axis=1)] = 1
        tree = sklearn_tree_to_qtree(model, onehot)
        q = QTreeEnsemble(trees=(tree,), bias=(0,) * n_classes)
        return TrainedModel(self.name, params, model, q)


class RandomForestFamily:
    name = "rf"
    description = "random forest (per-tree leaf tables, class-distribution votes summed)"
    size_param = "rf_n_estimators"  # fewer: the first trees of the same seeded forest

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {
            # up to scikit-learn's order of trees: larger than a switch holds ships as the
            # largest prefix that fits (search/problem.py, fit_to_limits)
            "rf_n_estimators": trial.suggest_int("rf_n_estimators", 2, 64, log=True),
            "rf_max_depth": trial.suggest_int("rf_max_depth", 1, 10),
            "rf_min_samples_leaf": trial.suggest_int("rf_min_samples_leaf", 1, 32, log=True),
            "rf_max_features": trial.suggest_float("rf_max_features", *RF_FEATURE_SHARE),
            "rf_leaf_bits": trial.suggest_int("rf_leaf_bits", 1, 8),
        }

    def default_params(self) -> dict[str, Any]:
        return {"rf_n_estimators": 10, "rf_max_depth": 6, "rf_min_samples_leaf": 1,
                "rf_max_features": 0.5, "rf_leaf_bits": 4}

    def data_defaults(self, n_features: int, max_entries: int | None = None
                      ) -> list[dict[str, Any]]:
        """scikit-learn's forest as far as the target holds it: a split looks at sqrt(n) of the
        features (its default), 64 trees up to depth 10 (small data keeps them shallow anyway),
        shipped as the largest prefix that fits the limits (``fit_to_limits``). Over ten splits
        of wine and iris its quantised votes match scikit-learn's 100 trees on average, where
        16 trees trailed on wine by 0.6 points.

        Under a limit of ``max_entries`` table entries, a forest of depth-10 trees would ship
        only a few of them, each weak alone: the default then keeps at least
        :data:`FEW_TREES` trees (depth ``log2(max_entries / FEW_TREES)``, a tree's leaves each
        take an entry) and lets each split look at half the features. On the IoT example
        (2,000 entries) its cross-validated macro-F1 is 0.930 against 0.878 on seeds 0-2
        (docs/benchmarks.md)."""
        depth, share = 10, sqrt_feature_share(n_features, *RF_FEATURE_SHARE)
        if max_entries is not None:
            depth = min(depth, max(1, int(math.log2(max(max_entries // FEW_TREES, 2)))))
            share = max(share, 0.5)
        return [{"rf_n_estimators": 64, "rf_max_depth": depth, "rf_min_samples_leaf": 1,
                 "rf_max_features": share, "rf_leaf_bits": 4}]

    def smallest_model(self, widths: tuple[int, ...], n_classes: int) -> QuantisedModel:
        """The smallest pipeline this family can produce (for candidate selection)."""
        return stump_ensemble(2, n_classes, widths[0])

    def minimal_params(self) -> dict[str, Any]:
        return {"rf_n_estimators": 2, "rf_max_depth": 1, "rf_min_samples_leaf": 1,
                "rf_max_features": 1.0, "rf_leaf_bits": 1}

    def train(self, params: dict[str, Any], x: np.ndarray, y: np.ndarray, n_classes: int,
              widths: tuple[int, ...], seed: int) -> TrainedModel:
        model = RandomForestClassifier(
            n_estimators=params["rf_n_estimators"], max_depth=params["rf_max_depth"],
            min_samples_leaf=params["rf_min_samples_leaf"],
            max_features=params["rf_max_features"], random_state=seed, n_jobs=1,
        ).fit(x.astype(np.float64), y)
        top = (1 << params["rf_leaf_bits"]) - 1
        trees = []
        for est in model.estimators_:
            values = est.tree_.value[:, 0, :]
            proba = values / np.maximum(values.sum(axis=1, keepdims=True), 1e-12)
            rows = np.floor(_full_class_rows(proba, model.classes_, n_classes) * top + 0.5)
            trees.append(sklearn_tree_to_qtree(est, rows.astype(np.int64)))
        q = QTreeEnsemble(trees=tuple(trees), bias=(0,) * n_classes)
        return TrainedModel(self.name, params, model, q)


def _xgb_tree_arrays(tree_json: dict[str, Any]) -> tuple[list[int], list[int], list[int],
                                                         list[int], list[float]]:
    """Flatten one xgboost JSON tree dump into arrays indexed by node id."""
    nodes: dict[int, dict[str, Any]] = {}
    stack = [tree_json]
    while stack:
        node = stack.pop()
        nodes[node["nodeid"]] = node
        stack.extend(node.get("children", []))
    n = max(nodes) + 1
    feature, threshold, left, right = [-2] * n, [0] * n, [-1] * n, [-1] * n
    leaf = [0.0] * n
    for nid, node in nodes.items():
        if "leaf" in node:
            leaf[nid] = float(node["leaf"])
            continue
        feature[nid] = int(str(node["split"]).lstrip("f"))
        # xgboost goes "yes" when x < c; for integers that is x <= ceil(c) - 1.
        threshold[nid] = int(math.ceil(float(node["split_condition"]))) - 1
        left[nid], right[nid] = int(node["yes"]), int(node["no"])
    return feature, threshold, left, right, leaf


class XGBoostFamily:
    name = "xgb"
    description = "gradient-boosted trees (xgboost; per-tree leaf tables, margins summed)"
    size_param = "xgb_n_estimators"  # fewer: fewer, larger steps (resize)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {
            "xgb_n_estimators": trial.suggest_int("xgb_n_estimators", 1, 24),
            "xgb_max_depth": trial.suggest_int("xgb_max_depth", 1, 6),
            "xgb_learning_rate": trial.suggest_float("xgb_learning_rate", *XGB_STEP, log=True),
            "xgb_score_bits": trial.suggest_int("xgb_score_bits", 6, 16),
            "xgb_colsample": trial.suggest_float("xgb_colsample", 0.3, 1.0),
        }

    def default_params(self) -> dict[str, Any]:
        return {"xgb_n_estimators": 10, "xgb_max_depth": 4, "xgb_learning_rate": 0.3,
                "xgb_score_bits": 12, "xgb_colsample": 1.0}

    def data_defaults(self, n_features: int, max_entries: int | None = None
                      ) -> list[dict[str, Any]]:
        """The default with half the features drawn for each split (xgboost's
        ``colsample_bynode``), as a forest does: with ten rounds on small data it decorrelates
        the trees (wine: 0.957 -> 0.980 over ten splits, docs/benchmarks.md). Only worth a
        trial with a few features or more."""
        return [] if n_features < 4 else [{**self.default_params(), "xgb_colsample": 0.5}]

    def resize(self, params: dict[str, Any], rounds: int) -> dict[str, Any]:
        """``params`` cut to ``rounds`` rounds (fewer than asked, to fit the limits), each taking
        a step as much larger as there are fewer of them (learning rate times rounds kept), up
        to :data:`XGB_RESIZED_STEP` (or the asked step, if larger): a booster cut to a few
        rounds of small steps stops far short of its fit, and steps near 1 overshoot. The
        family defaults on seeds 0-2 (docs/benchmarks.md): IoT on Tofino cut from 10 rounds to
        5, cross-validated macro-F1 0.890 -> 0.927; anomaly cut to 2-3, F1 0.968 -> 0.976 (up
        to a step of 1: 0.957)."""
        asked = int(params[self.size_param])
        step = float(params["xgb_learning_rate"])
        if rounds < asked:
            step = min(max(step, XGB_RESIZED_STEP), step * asked / rounds)
        return {**params, self.size_param: rounds, "xgb_learning_rate": round(step, 6)}

    def smallest_model(self, widths: tuple[int, ...], n_classes: int) -> QuantisedModel:
        """The smallest pipeline this family can produce (for candidate selection)."""
        return stump_ensemble(1 if n_classes == 2 else n_classes, n_classes, widths[0])

    def minimal_params(self) -> dict[str, Any]:
        return {"xgb_n_estimators": 1, "xgb_max_depth": 1, "xgb_learning_rate": 0.3,
                "xgb_score_bits": 6, "xgb_colsample": 1.0}

    def train(self, params: dict[str, Any], x: np.ndarray, y: np.ndarray, n_classes: int,
              widths: tuple[int, ...], seed: int) -> TrainedModel:
        model = xgb.XGBClassifier(
            n_estimators=params["xgb_n_estimators"], max_depth=params["xgb_max_depth"],
            learning_rate=params["xgb_learning_rate"], random_state=seed, n_jobs=1,
            colsample_bynode=params.get("xgb_colsample", 1.0),  # absent in older recipes
            tree_method="hist", objective="binary:logistic" if n_classes == 2
            else "multi:softprob",
        ).fit(x.astype(np.float64), y.astype(np.float32))  # xgboost keeps float32 labels:
        # handing them over as such gives the same booster, byte for byte, at half the fit's
        # CPU time (xgboost's int64 label path costs ~5 ms a pass over the data)
        return TrainedModel(self.name, params, model, self.quantise(model, x, n_classes,
                                                                     params["xgb_score_bits"]))

    @staticmethod
    def quantise(model: xgb.XGBClassifier, x: np.ndarray, n_classes: int,
                 score_bits: int) -> QTreeEnsemble:
        booster = model.get_booster()
        dumps = [json.loads(d) for d in booster.get_dump(dump_format="json")]
        margin_classes = 1 if n_classes == 2 else n_classes
        arrays = [_xgb_tree_arrays(d) for d in dumps]
        base = _base_margin(booster, x[:1], arrays, margin_classes)
        # Binary: class 1 wins iff margin > 0, i.e. scores (0, margin); ties go to class 0.
        bias_float = np.zeros(n_classes)
        bias_float[n_classes - margin_classes:] = base
        spreads = [max(a[4]) - min(a[4]) for a in arrays]
        quant = ScoreQuantiser.for_terms([*spreads, float(np.ptp(bias_float))], score_bits)
        trees = []
        for i, (feature, threshold, left, right, leaf) in enumerate(arrays):
            column = (n_classes - margin_classes) + i % margin_classes
            rows = np.zeros((len(leaf), n_classes), dtype=np.int64)
            rows[:, column] = quant(np.asarray(leaf))
            trees.append(QTree(tuple(feature), tuple(threshold), tuple(left), tuple(right),
                               int_rows(rows)))
        return QTreeEnsemble(trees=tuple(trees), bias=tuple(int(v) for v in quant(bias_float)))


def _base_margin(booster: xgb.Booster, x1: np.ndarray, arrays: list[Any],
                 margin_classes: int) -> np.ndarray:
    """The model's base margin per class: predicted margin minus the sum of its leaf values."""
    dm = xgb.DMatrix(x1.astype(np.float64), nthread=1)  # one row: threads only cost
    margin = np.asarray(booster.predict(dm, output_margin=True), dtype=np.float64).reshape(-1)
    leaves = np.asarray(booster.predict(dm, pred_leaf=True)).reshape(-1)
    sums = np.zeros(margin_classes)
    for i, leaf_id in enumerate(leaves):
        sums[i % margin_classes] += arrays[i][4][int(leaf_id)]
    return margin[:margin_classes] - sums


register(DecisionTreeFamily())
register(RandomForestFamily())
register(XGBoostFamily())
