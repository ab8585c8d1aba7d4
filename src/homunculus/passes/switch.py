"""Lower score sums, the arg-max and the verdict to what a match-action switch executes.

The rules are Tofino's (the strictest target; bmv2 accepts the same forms):

* An action performs one ALU operation per destination field, and every field operand has the
  destination's width (no casts). A score sum therefore becomes an adder tree of two-operand
  adds, accumulating in place, scheduled as the terms arrive (:func:`adder_steps`): the adds
  that can start while later trees are still being matched do, so the sum ends about two
  stages after the last tree instead of one level per stage after it.
* A condition (gateway) compares a field with a constant or tests bits; it never compares two
  computed values. The arg-max subtracts scores (one subtraction per pair, one stage; scores are
  one bit wider than their largest value so the difference's top bit is the sign) and a table
  matches the sign bits (Planter's way): one ternary entry per class, the lowest index winning
  ties. Beyond ``MAX_SIGN_CLASSES`` classes the pairwise differences would crowd the PHV, so a
  tournament narrows down instead: each round subtracts pairs, then a gateway on each sign bit
  picks the (value, index) pair that moves on.
* The verdict is an action of the table that decides, not if/else code after it: the sign table
  of the sum families, or the single lookup that writes the winner (trees with one table,
  one-table folds), each entry carrying its class's verdict parameters.

The result is a pipeline whose ``alu`` steps replace ``score_sum``/``argmax`` and whose
``verdict`` table is the deciding table; the twin (targets/p4/twin.py) executes exactly that.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field, replace

from homunculus.ir.pipeline import (
    VERDICT_FIELDS,
    AluKind,
    AluOp,
    AluStep,
    Entry,
    Exact,
    Field,
    MatchKind,
    Pipeline,
    Range,
    Table,
    TableRole,
    Ternary,
    bits_for,
)
from homunculus.passes.encode import range_to_prefixes

MAX_SIGN_CLASSES = 8
"""Up to this many classes, the arg-max is one table over the pairwise sign bits (28 pairs)."""

Operand = Field | int


def lower_for_switch(pipeline: Pipeline, staged: bool = True) -> Pipeline:
    """The switch form of ``pipeline`` (idempotent; MLP pipelines are not for switches).
    ``staged``: the target places tables in stages, and sums are scheduled for the stages
    the lookups are estimated to take (:func:`term_arrival`); without, they are balanced."""
    if pipeline.notes.get("switch_lowered"):
        return pipeline
    if pipeline.mlp is not None:
        raise ValueError("a dense (MLP) pipeline cannot be lowered to match-action tables")
    if pipeline.score_sum is None or pipeline.argmax is None:
        lowered = fold_verdict(pipeline)
    else:
        lowered = lower_scores(pipeline, staged)
    if lowered.shortcut is not None:
        lowered = attach_shortcut(lowered)
    if lowered.flow is not None and lowered.flow.decision is not None:
        lowered = attach_decision(lowered)
    return replace(lowered, notes={**lowered.notes, "switch_lowered": True})


# ----------------------------------------------------------------------------- verdict


def verdict_params(verdict: Table) -> dict[int, tuple[int, ...]]:
    """Winner -> verdict parameters, from a verdict table keyed on the winner alone."""
    if len(verdict.keys) != 1 or verdict.kinds != (MatchKind.EXACT,):
        raise ValueError("the verdict table must be keyed on the winner (exact)")
    out: dict[int, tuple[int, ...]] = {}
    for entry in verdict.entries:
        match = entry.matches[0]
        assert isinstance(match, Exact)
        out.setdefault(match.value, entry.params)
    return out


def _params_of(winner: int, by_winner: dict[int, tuple[int, ...]], verdict: Table
               ) -> tuple[int, ...]:
    return by_winner.get(winner, verdict.default)


def fold_verdict(pipeline: Pipeline) -> Pipeline:
    """The one lookup that writes the winner becomes the verdict table: each entry's winner is
    replaced by that winner's verdict parameters (saves the verdict table's stage)."""
    winner = pipeline.winner_field()
    deciding = [t for t in pipeline.lookups if t.outputs == (winner,)]
    if len(deciding) != 1:
        raise ValueError("expected exactly one lookup table writing the winner")
    table = deciding[0]
    by_winner = verdict_params(pipeline.verdict)
    folded = Table(
        table.name, TableRole.VERDICT, table.keys, table.kinds, pipeline.verdict.outputs,
        tuple(Entry(e.matches, _params_of(e.params[0], by_winner, pipeline.verdict))
              for e in table.entries),
        _params_of(table.default[0], by_winner, pipeline.verdict), table.slices)
    lookups = tuple(t for t in pipeline.lookups if t is not table)
    return replace(pipeline, lookups=lookups, verdict=folded)


# ----------------------------------------------------------------------------- category table


SHORTCUT_CODE = "cat_code"
"""The category table's output: 0 on a miss, class + 1 on a hit."""


def wildcard(kind: MatchKind, key: Field) -> Ternary | Range:
    """A match of every value of ``key`` under ``kind`` (range or ternary)."""
    return Range(0, key.max_value) if kind is MatchKind.RANGE else Ternary(0, 0)


def _as_wildcardable(match: object, kind: MatchKind, key: Field) -> object:
    """An exact match as the equivalent ternary one (the key becomes ternary)."""
    if kind is MatchKind.EXACT:
        assert isinstance(match, Exact)
        return Ternary(match.value, key.max_value)
    return match


def attach_shortcut(pipeline: Pipeline) -> Pipeline:
    """The hybrid's category table as tables: an exact-match encoder on the feature (SRAM)
    writes ``cat_code`` (class + 1 on a hit, 0 on a miss), and the deciding table gains that key
    and, ahead of its own entries, one entry per class the table decides, carrying that class's
    verdict. So the verdict is still acted on in the deciding table, and a hit overrides the
    model (first match wins)."""
    sc = pipeline.shortcut
    assert sc is not None
    feature = pipeline.features[sc.feature].field
    code = Field(SHORTCUT_CODE, bits_for(len(pipeline.class_labels)))
    table = Table("cat" + feature.name[1:], TableRole.ENCODER, (feature,), (MatchKind.EXACT,),
                  (code,), tuple(Entry((Exact(v),), (row[0] + 1,))
                                 for v, row in zip(sc.values, sc.rows, strict=True)), (0,))
    deciding = pipeline.verdict
    by_class = {row[0]: row for row in sc.rows}
    names = [o.name for o in deciding.outputs]
    roles = {pipeline.class_field.name: 0, **{f.name: i + 1 for i, f in enumerate(VERDICT_FIELDS)}}
    if any(n not in roles for n in names):
        raise ValueError(f"deciding table {deciding.name}: unexpected outputs {names}")
    kinds = tuple(MatchKind.TERNARY if k is MatchKind.EXACT else k for k in deciding.kinds)
    wild = tuple(wildcard(k, key) for k, key in zip(kinds, deciding.keys, strict=True))
    ahead = tuple(Entry((*wild, Ternary(c + 1, code.max_value)),
                        tuple(by_class[c][roles[n]] for n in names)) for c in sorted(by_class))
    kept = tuple(Entry((*(_as_wildcardable(m, k, key) for m, k, key in
                          zip(e.matches, deciding.kinds, deciding.keys, strict=True)),
                        Ternary(0, 0)), e.params) for e in deciding.entries)
    slices = (*deciding.slices, None) if deciding.slices else ()
    decided = replace(deciding, keys=(*deciding.keys, code), kinds=(*kinds, MatchKind.TERNARY),
                      entries=ahead + kept, slices=slices)  # type: ignore[arg-type]
    notes = {**pipeline.notes, "shortcut": {"feature": pipeline.features[sc.feature].name,
                                            "table": table.name, "entries": len(sc.values)}}
    return replace(pipeline, encoders=(*pipeline.encoders, table), verdict=decided,
                   shortcut=None, notes=notes)


# ----------------------------------------------------------------------------- per-flow decision

MODEL_CLASS, FLOW_COUNT, FLOW_CLASS = "model_class", "flow_count", "flow_class"
"""The model's class, the flow's packet count n and the class its decision register gives."""


def attach_decision(pipeline: Pipeline) -> Pipeline:
    """The per-flow decision (features/library.py) as tables: the deciding table becomes the
    ``decider``, writing the model's class only; after it, the decision register stores that
    class at n == N and gives back what it holds (the generated code; twin: flow_twin.py);
    then the verdict table, keyed on (n, the model's class, the stored class), acts: the
    model's class's verdict while n <= N, the stored class's after. Its entries are ternary
    prefixes of the two ranges of n, one set per class."""
    flow = pipeline.flow
    assert flow is not None and flow.decision is not None
    d = flow.decision
    deciding = pipeline.verdict
    cls = [o.name for o in deciding.outputs].index(pipeline.class_field.name)
    model_class = Field(MODEL_CLASS, d.width)
    decider = Table(f"{deciding.name}_class", TableRole.LOOKUP, deciding.keys, deciding.kinds,
                    (model_class,), tuple(Entry(e.matches, (e.params[cls],))
                                          for e in deciding.entries),
                    (deciding.default[cls],), deciding.slices)
    count, stored = Field(FLOW_COUNT, d.width), Field(FLOW_CLASS, d.width)
    rows = pipeline.class_rows
    if len(rows) != len(pipeline.class_labels):
        raise ValueError("a per-flow decision needs every class's verdict (class_rows)")
    names = [o.name for o in deciding.outputs]
    roles = {pipeline.class_field.name: 0, **{f.name: i + 1 for i, f in enumerate(VERDICT_FIELDS)}}
    params = [tuple(row[roles[n]] for n in names) for row in rows]
    full = model_class.max_value
    entries = [Entry((t, Ternary(c, full), Ternary(0, 0)), params[c])
               for c in range(len(rows)) for t in range_to_prefixes(0, d.at, d.width)]
    entries += [Entry((t, Ternary(0, 0), Ternary(c, full)), params[c])
                for c in range(len(rows)) for t in range_to_prefixes(d.at + 1, full, d.width)]
    verdict = Table("verdict", TableRole.VERDICT, (count, model_class, stored),
                    (MatchKind.TERNARY,) * 3, deciding.outputs, tuple(entries), params[0])
    return replace(pipeline, decider=decider, verdict=verdict)


# ----------------------------------------------------------------------------- scores


def _output_maxima(tables: tuple[Table, ...]) -> dict[str, int]:
    """The largest value each lookup output can take (over entries and default)."""
    top: dict[str, int] = {}
    for t in tables:
        for i, out in enumerate(t.outputs):
            values = [e.params[i] for e in t.entries] + [t.default[i]]
            top[out.name] = max(top.get(out.name, 0), *values)
    return top


def score_width(pipeline: Pipeline) -> int:
    """Bits of every score, term and difference: the largest class total plus a sign bit."""
    assert pipeline.score_sum is not None
    top = _output_maxima(pipeline.lookups)
    totals = [bias + sum(top[t.name] for t in terms)
              for terms, bias in zip(pipeline.score_sum.terms, pipeline.score_sum.bias,
                                     strict=True)]
    return bits_for(max(totals)) + 1


def _widen(table: Table, width: int) -> Table:
    return replace(table, outputs=tuple(Field(o.name, width) for o in table.outputs))


STAGE_TERNARY_GROUPS = 12
"""Tofino's ternary match crossbar per stage: 12 groups of 5 bytes, a mid byte between each
pair (so is the units' model)."""
STAGE_TERNARY_TABLES = 8
STAGE_EXACT_BYTES = 128


def ternary_groups(key_bits: int) -> int:
    """Crossbar groups a ternary key takes on Tofino, one per TCAM side by side: one up to 6
    bytes, then bf-p4c allocates pairs of groups with the mid byte between them (11 bytes a
    pair). The real compiler put the 161-bit tree key of the iot-dt fixture in 22 crossbar
    bytes and 4 TCAMs (tests/fixtures/real-compilers/tna/iot-dt-tofino)."""
    n_bytes = max(1, math.ceil(key_bits / 8))
    return 1 if n_bytes <= 6 else 2 * math.ceil(n_bytes / 11)


def term_arrival(lookups: tuple[Table, ...], staged: bool = True) -> dict[str, int]:
    """The stage, counted from the lookups' first, after which each lookup output can be read,
    estimated from the keys alone: tables fill stages in order until a stage's match crossbar
    (or its ternary tables) is full. Entries are not counted, so a retrained model in the same
    tables gets the same estimate, and the same adder steps. Without ``staged`` (a target
    without stage limits, bmv2) every lookup is read at once, and the sum is balanced."""
    if not staged:
        return {o.name: 0 for t in lookups for o in t.outputs}
    arrival: dict[str, int] = {}
    stage, groups, ternary, exact = 0, 0, 0, 0
    for table in lookups:
        n_bytes = math.ceil(table.key_width / 8)
        if table.keys and table.match_kind is MatchKind.EXACT:
            if exact and exact + n_bytes > STAGE_EXACT_BYTES:
                stage, groups, ternary, exact = stage + 1, 0, 0, 0
            exact += n_bytes
            span = math.ceil(n_bytes / STAGE_EXACT_BYTES)
        else:
            need = ternary_groups(table.key_width)
            if ternary and (groups + need > STAGE_TERNARY_GROUPS
                            or ternary == STAGE_TERNARY_TABLES):
                stage, groups, ternary, exact = stage + 1, 0, 0, 0
            groups, ternary = groups + need, ternary + 1
            span = math.ceil(need / STAGE_TERNARY_GROUPS)
        for out in table.outputs:
            arrival[out.name] = stage + max(span, 1)
    return arrival


@dataclass(frozen=True, order=True)
class _Partial:
    """A partial sum of one class: when it is ready, which term sources it holds, its field."""

    ready: int
    sources: tuple[int, ...]
    operand: Operand = field(compare=False)


def _combine(partials: list[_Partial]) -> tuple[list[tuple[int, AluOp]], Operand | None]:
    """Reduce one class's partial sums to one, always adding the two that are ready first (the
    minimax order: the total is ready as early as two-operand adds allow); in-place adds, a
    constant only ever as the second operand. Returns each add with its result's ready time,
    and the operand holding the total (None without terms)."""
    heap = list(partials)
    heapq.heapify(heap)
    ops: list[tuple[int, AluOp]] = []
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        if not isinstance(a.operand, Field):
            a, b = b, a
        assert isinstance(a.operand, Field), "at most one term of a class is a constant"
        ready = max(a.ready, b.ready) + 1  # an add takes a stage
        ops.append((ready, AluOp(a.operand, AluKind.ADD, a.operand, b.operand)))
        heapq.heappush(heap, _Partial(ready, tuple(sorted(a.sources + b.sources)), a.operand))
    return ops, heap[0].operand if heap else None


def adder_steps(terms: list[list[tuple[int, Operand]]]) -> tuple[list[list[AluOp]],
                                                                  list[Operand | None]]:
    """Sum each class's terms, given as (ready time, operand) with the ready time in stages
    (:func:`term_arrival`; constants and carried values earlier).

    Every class is reduced by :func:`_combine`, and adds whose results are ready at the same
    time run together in one step (one action): a step waits only for what it adds, so the
    switch starts summing the first trees while later ones are still matched, instead of
    adding level by level after the last tree. Returns the steps' operations in dependency
    order and each class's total (None for a class without terms)."""
    by_time: dict[int, list[AluOp]] = {}
    totals: list[Operand | None] = []
    for class_terms in terms:
        partials = [_Partial(ready, (i,), operand)
                    for i, (ready, operand) in enumerate(class_terms)]
        ops, total = _combine(partials)
        for ready, op in ops:  # independent: a partial sum is added once, when it is ready
            by_time.setdefault(ready, []).append(op)
        totals.append(total)
    return [by_time[key] for key in sorted(by_time)], totals


def fold_biases(lookups: tuple[Table, ...], terms: tuple[tuple[Field, ...], ...],
                bias: tuple[int, ...]) -> tuple[tuple[Table, ...], list[int]]:
    """Add each class's bias to the entries and default of its first term's table (one
    constant operand fewer in the adder tree); return the tables and the biases left over
    (those of classes without terms)."""
    add: dict[str, int] = {}
    left = list(bias)
    for c, ts in enumerate(terms):
        if ts and bias[c]:
            add[ts[0].name] = bias[c]
            left[c] = 0
    out = []
    for t in lookups:
        shift = [add.get(o.name, 0) for o in t.outputs]
        if not any(shift):
            out.append(t)
            continue
        entries = tuple(Entry(e.matches, tuple(v + d for v, d in zip(e.params, shift,
                                                                       strict=True)))
                        for e in t.entries)
        default = tuple(v + d for v, d in zip(t.default, shift, strict=True))
        out.append(replace(t, entries=entries, default=default))
    return tuple(out), left


def lower_scores(pipeline: Pipeline, staged: bool = True) -> Pipeline:
    """Adder trees, then the sign-table arg-max (or a tournament) that carries the verdict."""
    ss, am = pipeline.score_sum, pipeline.argmax
    assert ss is not None and am is not None
    width = score_width(pipeline)
    lookups, bias = fold_biases(tuple(_widen(t, width) for t in pipeline.lookups),
                                ss.terms, ss.bias)
    arrival = term_arrival(lookups, staged)
    level_ops, totals = adder_steps([[(arrival[t.name], Field(t.name, width)) for t in terms]
                                     for terms in ss.terms])
    setup: list[AluOp] = []
    scores: list[Field] = []
    for c, total in enumerate(totals):
        if total is None:  # a class without terms: its score is a constant
            total = Field(f"score{c}", width)
            setup.append(AluOp(total, AluKind.SET, bias[c]))
        assert isinstance(total, Field)
        scores.append(total)
    if setup and level_ops:
        level_ops[0].extend(setup)
    elif setup:
        level_ops.append(setup)
    steps = [AluStep(f"sum{i}", tuple(ops)) for i, ops in enumerate(level_ops)]
    base = replace(pipeline, lookups=lookups, score_sum=None, argmax=None)
    if len(scores) <= MAX_SIGN_CLASSES:
        diff_step, verdict = sign_table(scores, pipeline.verdict)
        return replace(base, alu=(*steps, diff_step), verdict=verdict)
    rounds = tournament(scores, am.output)
    return replace(base, alu=(*steps, *rounds))


def diff_field(i: int, j: int, width: int) -> Field:
    return Field(f"am_d{i}_{j}", width)


def sign_table(scores: list[Field], verdict: Table) -> tuple[AluStep, Table]:
    """Pairwise differences d_ij = s_i - s_j (i < j) and the table over their sign bits: class c
    wins iff s_c > s_j for every j < c and s_c >= s_j for every j > c."""
    width = scores[0].width
    pairs = [(i, j) for i in range(len(scores)) for j in range(i + 1, len(scores))]
    ops = tuple(AluOp(diff_field(i, j, width), AluKind.SUB, scores[i], scores[j])
                for i, j in pairs)
    by_winner = verdict_params(verdict)
    entries = []
    for c in range(len(scores)):
        matches = []
        for i, j in pairs:
            if j == c:  # s_i < s_c: the difference is negative
                matches.append(Ternary(1, 1))
            elif i == c:  # s_c >= s_j: the difference is not negative
                matches.append(Ternary(0, 1))
            else:
                matches.append(Ternary(0, 0))
        entries.append(Entry(tuple(matches), _params_of(c, by_winner, verdict)))
    table = Table("verdict", TableRole.VERDICT, tuple(op.dst for op in ops),
                  (MatchKind.TERNARY,) * len(ops), verdict.outputs, tuple(entries),
                  verdict.default, slices=(width - 1,) * len(ops))
    return AluStep("argmax_diff", ops), table


def tournament(scores: list[Field], winner: Field) -> list[AluStep]:
    """Rounds of (subtract pairs; on each sign bit keep the right pair if it is larger): the
    left, lower-index contender keeps ties. The last round writes only the winner index."""
    width = scores[0].width
    contenders: list[tuple[Field, Operand]] = [(s, i) for i, s in enumerate(scores)]
    steps: list[AluStep] = []
    r = 0
    while len(contenders) > 1:
        last = len(contenders) == 2
        diffs: list[AluOp] = []
        selects: list[AluStep] = []
        moved: list[tuple[Field, Operand]] = []
        for p, (left, right) in enumerate(zip(contenders[0::2], contenders[1::2],
                                              strict=False)):
            d = Field(f"am_t{r}_{p}", width)
            diffs.append(AluOp(d, AluKind.SUB, left[0], right[0]))
            index = winner if last else Field(f"am_i{r}_{p}", winner.width)
            value = Field(f"am_v{r}_{p}", width)
            selects.append(AluStep(f"am_pick{r}_{p}", _take(right, index, None if last else value),
                                   guard=(d, width - 1),
                                   otherwise=_take(left, index, None if last else value)))
            moved.append((value, index))
        if len(contenders) % 2:
            moved.append(contenders[-1])
        steps += [AluStep(f"am_sub{r}", tuple(diffs)), *selects]
        contenders = moved
        r += 1
    return steps


def _take(side: tuple[Field, Operand], index: Field, value: Field | None) -> tuple[AluOp, ...]:
    """Copy one contender's index (and value, unless this is the last round) onward."""
    ops = [AluOp(index, AluKind.SET, side[1])]
    if value is not None:
        ops.append(AluOp(value, AluKind.SET, side[0]))
    return tuple(ops)
