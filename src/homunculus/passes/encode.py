"""Match encoding passes: range -> ternary prefixes, and default-entry elision.

Both keep the first-match semantics of a table exactly; both rely on the lowering invariant that
every table is a partition of its key space (entries disjoint, every key matched by one entry).
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace

from homunculus.ir.pipeline import Entry, MatchKind, Pipeline, Range, Table, Ternary


def range_to_prefixes(lo: int, hi: int, width: int) -> list[Ternary]:
    """The minimal set of ternary prefixes covering exactly ``lo..hi`` of a ``width``-bit key."""
    full = (1 << width) - 1
    out: list[Ternary] = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << width
        while size > hi - lo + 1:
            size >>= 1
        out.append(Ternary(lo, full & ~(size - 1)))
        lo += size
    return out


def expand_ranges(table: Table) -> Table:
    """Rewrite every range key of ``table`` as ternary, one entry per prefix combination."""
    if MatchKind.RANGE not in table.kinds:
        return table
    entries: list[Entry] = []
    for entry in table.entries:
        options = [
            range_to_prefixes(m.lo, m.hi, key.width) if isinstance(m, Range) else [m]
            for m, key in zip(entry.matches, table.keys, strict=True)
        ]
        entries.extend(Entry(tuple(combo), entry.params) for combo in itertools.product(*options))
    kinds = tuple(MatchKind.TERNARY if k is MatchKind.RANGE else k for k in table.kinds)
    return replace(table, kinds=kinds, entries=tuple(entries))


def elide_default(table: Table) -> Table:
    """Drop the largest group of entries sharing one action and make it the default."""
    if not table.entries:
        return table
    counts = Counter(e.params for e in table.entries)
    params, _ = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
    kept = tuple(e for e in table.entries if e.params != params)
    return replace(table, entries=kept, default=params)


def map_tables(pipeline: Pipeline, fn, verdict: bool = True) -> Pipeline:  # noqa: ANN001
    """``fn`` (Table -> Table) applied to the encoders, lookups and, if asked, the verdict."""
    return replace(
        pipeline,
        encoders=tuple(fn(t) for t in pipeline.encoders),
        lookups=tuple(fn(t) for t in pipeline.lookups),
        verdict=fn(pipeline.verdict) if verdict else pipeline.verdict,
    )


def encode_for_target(pipeline: Pipeline, supports_range: bool) -> Pipeline:
    """Expand ranges where the target lacks range matching, then elide default entries.

    The verdict table keeps every entry and its own default (what an unmatched winner does), so
    its default never stands in for one class's action.

    Runs once: default elision assumes partition tables, so a second pass would be wrong; an
    already encoded pipeline is returned unchanged.
    """
    if pipeline.notes.get("encoded"):
        return pipeline
    if not supports_range:
        pipeline = map_tables(pipeline, expand_ranges)
    pipeline = map_tables(pipeline, elide_default, verdict=False)
    return replace(pipeline, notes={**pipeline.notes, "encoded": True})
