"""Table merging: fuse two score tables into one keyed on both tables' keys.

Both inputs are partitions of their key spaces, so their cross product (pairwise intersection of
matches, score vectors added) is a partition of the joint key space computing the same sum. It
trades entries (the product) for logical tables and, when everything fuses into one table, for the
whole adder tree and arg-max (the table then writes the winner directly).
"""

from __future__ import annotations

import heapq

import numpy as np

from homunculus.ir.pipeline import Exact, Field, Match, MatchKind, Range, Ternary
from homunculus.passes.score_table import ScoreTable

MAX_MERGED_ENTRIES = 4096


def wildcard(kind: MatchKind, key: Field) -> Match:
    if kind is MatchKind.RANGE:
        return Range(0, key.max_value)
    if kind is MatchKind.TERNARY:
        return Ternary(0, 0)
    raise ValueError(f"an exact key ({key.name}) cannot be wildcarded")


def intersect(a: Match, b: Match) -> Match | None:
    """The match satisfied exactly when both are; None when no key satisfies both."""
    if isinstance(a, Ternary) and isinstance(b, Ternary):
        if (a.value ^ b.value) & a.mask & b.mask:
            return None
        return Ternary((a.value & a.mask) | (b.value & b.mask), a.mask | b.mask)
    if isinstance(a, Range) and isinstance(b, Range):
        lo, hi = max(a.lo, b.lo), min(a.hi, b.hi)
        return Range(lo, hi) if lo <= hi else None
    if isinstance(a, Exact) and isinstance(b, Exact):
        return a if a.value == b.value else None
    raise ValueError(f"cannot intersect {type(a).__name__} with {type(b).__name__}")


def merge_pair(a: ScoreTable, b: ScoreTable, name: str) -> ScoreTable:
    keys = list(a.keys) + [k for k in b.keys if k not in a.keys]
    kinds_of = dict(zip(a.keys, a.kinds, strict=True)) | dict(zip(b.keys, b.kinds, strict=True))
    for k in set(a.keys) & set(b.keys):
        if a.kinds[a.keys.index(k)] != b.kinds[b.keys.index(k)]:
            raise ValueError(f"key {k.name} has different match kinds in {a.name} and {b.name}")
    kinds = tuple(kinds_of[k] for k in keys)
    matches: list[tuple[Match, ...]] = []
    scores: list[np.ndarray] = []
    for ma, sa in zip(a.matches, a.scores, strict=True):
        da = dict(zip(a.keys, ma, strict=True))
        for mb, sb in zip(b.matches, b.scores, strict=True):
            db = dict(zip(b.keys, mb, strict=True))
            row = []
            for key, kind in zip(keys, kinds, strict=True):
                m = intersect(da.get(key, wildcard(kind, key)), db.get(key, wildcard(kind, key)))
                if m is None:
                    break
                row.append(m)
            else:
                matches.append(tuple(row))
                scores.append(sa + sb)
    width = a.scores.shape[1]
    return ScoreTable(name, tuple(keys), kinds, matches,
                      np.asarray(scores, dtype=np.int64).reshape(-1, width))


def merge_tables(tables: list[ScoreTable], max_tables: int,
                 max_entries: int = MAX_MERGED_ENTRIES) -> list[ScoreTable]:
    """Greedily fuse the pair with the fewest product entries until at most ``max_tables`` remain
    (or no pair fits ``max_entries``).

    Tables are partitions, never empty, so the pair with the smallest product is the two
    smallest tables: a heap keyed by (entries, age) finds it in O(log n), O(n log n) over the
    pass besides the merges themselves. Ties go to the older tables; a merged table is younger
    than every other (it takes the place at the end of the list).
    """
    alive: dict[int, ScoreTable] = dict(enumerate(tables))  # age -> table
    heap = [(len(t.matches), age) for age, t in alive.items()]
    heapq.heapify(heap)
    age = len(tables)
    while len(alive) > max(max_tables, 1):
        (sa, a), (sb, b) = heapq.heappop(heap), heapq.heappop(heap)
        if sa * sb > max_entries:
            break
        first, second = alive.pop(min(a, b)), alive.pop(max(a, b))
        merged = merge_pair(first, second, f"{first.name}_{second.name}"[:48])
        alive[age] = merged
        heapq.heappush(heap, (len(merged.matches), age))
        age += 1
    return [alive[k] for k in sorted(alive)]
