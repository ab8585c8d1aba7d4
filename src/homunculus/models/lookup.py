"""Shared construction of lookup-and-sum models: binned per-feature score tables plus a bias."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from homunculus.ir.quantised import FeatureBins, QLookupSum, ScoreQuantiser, int_rows
from homunculus.models.binning import Binning


def build_lookup_sum(binnings: list[Binning], contributions: list[np.ndarray],
                     bias: np.ndarray, score_bits: int, clip: float | None = None) -> QLookupSum:
    """Quantise per-feature ``[n_bins, n_scores]`` float tables and a bias into a QLookupSum.

    ``clip`` bounds how far below a table's maximum a value may fall (log-likelihoods of far-off
    bins would otherwise eat the integer range). Adjacent bins whose integer vectors are equal are
    merged and features whose table is constant fold into the bias: both preserve the semantics.
    """
    tables = [np.maximum(c, c.max() - clip) if clip is not None else c for c in contributions]
    spreads = [float(np.ptp(t)) for t in tables] + [float(np.ptp(bias))]
    quant = ScoreQuantiser.for_terms(spreads, score_bits)
    int_bias = quant(bias)
    bins: list[FeatureBins] = []
    for feature, (binning, table) in enumerate(zip(binnings, tables, strict=True)):
        rows = quant(table)
        if (rows == rows[0]).all():
            int_bias = int_bias + rows[0]
            continue
        edges, kept = _merge_equal_neighbours(binning.upper_edges, rows)
        bins.append(FeatureBins(feature, tuple(edges.tolist()), int_rows(kept)))
    return QLookupSum(bins=tuple(bins), bias=tuple(int(v) for v in int_bias))


def _merge_equal_neighbours(edges: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of adjacent bins with equal score vectors as one bin: the run's first vector, up to
    its last edge."""
    starts = np.concatenate([[True], (rows[1:] != rows[:-1]).any(axis=1)])
    ends = np.append(starts[1:], True)
    return np.asarray(edges, dtype=np.int64)[ends], rows[starts]


def representatives_scaled(binnings: list[Binning], mean: np.ndarray,
                           scale: np.ndarray) -> list[np.ndarray]:
    """Each bin's representative value, standardised like the float model's inputs."""
    return [(b.representatives - mean[j]) / scale[j] for j, b in enumerate(binnings)]


@dataclass
class BinnedClassifier:
    """A float model that sees features through the same binning as its integer twin."""

    binnings: list[Binning]
    model: Any

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.stack([b.index(x[:, j]) for j, b in enumerate(self.binnings)], axis=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(self.transform(np.asarray(x, dtype=np.int64)))


@dataclass
class MappedClassifier:
    """A float model whose raw outputs (e.g. cluster ids) are mapped to classes."""

    model: Any
    mapping: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.mapping[self.model.predict(np.asarray(x, dtype=np.float64))]
