"""The data layout shared by the generated XDP program and the snapshot encoder.

Every pipeline field is one ``__u64`` slot of a per-CPU scratch array (``env->v[i]``), addressed
by index: no user or pipeline name ever becomes a C identifier (names only reach comments through
``safe_comment``). The program text depends on the pipeline's *shape* only, so a newer compile of
the same shape can be pushed into the maps.

All tables share two maps (a program may use at most 64 maps): ``hmn_tables`` holds every
table's entries as rows of ``row_words`` u64 -- table i, slot s, entry j at
``base_i + s * capacity_i + j`` -- and ``hmn_defaults`` holds per table and slot (index
``2 * i + s``) a row ``count, default params...``.

Entry encoding (little-endian ``u64``, zero-padded to the row): per key ``(mask, lo, hi)`` -- a
key ``x`` matches when ``lo <= (x & mask) <= hi`` (exact: full mask, lo = hi = v; ternary:
lo = hi = v & m; range: full mask) -- then the parameters.

Capacity rule: ``capacity_i = max(16, next power of two >= the compiled entry count)`` per slot;
a pushed snapshot may have up to that many entries per table.
"""

from __future__ import annotations

from dataclasses import dataclass

from homunculus.ir.pipeline import Exact, Field, Match, Pipeline, Range, Table, Ternary

MIN_CAPACITY = 16
MAX_FIELD_BITS = 64
VERDICT_ROLES = ("port", "drop", "mark", "dscp")


def table_capacity(n_entries: int) -> int:
    """Entries one slot of a table's map can hold: a power of two, at least ``MIN_CAPACITY``."""
    return max(MIN_CAPACITY, 1 << max(n_entries - 1, 0).bit_length())


def mask_of(width: int) -> int:
    return (1 << width) - 1


@dataclass(frozen=True)
class TableLayout:
    index: int
    name: str  # the pipeline's table name (snapshot key; only in comments in C)
    keys: tuple[int, ...]  # env indices
    key_widths: tuple[int, ...]
    outputs: tuple[int, ...]
    output_widths: tuple[int, ...]
    capacity: int
    base: int  # first row of this table in hmn_tables

    @property
    def entry_words(self) -> int:
        return 3 * len(self.keys) + len(self.outputs)

    @property
    def meta_words(self) -> int:
        return 1 + len(self.outputs)


@dataclass(frozen=True)
class ScoreLayout:
    outputs: tuple[int, ...]
    widths: tuple[int, ...]
    terms: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Layout:
    fields: tuple[Field, ...]
    features: tuple[int, ...]  # env index of each pipeline feature
    tables: tuple[TableLayout, ...]
    score: ScoreLayout | None
    argmax_scores: tuple[int, ...]
    argmax_output: int | None
    class_index: int
    verdict: dict[str, int | None]  # role -> env index of verdict_<role>
    n_classes: int

    @property
    def row_words(self) -> int:
        return max([1, *(t.entry_words for t in self.tables)])

    @property
    def meta_words(self) -> int:
        return max([1, *(t.meta_words for t in self.tables)])

    @property
    def total_rows(self) -> int:
        return max(1, sum(2 * t.capacity for t in self.tables))

    @property
    def n_fields(self) -> int:
        return len(self.fields)

    def signature(self) -> dict[str, object]:
        """What a snapshot must agree with to be pushed into a program built from this layout."""
        return {
            "tables": [{"name": t.name, "keys": list(t.key_widths),
                        "outputs": list(t.output_widths), "capacity": t.capacity,
                        "base": t.base}
                       for t in self.tables],
            "row_words": self.row_words,
            "meta_words": self.meta_words,
            "scores": list(self.score.widths) if self.score else [],
        }


def _collect_fields(pipeline: Pipeline) -> tuple[Field, ...]:
    """Every field once, features first, in pipeline order (conflicting widths are an error)."""
    order: list[Field] = [f.field for f in pipeline.features]
    for table in (*pipeline.encoders, *pipeline.lookups):
        order += [*table.keys, *table.outputs]
    if pipeline.score_sum is not None:
        for out, terms in zip(pipeline.score_sum.outputs, pipeline.score_sum.terms, strict=True):
            order += [*terms, out]
    if pipeline.argmax is not None:
        order += [*pipeline.argmax.scores, pipeline.argmax.output]
    winner = pipeline.notes.get("winner")
    if pipeline.mlp is not None and isinstance(winner, Field):
        order.append(winner)
    order.append(pipeline.class_field)
    order += [*pipeline.verdict.keys, *pipeline.verdict.outputs]
    seen: dict[str, Field] = {}
    for f in order:
        if not 1 <= f.width <= MAX_FIELD_BITS:
            raise ValueError(f"field of width {f.width}: the XDP target supports 1..64 bits")
        held = seen.setdefault(f.name, f)
        if held.width != f.width:
            raise ValueError(f"a field is used with widths {held.width} and {f.width}")
    return tuple(seen.values())


def _table_layout(i: int, table: Table, index: dict[str, int], base: int) -> TableLayout:
    return TableLayout(i, table.name, tuple(index[k.name] for k in table.keys),
                       tuple(k.width for k in table.keys),
                       tuple(index[o.name] for o in table.outputs),
                       tuple(o.width for o in table.outputs), table_capacity(len(table.entries)),
                       base)


def layout_of(pipeline: Pipeline) -> Layout:
    """The env slots and map geometry of ``pipeline``."""
    if (pipeline.score_sum is None) != (pipeline.argmax is None):
        raise ValueError("score_sum and argmax must be both present or both absent")
    fields = _collect_fields(pipeline)
    index = {f.name: i for i, f in enumerate(fields)}
    names = [t.name for t in pipeline.tables()]
    if len(set(names)) != len(names):
        raise ValueError("two tables share a name")
    tables: list[TableLayout] = []
    base = 0
    for i, t in enumerate(pipeline.tables()):
        tables.append(_table_layout(i, t, index, base))
        base += 2 * tables[-1].capacity
    score = None
    if pipeline.score_sum is not None:
        ss = pipeline.score_sum
        if not len(ss.outputs) == len(ss.terms) == len(ss.bias):
            raise ValueError("score_sum: outputs, terms and bias differ in length")
        score = ScoreLayout(tuple(index[o.name] for o in ss.outputs),
                            tuple(o.width for o in ss.outputs),
                            tuple(tuple(index[t.name] for t in ts) for ts in ss.terms))
    argmax = pipeline.argmax
    by_name = {o.name: index[o.name] for o in pipeline.verdict.outputs}
    return Layout(
        fields=fields,
        features=tuple(index[f.field.name] for f in pipeline.features),
        tables=tuple(tables),
        score=score,
        argmax_scores=tuple(index[s.name] for s in argmax.scores) if argmax else (),
        argmax_output=index[argmax.output.name] if argmax else None,
        class_index=index[pipeline.class_field.name],
        verdict={role: by_name.get(f"verdict_{role}") for role in VERDICT_ROLES},
        n_classes=len(pipeline.class_labels),
    )


def match_words(match: Match, width: int) -> tuple[int, int, int]:
    """``(mask, lo, hi)`` of one key match (see the module docstring)."""
    full = mask_of(width)
    if isinstance(match, Exact):
        return full, match.value, match.value
    if isinstance(match, Ternary):
        return match.mask & full, match.value & match.mask & full, match.value & match.mask & full
    if isinstance(match, Range):
        return full, match.lo, match.hi
    raise TypeError(f"unknown match {match!r}")
