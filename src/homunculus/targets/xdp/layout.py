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

MLP pipelines (``pipeline.mlp``, ir/dense.py) keep only the verdict table; the network's
parameters are one value of ``hmn_mlp`` per slot: a flat array of ``__s32`` words (so the C struct
has no padding) in the order of :meth:`MlpLayout.parts` -- the input shifts, then per layer the
weights ``[out][in]`` and biases and, for hidden layers, ``(multiplier, shift, activation)`` and a
256-entry activation table. Dimensions (inputs, layer widths) are the program's shape; everything
else, activation kinds included, is data that a push may change.
"""

from __future__ import annotations

from dataclasses import dataclass

from homunculus.errors import NotSupportedError
from homunculus.ir.dense import QMLP, check_ranges
from homunculus.ir.pipeline import Exact, Field, Match, Pipeline, Range, Table, Ternary

MIN_CAPACITY = 16
MAX_FIELD_BITS = 64
VERDICT_ROLES = ("port", "drop", "mark", "dscp")
MLP_MAX_HIDDEN = 3
MLP_MAX_WIDTH = 64  # hidden layer widths and output scores
MLP_MAX_INPUTS = 256
ACTIVATION_CODES = {"none": 0, "relu": 1, "lut": 2}
LUT_SIZE = 256


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
class MlpLayout:
    """The network's dimensions: inputs, then the output width of every layer (the last one:
    the scores); ``inputs`` and ``winner`` are env indices."""

    inputs: tuple[int, ...]
    widths: tuple[int, ...]
    winner: int

    @property
    def n_in(self) -> int:
        return len(self.inputs)

    def shapes(self) -> list[tuple[int, int]]:
        """``(n_out, n_in)`` per layer."""
        ins = (self.n_in, *self.widths[:-1])
        return list(zip(self.widths, ins, strict=True))

    def parts(self) -> list[tuple[str, int]]:
        """The ``__s32`` arrays of one slot's value, in order: (C member name, words)."""
        out = [("in_shift", self.n_in)]
        last = len(self.widths) - 1
        for i, (n_out, n_in) in enumerate(self.shapes()):
            out += [(f"w{i}", n_out * n_in), (f"b{i}", n_out)]
            if i < last:
                out += [(f"q{i}", 3), (f"lut{i}", LUT_SIZE)]
        return out

    @property
    def words(self) -> int:
        return sum(n for _, n in self.parts())

    def signature(self) -> list[int]:
        return [self.n_in, *self.widths]


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
    mlp: MlpLayout | None = None

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
            "mlp": self.mlp.signature() if self.mlp else None,
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


def winner_field(pipeline: Pipeline) -> Field:
    """Where an MLP pipeline's arg-max goes (Pipeline.winner_field)."""
    return pipeline.winner_field()


def check_mlp(mlp: QMLP, n_features: int) -> None:
    """Raise unless the network fits the XDP program (sizes) and ir/dense.py's ranges."""
    hidden = len(mlp.layers) - 1
    if not 0 <= hidden <= MLP_MAX_HIDDEN:
        raise NotSupportedError(f"the XDP target runs MLPs of at most {MLP_MAX_HIDDEN} hidden "
                                f"layers (this one has {hidden})")
    if not 1 <= n_features <= MLP_MAX_INPUTS or len(mlp.input_shift) != n_features:
        raise ValueError(f"the MLP needs one input shift per feature (1..{MLP_MAX_INPUTS})")
    if any(not 0 <= s < 64 for s in mlp.input_shift):
        raise ValueError("MLP input shifts must be in 0..63")
    check_ranges(mlp)
    n_in = n_features
    for i, layer in enumerate(mlp.layers):
        n_out, width = layer.shape
        if width != n_in or any(len(row) != width for row in layer.weights):
            raise ValueError(f"MLP layer {i} has an inconsistent shape")
        if not 1 <= n_out <= MLP_MAX_WIDTH:
            raise NotSupportedError(f"MLP layer {i} has {n_out} outputs; the XDP target runs "
                                    f"at most {MLP_MAX_WIDTH}")
        if len(layer.bias) != n_out or any(not -2**31 <= b < 2**31 for b in layer.bias):
            raise ValueError(f"MLP layer {i}: biases must be int32, one per output")
        if i < hidden:
            _check_hidden(i, layer.multiplier, layer.shift, layer.activation, layer.lut)
        n_in = n_out


def _check_hidden(i: int, multiplier: int, shift: int, activation: str,
                  lut: tuple[int, ...] | None) -> None:
    if not 0 <= multiplier < 2**31 or not 1 <= shift <= 62:
        raise ValueError(f"MLP layer {i}: multiplier must be in 0..2^31-1 and shift in 1..62")
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"MLP layer {i}: unknown activation {activation!r}")
    if activation == "lut" and (lut is None or len(lut) != LUT_SIZE
                                or any(not -128 <= v <= 127 for v in lut)):
        raise ValueError(f"MLP layer {i}: the activation table needs 256 int8 values")


def mlp_layout(pipeline: Pipeline, index: dict[str, int]) -> MlpLayout | None:
    mlp = pipeline.mlp
    if mlp is None:
        return None
    if pipeline.score_sum is not None or pipeline.encoders or pipeline.lookups:
        raise ValueError("an MLP pipeline has no tables but the verdict and no score sum")
    check_mlp(mlp, len(pipeline.features))
    winner = winner_field(pipeline)
    if winner.name not in index or (1 << winner.width) < mlp.n_classes:
        raise ValueError("the MLP's winner field cannot hold every class score's index")
    return MlpLayout(tuple(index[f.field.name] for f in pipeline.features),
                     tuple(layer.shape[0] for layer in mlp.layers), index[winner.name])


def mlp_words(mlp: QMLP, shape: MlpLayout) -> list[int]:
    """One slot's ``hmn_mlp`` value as signed 32-bit words (see :meth:`MlpLayout.parts`)."""
    if [len(mlp.input_shift), *(layer.shape[0] for layer in mlp.layers)] != shape.signature():
        raise ValueError("the MLP's dimensions differ from the program's")
    words = list(mlp.input_shift)
    last = len(mlp.layers) - 1
    for i, layer in enumerate(mlp.layers):
        words += [w for row in layer.weights for w in row]
        words += list(layer.bias)
        if i < last:
            lut = layer.lut if layer.activation == "lut" and layer.lut else (0,) * LUT_SIZE
            words += [layer.multiplier, layer.shift, ACTIVATION_CODES[layer.activation], *lut]
    assert len(words) == shape.words
    return words


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
        mlp=mlp_layout(pipeline, index),
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
