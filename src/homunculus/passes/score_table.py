"""Score tables: lookup tables whose entries carry score vectors, before fields are assigned."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from homunculus.ir.pipeline import Field, Match, MatchKind


@dataclass
class ScoreTable:
    """A table whose entries carry a score vector (before fields are assigned)."""

    name: str
    keys: tuple[Field, ...]
    kinds: tuple[MatchKind, ...]
    matches: list[tuple[Match, ...]]
    scores: np.ndarray  # [n_entries, n_scores] int64
