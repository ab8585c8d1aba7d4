"""Tabular datasets from CSV or Parquet, with errors that name the file and the column."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit, train_test_split

from homunculus.data.dataset import Dataset, FeatureDecl, make_dataset
from homunculus.errors import DataError
from homunculus.inputs import MAX_TABLE_BYTES, open_regular

Locate = Callable[[str, str], Exception]  # (spec field, message) -> error to raise


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file (by extension): a regular file of at most MAX_TABLE_BYTES."""
    try:
        os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such data file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise DataError(f"{path}: cannot read the data file: "
                        f"{getattr(exc, 'strerror', None) or exc}") from None
    kind = "Parquet" if path.suffix.lower() in (".parquet", ".pq") else "CSV"
    with open_regular(path, "data file", MAX_TABLE_BYTES) as f:
        try:
            if kind == "Parquet":
                return pd.read_parquet(f)
            return pd.read_csv(f)
        except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError,
                pd.errors.EmptyDataError) as exc:
            raise DataError(f"{path}: cannot read as {kind}: {exc}") from None


def _columns(frame: pd.DataFrame, path: Path, features: list[FeatureDecl], label: str,
             locate: Locate, group: str | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if frame.empty:
        raise DataError(f"{path}: the dataset is empty")
    if label not in frame.columns:
        raise locate("data.label", f"label column '{label}' is not in {path} "
                                   f"(columns: {list(frame.columns)[:12]})")
    for i, f in enumerate(features):
        if f.name not in frame.columns:
            raise locate(f"data.features[{i}].name",
                         f"feature column '{f.name}' is not in {path}")
    labels = frame[label]
    missing = labels.isna().to_numpy() | (labels.astype(str).str.strip() == "").to_numpy()
    if missing.any():
        row = int(np.argmax(missing))
        raise locate("data.label", f"{path}: label column '{label}' is missing (empty or NaN) "
                                   f"in data row {row} (line {row + 2}); every row needs a "
                                   "class label")
    groups = None
    if group is not None:
        if group not in frame.columns:
            raise locate("data.group", f"group column '{group}' is not in {path} "
                                       f"(columns: {list(frame.columns)[:12]})")
        groups = pd.factorize(frame[group].astype(str))[0]
    return frame[[f.name for f in features]].to_numpy(), labels.to_numpy(), groups


def check_categorical_widths(dataset: Dataset, locate: Locate) -> None:
    """A categorical table column is keyed on its declared width (table key bits, array sizes):
    it may not be declared wider than its values need (header-bound features have the field's
    width, which the data plane reads whatever the data holds)."""
    for i, f in enumerate(dataset.features):
        if not f.categorical or f.field is not None:
            continue
        top = int(max(dataset.x_train[:, i].max(), dataset.x_test[:, i].max()))
        need = max(1, top.bit_length())
        if f.width > need:
            raise locate(f"data.features[{i}].width",
                         f"categorical feature '{f.name}' is declared {f.width} bits wide but "
                         f"its values need {need} (the largest is {top}); an exact-match table "
                         f"is keyed on the declared width: declare width {need}")


def load_tabular(path: Path, label: str, features: list[FeatureDecl], *, test_path: Path | None,
                 test_fraction: float, seed: int, locate: Locate,
                 group: str | None = None) -> Dataset:
    """Build a Dataset from one table (split, stratified when possible, by ``group`` when
    given: no group on both sides) or a train/test pair."""
    x, y, groups = _columns(read_table(path), path, features, label, locate, group)
    if test_path is not None:
        x_test, y_test, _ = _columns(read_table(test_path), test_path, features, label, locate,
                                     group)
        ds = make_dataset(features, x, y, x_test, y_test, str(path))
        ds = replace(ds, groups_train=groups, group_name=group)
        check_categorical_widths(ds, locate)
        return ds
    labels = np.asarray([str(v) for v in y])
    _, counts = np.unique(labels, return_counts=True)
    if len(labels) < 4:
        raise DataError(f"{path}: {len(labels)} rows are too few to split into train and test")
    if groups is not None:
        if len(np.unique(groups)) < 2:
            raise locate("data.group", f"group column '{group}' holds a single group: a split "
                                       "by group needs at least two")
        splitter = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
        train, test = next(splitter.split(x, labels, groups))
        ds = make_dataset(features, x[train], labels[train], x[test], labels[test], str(path))
        ds = replace(ds, groups_train=groups[train], group_name=group)
        check_categorical_widths(ds, locate)
        return ds
    stratify = labels if len(counts) > 1 and counts.min() >= 2 else None
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            x, labels, test_size=test_fraction, random_state=seed, stratify=stratify)
    except ValueError as exc:
        raise locate("data.test_fraction", f"cannot split {len(labels)} rows of {path} with "
                                           f"test_fraction {test_fraction:g}: {exc}") from None
    ds = make_dataset(features, x_train, y_train, x_test, y_test, str(path))
    check_categorical_widths(ds, locate)
    return ds
