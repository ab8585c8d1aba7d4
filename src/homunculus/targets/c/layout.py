"""The C target's view of a pipeline: field slots and normalised tables, shared by the code
generator and the resource model.

Every pipeline field lives in one ``uint64_t`` slot of a local array (identifiers come from slot
numbers, never from names). Table constants are normalised against the largest value their key can
hold at run time, so that an entry which could never match is dropped (first-match order among the
others is kept) and every stored constant fits the table's smallest unsigned element type.
"""

from __future__ import annotations

from dataclasses import dataclass

from homunculus.ir.dense import ACTIVATIONS, QMLP, check_ranges
from homunculus.ir.pipeline import (
    Entry,
    Exact,
    Field,
    Match,
    MatchKind,
    Pipeline,
    Range,
    Table,
    Ternary,
    bits_for,
)

MAX_FIELD_BITS = 64
MAX_FEATURE_BITS = 32  # the ABI passes features as uint32_t
ELEMENT_TYPES = ((8, "uint8_t"), (16, "uint16_t"), (32, "uint32_t"), (64, "uint64_t"))


@dataclass(frozen=True)
class KeyColumn:
    slot: int
    kind: MatchKind  # the representation: exact (value), ternary (value, mask), range (lo, hi)

    @property
    def n_constants(self) -> int:
        return 1 if self.kind is MatchKind.EXACT else 2


@dataclass(frozen=True)
class CTable:
    """A table as C runs it: key columns, output slots, normalised rows, default."""

    source: Table
    keys: tuple[KeyColumn, ...]
    out_slots: tuple[int, ...]
    rows: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]  # (key constants, params)
    default: tuple[int, ...]
    element_bits: int

    @property
    def element_type(self) -> str:
        return dict(ELEMENT_TYPES)[self.element_bits]

    @property
    def entry_bytes(self) -> int:
        members = sum(k.n_constants for k in self.keys) + len(self.out_slots)
        return members * self.element_bits // 8


@dataclass(frozen=True)
class Layout:
    """Slots of every field and the C view of every table."""

    slots: dict[str, int]
    bounds: dict[str, int]  # all-ones bound of the values a slot can hold
    feature_slots: tuple[int, ...]
    encoders_lookups: tuple[CTable, ...]
    verdict: CTable
    winner_slot: int | None  # MLP pipelines: where the arg-max of the scores goes

    @property
    def tables(self) -> tuple[CTable, ...]:
        return (*self.encoders_lookups, self.verdict)


def all_ones(value: int) -> int:
    return (1 << bits_for(value)) - 1


def check_width(f: Field, limit: int, what: str) -> None:
    if not 1 <= f.width <= limit:
        raise ValueError(f"{what} has width {f.width}; the C target supports 1..{limit} bits")


def mask_to(value: int, width: int) -> int:
    return value & ((1 << width) - 1)


def normalise_match(match: Match, bound: int) -> tuple[MatchKind, tuple[int, ...]] | None:
    """``match`` on a key in ``0..bound`` (all ones) as constants; None if it can never match."""
    if isinstance(match, Exact):
        return (MatchKind.EXACT, (match.value,)) if 0 <= match.value <= bound else None
    if isinstance(match, Range):
        lo, hi = max(match.lo, 0), min(match.hi, bound)
        return (MatchKind.RANGE, (lo, hi)) if lo <= hi else None
    if isinstance(match, Ternary):
        target = match.value & match.mask
        if target < 0 or target & ~bound:
            return None
        return MatchKind.TERNARY, (target, match.mask & bound)
    raise TypeError(f"unknown match {match!r}")


def column_kind(kinds: set[MatchKind]) -> MatchKind:
    """One representation per key column; exact values convert to either of the others."""
    kinds = kinds - {MatchKind.EXACT}
    if len(kinds) > 1:
        raise ValueError("a key mixes ternary and range matches; the C target cannot store it")
    return kinds.pop() if kinds else MatchKind.EXACT


def convert(kind: MatchKind, constants: tuple[int, ...], column: MatchKind,
            bound: int) -> tuple[int, ...]:
    if kind is column:
        return constants
    if column is MatchKind.TERNARY:
        return constants[0], bound
    return constants[0], constants[0]  # exact as the range v..v


def table_rows(table: Table, bounds: list[int]
               ) -> tuple[tuple[MatchKind, ...], list[tuple[tuple[int, ...], tuple[int, ...]]]]:
    normalised: list[tuple[list[tuple[MatchKind, tuple[int, ...]]], Entry]] = []
    for entry in table.entries:
        cols = [normalise_match(m, b) for m, b in zip(entry.matches, bounds, strict=True)]
        if all(c is not None for c in cols):
            normalised.append(([c for c in cols if c is not None], entry))
    kinds = tuple(column_kind({cols[i][0] for cols, _ in normalised})
                  for i in range(len(table.keys)))
    widths = [o.width for o in table.outputs]
    rows = []
    for cols, entry in normalised:
        keys = tuple(c for (k, v), kind, b in zip(cols, kinds, bounds, strict=True)
                     for c in convert(k, v, kind, b))
        params = tuple(mask_to(p, w) for p, w in zip(entry.params, widths, strict=True))
        rows.append((keys, params))
    return kinds, rows


def element_bits(values: list[int]) -> int:
    top = max(values, default=0)
    return next(bits for bits, _ in ELEMENT_TYPES if top < (1 << bits))


def build_table(table: Table, slots: dict[str, int], bounds: dict[str, int]) -> CTable:
    for key in table.keys:
        if key.name not in slots:
            raise ValueError(f"table {table.name}: key {key.name} is read before it is written")
    for out in table.outputs:
        check_width(out, MAX_FIELD_BITS, f"output {out.name} of {table.name}")
    if len(table.entries) and any(len(e.params) != len(table.outputs) for e in table.entries):
        raise ValueError(f"table {table.name}: an entry has the wrong number of parameters")
    kinds, rows = table_rows(table, [bounds[k.name] for k in table.keys])
    default = tuple(mask_to(d, o.width) for d, o in zip(table.default, table.outputs, strict=True))
    if not table.keys and rows:  # a keyless table: its first entry always matches
        default, rows = rows[0][1], []
    for out in table.outputs:
        slots.setdefault(out.name, len(slots))
        bounds[out.name] = out.max_value
    values = [v for keys, params in rows for v in (*keys, *params)]
    return CTable(
        source=table,
        keys=tuple(KeyColumn(slots[k.name], kind) for k, kind in zip(table.keys, kinds,
                                                                   strict=True)),
        out_slots=tuple(slots[o.name] for o in table.outputs),
        rows=tuple(rows), default=default, element_bits=element_bits(values),
    )


def check_mlp(mlp: QMLP, n_features: int) -> None:
    """Raise ValueError where the network falls outside the documented integer semantics."""
    if len(mlp.input_shift) != n_features or any(not 0 <= s < 64 for s in mlp.input_shift):
        raise ValueError("the MLP needs one input shift in 0..63 per feature")
    if not mlp.layers:
        raise ValueError("an MLP needs at least one layer")
    check_ranges(mlp)
    n_in = n_features
    for i, layer in enumerate(mlp.layers):
        n_out, width = layer.shape
        if width != n_in or any(len(row) != width for row in layer.weights) or n_out < 1:
            raise ValueError(f"MLP layer {i} has inconsistent shape")
        if len(layer.bias) != n_out or any(not -2**31 <= b < 2**31 for b in layer.bias):
            raise ValueError(f"MLP layer {i}: biases must be int32, one per output")
        if i < len(mlp.layers) - 1:
            check_hidden(layer.multiplier, layer.shift, layer.activation, layer.lut, i)
        n_in = n_out


def check_hidden(multiplier: int, shift: int, activation: str, lut: tuple[int, ...] | None,
                 i: int) -> None:
    if not 0 <= multiplier < 2**31 or not 1 <= shift <= 62:
        raise ValueError(f"MLP layer {i}: multiplier must be in 0..2^31-1 and shift in 1..62")
    if activation not in ACTIVATIONS:
        raise ValueError(f"MLP layer {i}: unknown activation {activation!r}")
    if activation == "lut" and (lut is None or any(not -128 <= v <= 127 for v in lut)):
        raise ValueError(f"MLP layer {i}: the activation table needs 256 int8 values")


def winner_field(pipeline: Pipeline) -> Field:
    """Where an MLP pipeline's arg-max goes (Pipeline.winner_field)."""
    return pipeline.winner_field()


def build_layout(pipeline: Pipeline) -> Layout:
    """Assign slots in evaluation order and normalise every table."""
    slots: dict[str, int] = {}
    bounds: dict[str, int] = {}
    for f in pipeline.features:
        check_width(f.field, MAX_FEATURE_BITS, "a feature")
        slots.setdefault(f.field.name, len(slots))
        bounds[f.field.name] = f.field.max_value
    feature_slots = tuple(slots[f.field.name] for f in pipeline.features)
    tables = tuple(build_table(t, slots, bounds) for t in (*pipeline.encoders, *pipeline.lookups))
    winner_slot = None
    if pipeline.mlp is not None:
        check_mlp(pipeline.mlp, len(pipeline.features))
        winner = winner_field(pipeline)
        winner_slot = slots.setdefault(winner.name, len(slots))
        bounds[winner.name] = all_ones(max(winner.max_value, pipeline.mlp.n_classes - 1))
    elif pipeline.score_sum is not None and pipeline.argmax is not None:
        add_score_slots(pipeline, slots, bounds)
    verdict = build_table(pipeline.verdict, slots, bounds)
    if pipeline.class_field.name not in slots:
        raise ValueError("no table writes the class field")
    return Layout(slots, bounds, feature_slots, tables, verdict, winner_slot)


def add_score_slots(pipeline: Pipeline, slots: dict[str, int], bounds: dict[str, int]) -> None:
    assert pipeline.score_sum is not None and pipeline.argmax is not None
    for out, terms in zip(pipeline.score_sum.outputs, pipeline.score_sum.terms, strict=True):
        check_width(out, MAX_FIELD_BITS - 1, f"score {out.name}")
        for term in terms:
            if term.name not in slots:
                raise ValueError(f"score term {term.name} is read before it is written")
        slots.setdefault(out.name, len(slots))
        bounds[out.name] = out.max_value
    scores = pipeline.argmax.scores
    if not scores or any(s.name not in slots for s in scores):
        raise ValueError("the arg-max reads a score nobody writes")
    out = pipeline.argmax.output
    slots.setdefault(out.name, len(slots))
    bounds[out.name] = all_ones(max(out.max_value, len(scores) - 1))
