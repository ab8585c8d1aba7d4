"""The integer table pipeline: what a quantised model lowers to before a backend emits it.

``features -> encoder tables -> lookup tables -> score sum -> arg-max -> verdict table``

Every table has one action that writes its entry's parameters into its output fields; entries are
in priority order (the first match wins) and a default applies when none matches. All values are
unsigned integers; every field has a width. Nothing here knows about any target.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from homunculus.ir.dense import QMLP
from homunculus.ir.flow import FlowProgram


class MatchKind(StrEnum):
    EXACT = "exact"
    TERNARY = "ternary"
    RANGE = "range"


@dataclass(frozen=True)
class Field:
    """A pipeline field (metadata in P4, a local in C) of ``width`` bits."""

    name: str
    width: int

    @property
    def max_value(self) -> int:
        return (1 << self.width) - 1


@dataclass(frozen=True)
class Exact:
    value: int

    def matches(self, x: int) -> bool:
        return x == self.value


@dataclass(frozen=True)
class Ternary:
    value: int
    mask: int

    def matches(self, x: int) -> bool:
        return (x & self.mask) == (self.value & self.mask)


@dataclass(frozen=True)
class Range:
    lo: int
    hi: int

    def matches(self, x: int) -> bool:
        return self.lo <= x <= self.hi


Match = Exact | Ternary | Range


@dataclass(frozen=True)
class Entry:
    matches: tuple[Match, ...]
    params: tuple[int, ...]


class TableRole(StrEnum):
    ENCODER = "encoder"  # feature value -> code
    LOOKUP = "lookup"  # codes or feature values -> score contributions (or the class directly)
    VERDICT = "verdict"  # class -> action parameters


@dataclass(frozen=True)
class Table:
    """A match-action table. ``slices[i]``, when given, is the one bit of ``keys[i]`` the table
    matches (a sign bit, say): the key's value is then that bit, 0 or 1."""

    name: str
    role: TableRole
    keys: tuple[Field, ...]
    kinds: tuple[MatchKind, ...]
    outputs: tuple[Field, ...]
    entries: tuple[Entry, ...]
    default: tuple[int, ...]
    slices: tuple[int | None, ...] = ()

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.kinds):
            raise ValueError(f"table {self.name}: keys and match kinds differ in number")
        if len(self.default) != len(self.outputs):
            raise ValueError(f"table {self.name}: default has wrong arity")
        if self.slices and len(self.slices) != len(self.keys):
            raise ValueError(f"table {self.name}: slices and keys differ in number")
        for key, bit in zip(self.keys, self.slices, strict=False):
            if bit is not None and not 0 <= bit < key.width:
                raise ValueError(f"table {self.name}: bit {bit} outside key {key.name}")

    def key_slice(self, i: int) -> int | None:
        """The matched bit of key ``i`` (None: the whole key)."""
        return self.slices[i] if self.slices else None

    def key_bits(self, i: int) -> int:
        """Width of key ``i`` as matched."""
        return 1 if self.key_slice(i) is not None else self.keys[i].width

    @property
    def key_width(self) -> int:
        return sum(self.key_bits(i) for i in range(len(self.keys)))

    @property
    def data_width(self) -> int:
        return sum(o.width for o in self.outputs)

    @property
    def match_kind(self) -> MatchKind:
        """The table's overall kind: ternary if any key is ternary, then range, else exact."""
        for kind in (MatchKind.TERNARY, MatchKind.RANGE):
            if kind in self.kinds:
                return kind
        return MatchKind.EXACT


@dataclass(frozen=True)
class ScoreSum:
    """``outputs[c] = bias[c] + sum(terms[c])`` for every class c (unsigned, no overflow)."""

    outputs: tuple[Field, ...]
    terms: tuple[tuple[Field, ...], ...]
    bias: tuple[int, ...]


@dataclass(frozen=True)
class Argmax:
    """``output = index of the largest score`` (ties to the lowest index)."""

    scores: tuple[Field, ...]
    output: Field


class AluKind(StrEnum):
    ADD = "add"  # dst = a + b (mod 2**width)
    SUB = "sub"  # dst = a - b (mod 2**width)
    SET = "set"  # dst = a


@dataclass(frozen=True)
class AluOp:
    """One ALU instruction: every field operand has the destination's width (no casts)."""

    dst: Field
    kind: AluKind
    a: Field | int
    b: Field | int | None = None

    def __post_init__(self) -> None:
        if (self.b is None) != (self.kind is AluKind.SET):
            raise ValueError(f"{self.kind} of {self.dst.name}: wrong number of operands")
        for operand in (self.a, self.b):
            if isinstance(operand, Field) and operand.width != self.dst.width:
                raise ValueError(f"{self.kind} of {self.dst.name}: operand {operand.name} is "
                                 f"{operand.width} bits, not {self.dst.width}")
            if isinstance(operand, int) and not 0 <= operand <= self.dst.max_value:
                raise ValueError(f"{self.kind} of {self.dst.name}: constant {operand} too wide")
        if isinstance(self.a, int) and isinstance(self.b, int):
            raise ValueError(f"{self.kind} of {self.dst.name}: two constants")

    @property
    def reads(self) -> tuple[Field, ...]:
        return tuple(o for o in (self.a, self.b) if isinstance(o, Field))


@dataclass(frozen=True)
class AluStep:
    """One action without a match: ALU operations that run together in one stage, each writing
    a different field. With ``guard`` (field, bit), ``ops`` run when that bit is 1 and
    ``otherwise`` when it is 0 (a gateway on one bit, then one of two actions)."""

    name: str
    ops: tuple[AluOp, ...]
    guard: tuple[Field, int] | None = None
    otherwise: tuple[AluOp, ...] = ()

    def __post_init__(self) -> None:
        for branch in (self.ops, self.otherwise):
            dsts = [op.dst.name for op in branch]
            if len(set(dsts)) != len(dsts):
                raise ValueError(f"step {self.name}: a field written twice in one action")
            for i, op in enumerate(branch):
                others = {o.dst.name for j, o in enumerate(branch) if j != i}
                if others & {f.name for f in op.reads}:
                    raise ValueError(f"step {self.name}: {op.dst.name} reads a field another "
                                     "operation of the same action writes")
        if self.otherwise and self.guard is None:
            raise ValueError(f"step {self.name}: 'otherwise' without a guard")

    @property
    def reads(self) -> tuple[Field, ...]:
        fields = [f for op in (*self.ops, *self.otherwise) for f in op.reads]
        if self.guard is not None:
            fields.append(self.guard[0])
        return tuple(dict.fromkeys(fields))

    @property
    def writes(self) -> tuple[Field, ...]:
        return tuple(dict.fromkeys(op.dst for op in (*self.ops, *self.otherwise)))


class VerdictKind(StrEnum):
    METADATA = "metadata"  # only set the class in metadata; forward on the default port
    DSCP = "dscp"  # mark the IPv4 DSCP by class
    DROP = "drop"  # drop the listed classes, forward the others
    FORWARD = "forward"  # choose the egress port by class


@dataclass(frozen=True)
class FeatureInput:
    """A feature as the pipeline reads it: the field it lands in and where it comes from."""

    name: str  # the user's name (never emitted as code)
    field: Field  # sanitised pipeline field
    header_field: str | None  # e.g. "ipv4.ttl"; None = flow state or carried in the feature header
    flow: bool = False  # computed by the flow-state program (Pipeline.flow)


@dataclass(frozen=True)
class Shortcut:
    """The hybrid's exact-match table over feature ``feature`` (an index into the features):
    value ``values[i]`` decides the class and the verdict directly, ``rows[i]`` = (class, port,
    drop, mark, dscp); every other value goes to the model. Values are sorted and unique."""

    feature: int
    values: tuple[int, ...]
    rows: tuple[tuple[int, int, int, int, int], ...]

    def __post_init__(self) -> None:
        if len(self.values) != len(self.rows) or list(self.values) != sorted(set(self.values)):
            raise ValueError("a shortcut needs sorted unique values, one verdict row each")

    def distinct_rows(self) -> tuple[list[tuple[int, ...]], list[int]]:
        """The distinct verdict rows (sorted) and each value's index among them (the CPU
        targets store a row once and an index per value)."""
        rows = sorted(set(self.rows))
        at = {r: i for i, r in enumerate(rows)}
        return rows, [at[r] for r in self.rows]

    def lookup(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(hit mask, the hit rows' verdict rows (zeros for misses)) of feature rows ``x``."""
        column = np.asarray(x, dtype=np.int64)[:, self.feature]
        values = np.asarray(self.values, dtype=np.int64)
        rows = np.asarray(self.rows, dtype=np.int64).reshape(-1, 5)
        if not len(values):
            return np.zeros(len(column), dtype=bool), np.zeros((len(column), 5), dtype=np.int64)
        at = np.clip(np.searchsorted(values, column), 0, len(values) - 1)
        hit = values[at] == column
        return hit, np.where(hit[:, None], rows[at], 0)


def class_rows_of(verdict: VerdictPlan, n_classes: int) -> tuple[tuple[int, ...], ...]:
    """Per class: (class, port, drop, mark, dscp)."""
    return tuple((c, *verdict.params(c)) for c in range(n_classes))


def shortcut_of(feature: int, values: tuple[int, ...], classes: tuple[int, ...],
                verdict: VerdictPlan) -> Shortcut:
    """The shortcut mapping each value to its class's verdict row."""
    return Shortcut(feature, tuple(values),
                    tuple((c, *verdict.params(c)) for c in classes))  # type: ignore[misc]


@dataclass(frozen=True)
class Pipeline:
    features: tuple[FeatureInput, ...]
    encoders: tuple[Table, ...]
    lookups: tuple[Table, ...]
    score_sum: ScoreSum | None  # None when a lookup table writes the class directly
    argmax: Argmax | None
    class_field: Field
    verdict: Table
    verdict_kind: VerdictKind
    class_labels: tuple[str, ...]
    notes: dict[str, object] = field(default_factory=dict)
    flow: FlowProgram | None = None  # per-flow state feeding the flow features
    # a quantised MLP computing the scores (kernel/C targets): then encoders, lookups, score_sum
    # and argmax are empty/None and the backend writes arg-max(mlp scores) into notes["winner"]
    mlp: QMLP | None = None
    # switch targets: the score sum and arg-max lowered to ALU steps, run after the lookups
    # (score_sum and argmax are then None and the verdict table decides; passes/switch.py)
    alu: tuple[AluStep, ...] = ()
    default_port: int = 1  # where packets the program does not classify go
    # the hybrid's category table before the switch lowering turns it into tables (an exact
    # encoder and high-priority entries of the deciding table: passes/switch.py)
    shortcut: Shortcut | None = None
    # per class: (class, port, drop, mark, dscp), for verdicts decided after the model
    class_rows: tuple[tuple[int, ...], ...] = ()
    # switch targets with a per-flow decision (flow.decision): the model's deciding table,
    # writing its class only, run after the ALU steps; the decision register and the verdict
    # table (keyed on the flow's count, the model's class and the flow's stored class) follow
    decider: Table | None = None
    # execution order of the encoder/lookup tables and ALU steps by name (empty: encoders, then
    # lookups, then steps); fused schedules interleave several models' tables and steps
    order: tuple[str, ...] = ()
    # split models (schedule/split.py): fields the parser loads from the Homunculus carry header
    # (partial results of the previous device) and fields written into it for the next device
    carry_in: tuple[Field, ...] = ()
    carry_out: tuple[Field, ...] = ()
    requires: tuple[str, ...] = ()  # headers a packet must carry besides those features read

    def tables(self) -> Iterator[Table]:
        yield from self.encoders
        yield from self.lookups
        if self.decider is not None:
            yield self.decider
        yield self.verdict

    def sequence(self) -> tuple[Table | AluStep, ...]:
        """The encoder/lookup tables and ALU steps in execution order (the verdict comes last)."""
        items: tuple[Table | AluStep, ...] = (*self.encoders, *self.lookups, *self.alu)
        if not self.order:
            return items
        by_name = {item.name: item for item in items}
        if sorted(by_name) != sorted(self.order) or len(by_name) != len(items):
            raise ValueError("the pipeline's order must name every table and step exactly once")
        return tuple(by_name[name] for name in self.order)

    @property
    def n_entries(self) -> int:
        return sum(len(t.entries) for t in self.tables())

    def winner_field(self) -> Field:
        """Where the model's arg-max goes: ``notes["winner"]``, else the verdict's only key."""
        winner = self.notes.get("winner")
        if isinstance(winner, Field):
            return winner
        if len(self.verdict.keys) != 1:
            raise ValueError("the pipeline needs notes['winner'] or a single-key verdict table")
        return self.verdict.keys[0]

    def table(self, name: str) -> Table:
        for t in self.tables():
            if t.name == name:
                return t
        raise KeyError(name)


def bits_for(value: int) -> int:
    """Bits needed to hold the unsigned integer ``value`` (at least 1)."""
    return max(1, int(value).bit_length())


@dataclass(frozen=True)
class VerdictPlan:
    """What the data plane does with each class (class indices, not labels)."""

    kind: VerdictKind = VerdictKind.METADATA
    default_port: int = 1
    ports: dict[int, int] = field(default_factory=dict)  # FORWARD: class -> egress port
    drop: frozenset[int] = frozenset()  # DROP: classes to drop
    dscp: dict[int, int] = field(default_factory=dict)  # DSCP: class -> DSCP value (0..63)

    def params(self, class_index: int) -> tuple[int, int, int, int]:
        """(port, drop, mark, dscp) for one class (a dropped class has the default port)."""
        drop = int(self.kind is VerdictKind.DROP and class_index in self.drop)
        port = self.default_port if drop else self.ports.get(class_index, self.default_port)
        mark = int(self.kind is VerdictKind.DSCP and class_index in self.dscp)
        return port, drop, mark, self.dscp.get(class_index, 0) if mark else 0


VERDICT_FIELDS = (Field("verdict_port", 9), Field("verdict_drop", 1), Field("verdict_mark", 1),
                  Field("verdict_dscp", 6))
