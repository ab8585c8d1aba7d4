"""Lower a quantised model to the integer table pipeline.

Trees: each feature's thresholds become a *thermometer code* (bit i set iff x > t_i), computed by
one range table per feature; every leaf of a tree is then exactly one ternary entry over the codes
of the features that tree tests (linear in leaves, never a cross product). Lookup-and-sum models:
one range table per feature whose bins hold the score contributions. Both then share the score
stage: per-table class columns are offset to start at 0 (the offsets move into the bias, which
leaves the arg-max unchanged), constant columns vanish, and the sums and arg-max follow. With a
single table left the arg-max is precomputed per entry and the table writes the winner directly.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from homunculus.data.dataset import FeatureDecl
from homunculus.ir.names import unique_identifiers
from homunculus.ir.pipeline import (
    VERDICT_FIELDS,
    Argmax,
    Entry,
    Exact,
    FeatureInput,
    Field,
    MatchKind,
    Pipeline,
    Range,
    ScoreSum,
    Table,
    TableRole,
    Ternary,
    VerdictPlan,
    bits_for,
)
from homunculus.ir.quantised import QLookupSum, QTree, QTreeEnsemble, QuantisedModel
from homunculus.passes.merge import merge_tables
from homunculus.passes.score_table import ScoreTable


class TreeCodes(StrEnum):
    """How trees share thermometer codes. ``SHARED``: one code per feature over every tree's
    thresholds (the fewest code bits). ``PER_TREE``: each tree its own code per feature, over its
    own thresholds, all written by the feature's one encoder: more code bits, but each tree's key
    is only as wide as its own thresholds, so several trees fit one stage's match crossbar (on
    Tofino a shared code of a few hundred bits takes a stage per tree)."""

    SHARED = "shared"
    PER_TREE = "per_tree"


def feature_inputs(features: tuple[FeatureDecl, ...]) -> tuple[FeatureInput, ...]:
    idents = unique_identifiers([f.name for f in features], "f")
    return tuple(FeatureInput(f.name, Field(i, f.width), f.field, flow=f.kind is not None)
                 for f, i in zip(features, idents, strict=True))


def lower(model: QuantisedModel, features: tuple[FeatureDecl, ...], class_labels: tuple[str, ...],
          verdict: VerdictPlan, winner_to_class: tuple[int, ...] | None = None,
          max_lookup_tables: int | None = None,
          tree_codes: TreeCodes = TreeCodes.SHARED) -> Pipeline:
    """Lower ``model`` to a Pipeline whose tables are partitions (disjoint and exhaustive).

    With ``max_lookup_tables``, score tables are merged (passes.merge) until that many remain.
    ``tree_codes`` says how an ensemble's trees share thermometer codes (:class:`TreeCodes`).
    """
    inputs = feature_inputs(features)
    if isinstance(model, QTreeEnsemble):
        encoders, score_tables, bias = lower_trees(model, inputs, tree_codes)
    else:
        encoders, score_tables, bias = [], *lower_lookup_sum(model, inputs)
    if max_lookup_tables is not None:
        score_tables = merge_tables(score_tables, max_lookup_tables)
    n_winners = len(bias)
    winner = Field("winner", bits_for(max(n_winners - 1, 1)))
    lookups, score_sum, argmax = score_stage(score_tables, np.asarray(bias), winner)
    class_field = Field("class_id", bits_for(max(len(class_labels) - 1, 1)))
    verdict_table = build_verdict_table(winner, class_field, n_winners, winner_to_class, verdict)
    return Pipeline(
        features=inputs, encoders=tuple(encoders), lookups=tuple(lookups), score_sum=score_sum,
        argmax=argmax, class_field=class_field, verdict=verdict_table, verdict_kind=verdict.kind,
        class_labels=class_labels, notes={"winner": winner}, default_port=verdict.default_port,
    )


# ----------------------------------------------------------------------------- trees


def _live_thresholds(trees: tuple[QTree, ...],
                     inputs: tuple[FeatureInput, ...]) -> dict[int, list[int]]:
    """Per feature, the sorted thresholds of ``trees`` that can go either way for some input."""
    out: dict[int, set[int]] = {}
    for tree in trees:
        for f, t in zip(tree.feature, tree.threshold, strict=True):
            if f >= 0 and 0 <= t < inputs[f].field.max_value:
                out.setdefault(f, set()).add(t)
    return {f: sorted(ts) for f, ts in sorted(out.items())}


CODE_CHUNK_BITS = 32


def code_chunks(feature: Field, n_thresholds: int, group: str = "") -> tuple[Field, ...]:
    """The thermometer code of a feature (of one tree's ``group``, e.g. ``_t3``, when codes are
    per tree), split into fields of at most CODE_CHUNK_BITS bits."""
    stem = "c" + feature.name[1:] + group
    n = -(-n_thresholds // CODE_CHUNK_BITS)
    return tuple(Field(f"{stem}_{i}" if n > 1 else stem,
                       min(CODE_CHUNK_BITS, n_thresholds - i * CODE_CHUNK_BITS)) for i in range(n))


def codes_within(pipeline: Pipeline, compiled: Pipeline) -> bool:
    """Whether every code field ``pipeline``'s encoders write is one ``compiled``'s write (so a
    retrained model can take the compiled program's code layout, shared or per tree)."""
    have = {o.name for e in compiled.encoders for o in e.outputs}
    return all(o.name in have for e in pipeline.encoders for o in e.outputs)


def lower_like(compiled: Pipeline, model: QuantisedModel, features: tuple[FeatureDecl, ...],
               class_labels: tuple[str, ...], verdict: VerdictPlan,
               winner_to_class: tuple[int, ...] | None = None) -> Pipeline:
    """``model`` (a retrained one) lowered with the thermometer-code layout of the ``compiled``
    program: shared codes, or a code per tree when those are the compiled program's fields."""
    shared = lower(model, features, class_labels, verdict, winner_to_class)
    if codes_within(shared, compiled) or not (
            isinstance(model, QTreeEnsemble) and len(model.trees) > 1):
        return shared
    per_tree = lower(model, features, class_labels, verdict, winner_to_class,
                     tree_codes=TreeCodes.PER_TREE)
    return per_tree if codes_within(per_tree, compiled) else shared


def split_code(value: int, chunks: tuple[Field, ...]) -> tuple[int, ...]:
    if len(chunks) == 1:  # (the common case, on every leaf and encoder entry)
        return (value & ((1 << chunks[0].width) - 1),)
    return tuple((value >> (i * CODE_CHUNK_BITS)) & ((1 << c.width) - 1)
                 for i, c in enumerate(chunks))


@dataclass(frozen=True)
class CodeGroup:
    """Trees that test one thermometer code per feature: its thresholds and code fields."""

    trees: tuple[int, ...]
    thresholds: dict[int, list[int]]
    codes: dict[int, tuple[Field, ...]]


def code_groups(model: QTreeEnsemble, inputs: tuple[FeatureInput, ...],
                tree_codes: TreeCodes) -> list[CodeGroup]:
    """The trees grouped by the codes they test: one group, or one per tree."""
    if tree_codes is TreeCodes.SHARED or len(model.trees) < 2:
        members = [tuple(range(len(model.trees)))]
    else:
        members = [(i,) for i in range(len(model.trees))]
    groups = []
    for trees in members:
        thresholds = _live_thresholds(tuple(model.trees[i] for i in trees), inputs)
        suffix = "" if len(members) == 1 else f"__t{trees[0]}"
        codes = {f: code_chunks(inputs[f].field, len(ts), suffix) for f, ts in thresholds.items()}
        groups.append(CodeGroup(trees, thresholds, codes))
    names = [c.name for g in groups for cs in g.codes.values() for c in cs]
    if len(groups) > 1 and len(set(names)) < len(names):  # odd feature names: share instead
        return code_groups(model, inputs, TreeCodes.SHARED)
    return groups


def lower_trees(model: QTreeEnsemble, inputs: tuple[FeatureInput, ...],
                tree_codes: TreeCodes = TreeCodes.SHARED
                ) -> tuple[list[Table], list[ScoreTable], list[int]]:
    groups = code_groups(model, inputs, tree_codes)
    features = sorted({f for g in groups for f in g.thresholds})
    encoders = [thermometer_encoder(inputs[f].field,
                                    tuple(c for g in groups for c in g.codes.get(f, ())),
                                    [g.thresholds.get(f, []) for g in groups])
                for f in features]
    bias = np.asarray(model.bias, dtype=np.int64)
    max_values = tuple(i.field.max_value for i in inputs)
    tables: list[ScoreTable] = []
    for g in groups:
        for i in g.trees:
            table = tree_leaf_table(f"tree{i}", model.trees[i], g.thresholds, g.codes, max_values)
            if table.keys:
                tables.append(table)
            else:  # a tree without live splits always lands in the same leaf
                bias = bias + table.scores[0]
    tables.sort(key=lambda t: int(t.name[4:]))
    return encoders, tables, bias.tolist()


def thermometer_encoder(feature: Field, codes: tuple[Field, ...],
                        thresholds: list[int] | list[list[int]]) -> Table:
    """Range table over the intervals between ``thresholds``: an interval above j thresholds of
    a code gets that code with its j low bits set. ``thresholds`` is one code's sorted list, or
    one list per code written (their chunks in ``codes``, in that order)."""
    per_code = thresholds if thresholds and isinstance(thresholds[0], list) else [thresholds]
    widths = [len(ts) for ts in per_code]  # type: ignore[arg-type]
    chunk_sets, at = [], 0
    for w in widths:
        n = -(-w // CODE_CHUNK_BITS)
        chunk_sets.append(codes[at:at + n])
        at += n
    cuts = sorted({t for ts in per_code for t in ts})  # type: ignore[union-attr]
    bounds = [-1, *cuts, feature.max_value]
    entries = []
    for j in range(len(bounds) - 1):
        params: tuple[int, ...] = ()
        for ts, chunks in zip(per_code, chunk_sets, strict=True):
            below = bisect_right(ts, bounds[j])  # type: ignore[type-var]
            params += split_code((1 << below) - 1, chunks)
        entries.append(Entry((Range(bounds[j] + 1, bounds[j + 1]),), params))
    return Table(name="enc" + feature.name[1:], role=TableRole.ENCODER, keys=(feature,),
                 kinds=(MatchKind.RANGE,), outputs=codes, entries=tuple(entries),
                 default=(0,) * len(codes))


def _leaf_pattern(conds: list[tuple[int, int, bool]], thresholds: dict[int, list[int]],
                  max_values: tuple[int, ...]) -> dict[int, tuple[int, int]] | None:
    """Ternary (value, mask) per feature code for one leaf path; None if it is unreachable.

    The path confines feature f to ``low < x <= high``; on a thermometer code (thresholds
    ascending) that is: every bit whose threshold is <= low is set, every bit whose threshold
    is >= high is clear: two bisections, not a pass over the thresholds.
    """
    lo: dict[int, int] = {}
    hi: dict[int, int] = {}
    for f, t, went_left in conds:
        if went_left:
            hi[f] = min(hi.get(f, max_values[f]), t)
        else:
            lo[f] = max(lo.get(f, -1), t)
    pattern: dict[int, tuple[int, int]] = {}
    for f in set(lo) | set(hi):
        low, high = lo.get(f, -1), hi.get(f, max_values[f])
        if low >= high:
            return None  # no integer x with low < x <= high
        ts = thresholds.get(f, [])  # ascending: bits [0, set) are <= low, [clear, n) >= high
        set_bits, clear_from = bisect_right(ts, low), bisect_left(ts, high)
        value = (1 << set_bits) - 1
        pattern[f] = (value, value | (((1 << len(ts)) - 1) & ~((1 << clear_from) - 1)))
    return pattern


def tree_leaf_table(name: str, tree: QTree, thresholds: dict[int, list[int]],
                    codes: dict[int, tuple[Field, ...]], max_values: tuple[int, ...]) -> ScoreTable:
    """One ternary entry per reachable leaf over the code chunks the tree tests."""
    rows: list[tuple[dict[tuple[int, int], tuple[int, int]], tuple[int, ...]]] = []
    for leaf, conds in sorted(tree.paths().items()):
        pattern = _leaf_pattern(conds, thresholds, max_values)
        if pattern is None:
            continue
        chunked = {}
        for f, (value, mask) in pattern.items():
            for c, (v, m) in enumerate(zip(split_code(value, codes[f]), split_code(mask, codes[f]),
                                           strict=True)):
                if m:
                    chunked[(f, c)] = (v, m)
        rows.append((chunked, tree.leaf_scores[leaf]))
    used = sorted({key for chunked, _ in rows for key in chunked})
    matches = [tuple(Ternary(*chunked.get(key, (0, 0))) for key in used) for chunked, _ in rows]
    return ScoreTable(name, tuple(codes[f][c] for f, c in used), (MatchKind.TERNARY,) * len(used),
                      matches, np.asarray([s for _, s in rows], dtype=np.int64))


# ----------------------------------------------------------------------------- lookup-and-sum


def lower_lookup_sum(model: QLookupSum, inputs: tuple[FeatureInput, ...]
                     ) -> tuple[list[ScoreTable], list[int]]:
    tables = []
    for fb in model.bins:
        feature = inputs[fb.feature].field
        lows = [0, *[e + 1 for e in fb.upper_edges[:-1]]]
        matches = [(Range(lo, hi),) for lo, hi in zip(lows, fb.upper_edges, strict=True)]
        tables.append(ScoreTable("lut" + feature.name[1:], (feature,), (MatchKind.RANGE,),
                                 matches, np.asarray(fb.scores, dtype=np.int64)))
    return tables, list(model.bias)


# ----------------------------------------------------------------------------- scores


def score_stage(tables: list[ScoreTable], bias: np.ndarray, winner: Field
                ) -> tuple[list[Table], ScoreSum | None, Argmax | None]:
    """Offset and prune score columns, then either fold the arg-max or build sum + arg-max."""
    bias = bias.astype(np.int64).copy()
    kept: list[tuple[ScoreTable, np.ndarray, list[int]]] = []
    for t in tables:
        mins = t.scores.min(axis=0)
        bias += mins
        shifted = t.scores - mins
        columns = [c for c in range(shifted.shape[1]) if shifted[:, c].any()]
        if columns:
            kept.append((t, shifted, columns))
    bias -= bias.min()
    if len(kept) <= 1:
        return [fold_argmax(kept[0] if kept else None, bias, winner)], None, None
    lookups: list[Table] = []
    terms: list[list[Field]] = [[] for _ in range(len(bias))]
    totals = bias.copy()
    for t, shifted, columns in kept:
        outputs = tuple(Field(f"{t.name}_s{c}", bits_for(int(shifted[:, c].max())))
                        for c in columns)
        for c, out in zip(columns, outputs, strict=True):
            terms[c].append(out)
            totals[c] += int(shifted[:, c].max())
        entries = tuple(Entry(m, tuple(int(shifted[i, c]) for c in columns))
                        for i, m in enumerate(t.matches))
        lookups.append(Table(t.name, TableRole.LOOKUP, t.keys, t.kinds, outputs, entries,
                             default=(0,) * len(columns)))
    scores = tuple(Field(f"score{c}", bits_for(int(totals[c]))) for c in range(len(bias)))
    score_sum = ScoreSum(scores, tuple(tuple(ts) for ts in terms), tuple(int(b) for b in bias))
    return lookups, score_sum, Argmax(scores, winner)


def fold_argmax(table: tuple[ScoreTable, np.ndarray, list[int]] | None, bias: np.ndarray,
                winner: Field) -> Table:
    """One table left: each entry writes its precomputed winner (a keyless table if none)."""
    if table is None:
        return Table("decide", TableRole.LOOKUP, (), (), (winner,), (),
                     default=(int(np.argmax(bias)),))
    t, shifted, _ = table
    winners = np.argmax(bias[None, :] + shifted, axis=1)
    entries = tuple(Entry(m, (int(w),)) for m, w in zip(t.matches, winners, strict=True))
    return Table(t.name, TableRole.LOOKUP, t.keys, t.kinds, (winner,), entries, default=(0,))


def build_verdict_table(winner: Field, class_field: Field, n_winners: int,
                        winner_to_class: tuple[int, ...] | None, verdict: VerdictPlan) -> Table:
    """Exact table winner -> (class, port, drop, mark, dscp)."""
    entries = []
    for w in range(n_winners):
        cls = winner_to_class[w] if winner_to_class is not None else w
        entries.append(Entry((Exact(w),), (cls, *verdict.params(cls))))
    default = (0, verdict.default_port, 0, 0, 0)
    return Table("verdict", TableRole.VERDICT, (winner,), (MatchKind.EXACT,),
                 (class_field, *VERDICT_FIELDS), tuple(entries), default)
