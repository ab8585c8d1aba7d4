"""Integer datasets as a data plane sees them: each feature an unsigned integer of known width."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from homunculus.errors import DataError
from homunculus.features.headers import lookup_header_field

MAX_WIDTH = 32


@dataclass(frozen=True)
class FeatureDecl:
    """A feature: its name, its width in bits and, optionally, the header field it is read from."""

    name: str
    width: int
    field: str | None = None
    kind: str | None = None  # a flow-state kind (features/library.py); None: a table column
    categorical: bool = False  # values are categories (exact-match tables may map them)

    @property
    def max_value(self) -> int:
        return (1 << self.width) - 1


@dataclass(frozen=True)
class FlowRows:
    """Per row of a traffic dataset: its flow's packet count n and an id of the flow's stay in
    its slot (features/reference.py ``flow_positions``), for the per-flow decision."""

    pos_train: np.ndarray
    ep_train: np.ndarray
    pos_test: np.ndarray
    ep_test: np.ndarray


@dataclass(frozen=True)
class Dataset:
    """Train and test splits with integer features and class indices into ``class_labels``."""

    features: tuple[FeatureDecl, ...]
    class_labels: tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str = "<memory>"
    traffic: Any = None  # TrafficInfo for datasets built from packets (data/traffic.py)
    groups_train: np.ndarray | None = None  # flow/capture of each training row (no leaks)
    group_name: str | None = None  # what a group is: "capture", "flow" or a column's name
    flow_rows: FlowRows | None = None  # traffic datasets: each row's place in its flow

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(f.width for f in self.features)

    @property
    def n_classes(self) -> int:
        return len(self.class_labels)


class FeatureDeclError(DataError):
    """A bad feature declaration; ``index`` is its position in the declared list."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


def check_feature_decls(features: list[FeatureDecl], source: str) -> None:
    """Reject duplicate names, widths outside 1..32 and header bindings of the wrong width."""
    if not features:
        raise DataError(f"{source}: no features declared")
    seen: set[str] = set()
    for i, f in enumerate(features):
        where = f"feature '{f.name}'"
        if f.name in seen:
            raise FeatureDeclError(f"{where} is declared twice", i)
        seen.add(f.name)
        if not 1 <= f.width <= MAX_WIDTH:
            raise FeatureDeclError(f"{where}: width {f.width} is outside 1..{MAX_WIDTH} bits", i)
        if f.kind is not None:
            continue  # flow features are validated by features.library.validate
        if f.field is not None:
            try:
                hf = lookup_header_field(f.field)
            except KeyError as exc:
                raise FeatureDeclError(f"{where}: {exc.args[0]}", i) from None
            if hf.width != f.width:
                raise FeatureDeclError(f"{where}: declared width {f.width} but header field "
                                       f"{f.field} has {hf.width} bits", i)


def to_integer_matrix(values: np.ndarray, features: tuple[FeatureDecl, ...], source: str,
                      split: str) -> np.ndarray:
    """Validate raw feature values and return them as int64, naming the first bad cell."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{source} ({split}): features are not numeric: {exc}") from None
    if arr.ndim != 2 or arr.shape[1] != len(features):
        raise DataError(
            f"{source} ({split}): expected {len(features)} feature columns, got shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise DataError(f"{source} ({split}): the dataset is empty")
    for j, f in enumerate(features):
        col = arr[:, j]
        bad = ~np.isfinite(col)
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(f"{source} ({split}): feature '{f.name}' is {col[row]} in row {row}"
                            " (NaN/inf are not integers a data plane can see)")
        bad = (col < 0) | (col > f.max_value) | (col != np.floor(col))
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(
                f"{source} ({split}): feature '{f.name}' = {col[row]} in row {row} is not an "
                f"integer in 0..{f.max_value} (declared width {f.width} bits)"
            )
    return arr.astype(np.int64)


def encode_labels(y_train: np.ndarray, y_test: np.ndarray,
                  source: str) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Map labels to indices of the sorted training classes; reject one class or unseen labels."""
    train = np.asarray([str(v) for v in np.asarray(y_train).ravel()])
    test = np.asarray([str(v) for v in np.asarray(y_test).ravel()])
    labels = tuple(sorted(set(train.tolist())))
    if len(labels) < 2:
        raise DataError(f"{source}: the training labels hold a single class {labels!r}; "
                        "a classifier needs at least two")
    index = {label: i for i, label in enumerate(labels)}
    unseen = sorted(set(test.tolist()) - set(labels))
    if unseen:
        raise DataError(f"{source}: test labels {unseen[:5]} never occur in the training data")
    return labels, np.array([index[v] for v in train]), np.array([index[v] for v in test])


def make_dataset(features: list[FeatureDecl], x_train: np.ndarray, y_train: np.ndarray,
                 x_test: np.ndarray, y_test: np.ndarray, source: str) -> Dataset:
    """Validate everything a compile needs from its data and build the Dataset."""
    check_feature_decls(features, source)
    feats = tuple(features)
    xtr = to_integer_matrix(x_train, feats, source, "train")
    xte = to_integer_matrix(x_test, feats, source, "test")
    if len(np.asarray(y_train).ravel()) != len(xtr):
        raise DataError(f"{source} (train): {len(xtr)} feature rows but "
                        f"{len(np.asarray(y_train).ravel())} labels")
    if len(np.asarray(y_test).ravel()) != len(xte):
        raise DataError(f"{source} (test): {len(xte)} feature rows but "
                        f"{len(np.asarray(y_test).ravel())} labels")
    labels, ytr, yte = encode_labels(y_train, y_test, source)
    return Dataset(feats, labels, xtr, ytr, xte, yte, source)


def select_features(dataset: Dataset, indices: list[int]) -> Dataset:
    """The dataset restricted to the features at ``indices`` (flow declarations too)."""
    from dataclasses import replace

    traffic = dataset.traffic
    if traffic is not None:
        traffic = replace(traffic, features=tuple(traffic.features[i] for i in indices))
    return replace(dataset, features=tuple(dataset.features[i] for i in indices),
                   x_train=dataset.x_train[:, indices], x_test=dataset.x_test[:, indices],
                   traffic=traffic)
