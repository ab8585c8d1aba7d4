"""Categorical features through exact-match tables: the hybrid of a learned table and a model.

A categorical feature (a port, a protocol, a code) is a name, not a number to threshold. The
hybrid learns an exact-match table over one categorical feature: its ``size`` most frequent
values (those seen in at least ``support`` groups -- captures or flows, when the training rows
carry groups, so that a value one capture repeats does not count as common -- else rows), each
mapped straight to its majority class. With groups, that is a majority of groups, not of rows:
each group holding the value gives it one vote, shared among the classes of its rows with that
value, so that one long capture does not decide a port that many other captures use for another
class (on the traffic example this raised both the cross-validated and the test macro-F1 at every
tree depth tried; docs/benchmarks.md). A packet whose value is in the table gets that class;
every other packet goes to the learned model, which is trained on the rows the table does not
cover (all rows if too few remain), so it specialises in the rest.

The table size, the feature and the support are knobs of the design space (``CAT_*``); the table
size is bounded by what the target can hold (``max_table_entries``). In the data plane the table
is an exact-match table in SRAM on switches (passes/switch.py) and a sorted array (binary search)
or a direct array on the CPU targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

CAT_TABLE = "cat_table"  # entries of the table (0: no table)
CAT_FEATURE = "cat_feature"  # the categorical feature it matches (by name)
CAT_SUPPORT = "cat_support"  # groups (or rows) a value needs to earn an entry
TABLE_SIZES = (0, 16, 64, 256, 1024, 4096)
SUPPORTS = (1, 2, 3)
DEFAULT_SIZE = 256
DEFAULT_SUPPORT = 2
MIN_REST_ROWS = 10  # the model trains on the table's misses only if at least this many remain


@dataclass(frozen=True)
class CategoryTable:
    """Exact-match table ``x[feature] == values[i] -> classes[i]`` (values sorted, unique)."""

    feature: int
    values: tuple[int, ...]
    classes: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.values) != len(self.classes):
            raise ValueError("a category table needs one class per value")
        if list(self.values) != sorted(set(self.values)):
            raise ValueError("category table values must be sorted and unique")

    def __len__(self) -> int:
        return len(self.values)

    def lookup(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(hit mask, class of each hit row; 0 for misses) for integer feature rows ``x``."""
        column = np.asarray(x, dtype=np.int64)[:, self.feature]
        values = np.asarray(self.values, dtype=np.int64)
        at = np.clip(np.searchsorted(values, column), 0, max(len(values) - 1, 0))
        hit = (values[at] == column) if len(values) else np.zeros(len(column), dtype=bool)
        classes = np.asarray(self.classes, dtype=np.int64)[at] if len(values) else at
        return hit, np.where(hit, classes, 0)

    def apply(self, x: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """``predicted`` with every table hit replaced by the table's class."""
        hit, classes = self.lookup(x)
        return np.where(hit, classes, predicted)

    def as_json(self) -> dict[str, Any]:
        return {"feature": self.feature, "values": list(self.values),
                "classes": list(self.classes)}

    @staticmethod
    def from_json(data: dict[str, Any]) -> CategoryTable:
        return CategoryTable(int(data["feature"]), tuple(int(v) for v in data["values"]),
                             tuple(int(c) for c in data["classes"]))


def learn_table(column: np.ndarray, y: np.ndarray, groups: np.ndarray | None, feature: int,
                n_classes: int, size: int, support: int) -> CategoryTable:
    """The ``size`` values of ``column`` with the largest support (groups they occur in, then
    rows; ties to the smaller value) among those with at least ``support``, each with its
    majority class (ties to the lower class index): the class with the most rows, or with
    ``groups`` the class with the most votes, each group voting once for a value, its vote
    shared in proportion to its rows of each class."""
    frame = pd.DataFrame({"v": np.asarray(column, dtype=np.int64),
                          "y": np.asarray(y, dtype=np.int64)})
    frame["g"] = np.arange(len(frame)) if groups is None else np.asarray(groups)
    stats = frame.groupby("v").agg(groups=("g", "nunique"), rows=("y", "size"))
    stats = stats[stats["groups"] >= support].reset_index()
    stats = stats.sort_values(["groups", "rows", "v"], ascending=[False, False, True]).head(size)
    if stats.empty:
        return CategoryTable(feature, (), ())
    chosen = frame[frame["v"].isin(stats["v"])]
    counts = pd.crosstab(chosen["v"], chosen["y"]).reindex(columns=range(n_classes), fill_value=0)
    if groups is not None:  # one vote per group, shared among the classes of its rows
        shares = pd.crosstab([chosen["v"], chosen["g"]], chosen["y"], normalize="index")
        counts = shares.groupby(level=0).sum().reindex(index=counts.index,
                                                       columns=range(n_classes), fill_value=0.0)
    majority = counts.to_numpy().argmax(axis=1)  # the first maximum: the lower class index
    values = counts.index.to_numpy(np.int64)
    order = np.argsort(values)
    return CategoryTable(feature, tuple(int(v) for v in values[order]),
                         tuple(int(c) for c in majority[order]))


def table_knobs(params: dict[str, Any]) -> tuple[int, str | None, int]:
    """(size, feature name, support) of a configuration (size 0: no table)."""
    return (int(params.get(CAT_TABLE, 0) or 0), params.get(CAT_FEATURE),
            int(params.get(CAT_SUPPORT, DEFAULT_SUPPORT)))


def rest_rows(hit: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Rows the model trains on: the table's misses, unless too few (or one class) remain."""
    rest = ~hit
    if rest.sum() < MIN_REST_ROWS or len(np.unique(y[rest])) < 2:
        return np.ones(len(y), dtype=bool)
    return rest


def size_choices(max_entries: int) -> list[int]:
    """Table sizes of the design space that fit ``max_entries`` (0, no table, always does)."""
    return [s for s in TABLE_SIZES if s <= max_entries]
