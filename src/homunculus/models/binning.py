"""Per-feature binning for lookup-and-sum models: integer intervals with representative values."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Binning:
    """Inclusive upper edges (the last is the width's maximum) and one representative per bin."""

    upper_edges: np.ndarray
    representatives: np.ndarray

    def index(self, values: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.upper_edges, values, side="left")

    @property
    def n_bins(self) -> int:
        return len(self.upper_edges)


def fit_binning(values: np.ndarray, width: int, n_bins: int) -> Binning:
    """Bins at distinct values when few, else at quantiles; representatives are bin medians.
    One sort gives the distinct values, the quantiles (numpy's ``method="lower"``: the value at
    index floor((n - 1) q)) and the medians."""
    top = (1 << width) - 1
    ordered = np.sort(values)
    first = np.ones(len(ordered), dtype=bool)
    first[1:] = ordered[1:] != ordered[:-1]
    distinct = ordered[first]
    if len(distinct) <= n_bins:
        cuts = (distinct[:-1] + distinct[1:]) // 2
    else:
        at = np.floor((len(ordered) - 1) * np.linspace(0, 1, n_bins + 1)[1:-1]).astype(np.intp)
        cuts = np.unique(ordered[at].astype(np.int64))
    edges = np.unique(np.concatenate([cuts[(cuts >= 0) & (cuts < top)], [top]])).astype(np.int64)
    lows = np.concatenate([[0], edges[:-1] + 1])
    reps = bin_medians(ordered, edges)
    empty = np.isnan(reps)
    reps[empty] = (lows[empty] + edges[empty]) / 2.0
    return Binning(edges, reps)


def bin_medians(ordered: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The median of the sorted values ``ordered`` in each bin of the sorted inclusive upper
    ``edges`` (NaN for an empty bin), as ``np.median`` of each bin's values computes it: the
    middle value, or the mean of the two middle ones."""
    counts = np.bincount(np.searchsorted(edges, ordered, side="left"), minlength=len(edges))
    starts = np.cumsum(counts) - counts
    if ordered.dtype.kind not in "iu":  # np.median's float arithmetic stays in the input dtype
        return np.array([np.median(ordered[a:a + c]) if c else np.nan
                         for a, c in zip(starts, counts, strict=True)], dtype=np.float64)
    if not len(ordered):
        return np.full(len(edges), np.nan)
    last = len(ordered) - 1
    low = ordered[np.minimum(starts + (counts - 1) // 2, last)].astype(np.float64)
    high = ordered[np.minimum(starts + counts // 2, last)].astype(np.float64)
    return np.where(counts > 0, (low + high) / 2, np.nan)


def fit_binnings(x: np.ndarray, widths: tuple[int, ...], n_bins: int) -> list[Binning]:
    return [fit_binning(x[:, j], widths[j], n_bins) for j in range(x.shape[1])]
