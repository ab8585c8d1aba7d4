"""Split one model over a chain of switches (NetNN-style), carrying partial scores in a header.

A summed model's score tables are its unit of work: an ensemble's trees, a lookup-and-sum
model's per-feature tables (each with the encoders it reads). Device ``d`` runs a contiguous
run of them: it adds the partial scores carried in from ``d - 1`` (the Homunculus carry header,
after Ethernet; targets/p4/templates) to its own tables' scores and carries the sums on, or, on
the last device, takes the arg-max and acts on the verdict. Every score is as wide as the whole
model's widest class total plus a sign bit, so partial sums never overflow and the last device's
differences are signed (passes/switch.py).

The partitioner minimises the devices used, then the header bytes: for each candidate table
order (as lowered; by the class column for boosted trees, which move one score each, so the
header carries only the columns summed so far) it fills each device greedily with the longest
run of tables whose program fits that device under its limits (the real allocation pass), and
keeps the order with the fewest devices, then the fewest carried bytes.

A host (the C or XDP target) may end the chain: the switches fill as above, and the tables no switch
took, with the arg-max and the verdict, run on the host, which starts from the partial scores
the last switch carries (schedule/host.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from homunculus.ir.flow import FlowOutput, FlowProgram
from homunculus.ir.pipeline import (
    VERDICT_FIELDS,
    AluKind,
    AluOp,
    AluStep,
    Field,
    MatchKind,
    Pipeline,
    Table,
    TableRole,
)
from homunculus.passes.encode import encode_for_target
from homunculus.passes.switch import (
    MAX_SIGN_CLASSES,
    adder_steps,
    fold_biases,
    score_width,
    sign_table,
    term_arrival,
    tournament,
)
from homunculus.targets.base import Limits, Usage, assess
from homunculus.targets.p4.codegen import carry_layout
from homunculus.targets.p4.profiles import SwitchProfile

CARRY_PREFIX = "part_s"
"""Carried-in partial score of class c: the meta field ``part_s<c>``."""
HOST_SOURCE = "host_source"
"""The pipeline note holding what a host ending the chain is built from (ChainTarget)."""


@dataclass(frozen=True)
class Device:
    """One device of the chain: its backend and its limits."""

    name: str
    target: Any  # SwitchTarget, or a host's target (CTarget, XdpTarget) ending the chain
    limits: Limits

    @property
    def host(self) -> bool:
        """Whether the device runs the CPU program (a host), not a table pipeline."""
        return getattr(self.target, "lowering", "tables") == "cpu"

    @property
    def stage_budget(self) -> int | None:
        if self.host:
            return None
        return self.limits.stages if self.limits.stages is not None else \
            self.target.profile.stages


@dataclass(frozen=True)
class Split:
    """A model over devices: each used device's program and what it carries on."""

    programs: tuple[Pipeline, ...]
    tables: tuple[tuple[str, ...], ...]  # lookup tables per device
    usages: tuple[Usage, ...]
    carry_bytes: tuple[int, ...]  # per link (device d -> d + 1)
    order: str  # the table order that won ("lowered" or "by column")
    feasible: bool = True
    needed: int = 0  # devices the greedy fill needed (more than the chain has: infeasible)
    reason: str | None = None
    host_tables: tuple[str, ...] = ()  # the lookup tables a host ending the chain runs
    host_carry_in: tuple[int, ...] = ()  # the class columns the host reads from the header
    host_program: Any = None  # the host's CPU program, when the partition could build it
    host_usage: Usage | None = None  # its usage on the host (its target's own cost model)

    @property
    def devices(self) -> int:
        return len(self.programs) + bool(self.host_tables)

    @property
    def header_bytes(self) -> int:
        return sum(self.carry_bytes)


# ----------------------------------------------------------------------------- one device


@dataclass
class _Model:
    """The parts of a lowered (not switch-lowered) summed pipeline the partition needs."""

    pipeline: Pipeline
    width: int
    features: dict[str, int]  # feature field -> index
    encoder_of: dict[str, Table]  # code field -> the encoder writing it
    columns: dict[str, int]  # lookup output field -> class column


def analyse(pipeline: Pipeline) -> _Model:
    if pipeline.score_sum is None or pipeline.argmax is None:
        raise ValueError("only a model whose classes sum scores over several tables splits")
    columns = {}
    for c, terms in enumerate(pipeline.score_sum.terms):
        for t in terms:
            columns[t.name] = c
    encoder_of = {o.name: e for e in pipeline.encoders for o in e.outputs}
    features = {f.field.name: i for i, f in enumerate(pipeline.features)}
    return _Model(pipeline, score_width(pipeline), features, encoder_of, columns)


def _bits(value: int) -> list[int]:
    return [i for i in range(value.bit_length()) if value >> i & 1]


def _feature_pattern(entry: Any, table: Table, encoder: str,
                     chunk_of: dict[str, tuple[Table, int]],
                     threshold_of: list[int]) -> tuple[int, int]:
    """An entry's (value, mask) over one encoder's whole code, narrowed to the two bits that
    decide it: every code bit means ``x > threshold_of[bit]``, so "these bits set, those clear"
    is "the set bit of the highest threshold, the clear bit of the lowest" (codes may be one
    thermometer or one per tree: the thresholds say, not the bit positions)."""
    value = mask = 0
    for i, k in enumerate(table.keys):
        if k.name in chunk_of and chunk_of[k.name][0].name == encoder:
            m = entry.matches[i]
            offset = chunk_of[k.name][1]
            mask |= m.mask << offset
            value |= (m.value & m.mask) << offset
    ones = _bits(value & mask)
    zeros = _bits(mask & ~value)
    keep = 0
    if ones:
        keep |= 1 << max(ones, key=lambda b: threshold_of[b])
    if zeros:
        keep |= 1 << min(zeros, key=lambda b: threshold_of[b])
    return value & keep, keep


def bit_thresholds(encoder: Table) -> list[int]:
    """Per bit of a thermometer encoder's code (its outputs concatenated), the threshold it
    tests: the bit is set exactly for values above it (the encoder's ranges ascend)."""
    width = sum(o.width for o in encoder.outputs)
    out = [encoder.keys[0].max_value] * width
    for entry in reversed(encoder.entries):
        code, offset = 0, 0
        for o, v in zip(encoder.outputs, entry.params, strict=True):
            code |= v << offset
            offset += o.width
        for b in _bits(code):
            out[b] = entry.matches[0].lo - 1  # type: ignore[union-attr]
    return out


def compact_codes(encoders: list[Table], tables: list[Table]) -> tuple[list[Table], list[Table]]:
    """Thermometer codes narrowed to the thresholds ``tables`` decide on (a device holding some
    of the trees needs only theirs): each entry keeps the two code bits that decide it (see
    :func:`_feature_pattern`), each encoder keeps the thresholds some entry still tests, and
    each table's keys are the new code chunks it reads. Results are unchanged: a kept bit still
    means ``x > t``, and codes stay thermometers."""
    from homunculus.ir.pipeline import Entry, Ternary
    from homunculus.passes.lower import code_chunks, thermometer_encoder

    chunk_of: dict[str, tuple[Table, int]] = {}  # chunk field -> (encoder, bit offset)
    for e in encoders:
        offset = 0
        for o in e.outputs:
            chunk_of[o.name] = (e, offset)
            offset += o.width
    threshold_of = {e.name: bit_thresholds(e) for e in encoders}
    patterns: dict[tuple[int, str], list[tuple[int, int]]] = {}  # (table, encoder) -> per entry
    used: dict[str, int] = {e.name: 0 for e in encoders}
    for ti, t in enumerate(tables):
        for name in {chunk_of[k.name][0].name for k in t.keys if k.name in chunk_of}:
            rows = [_feature_pattern(entry, t, name, chunk_of, threshold_of[name])
                    for entry in t.entries]
            patterns[(ti, name)] = rows
            for _, m in rows:
                used[name] |= m
    new_encoders: list[Table] = []
    remap: dict[str, tuple[dict[int, int], tuple[Field, ...]]] = {}
    for e in encoders:
        kept = _bits(used[e.name])
        if not kept:
            continue
        thresholds = sorted({threshold_of[e.name][b] for b in kept})  # one shared code again
        chunks = code_chunks(e.keys[0], len(thresholds))
        new_encoders.append(thermometer_encoder(e.keys[0], chunks, thresholds))
        remap[e.name] = ({b: thresholds.index(threshold_of[e.name][b]) for b in kept}, chunks)
    new_tables = []
    for ti, t in enumerate(tables):
        other = [(i, k) for i, k in enumerate(t.keys) if k.name not in chunk_of]
        keys: list[Field] = []
        columns: list[list[tuple[int, int]]] = []
        for e in encoders:
            if (ti, e.name) not in patterns or e.name not in remap:
                continue
            position, chunks = remap[e.name]
            moved = []
            for v, m in patterns[(ti, e.name)]:
                nv = nm = 0
                for b in _bits(v):  # (bits of two trees' codes may test one threshold)
                    nv |= 1 << position[b]
                for b in _bits(m):
                    nm |= 1 << position[b]
                moved.append((nv, nm))
            for c, chunk in enumerate(chunks):
                lo = c * 32
                part = [((v >> lo) & chunk.max_value, (m >> lo) & chunk.max_value)
                        for v, m in moved]
                if any(m for _, m in part):
                    keys.append(chunk)
                    columns.append(part)
        entries = tuple(Entry(tuple(Ternary(*col[r]) for col in columns)
                              + tuple(entry.matches[i] for i, _ in other), entry.params)
                        for r, entry in enumerate(t.entries))
        new_tables.append(replace(t, keys=(*keys, *(k for _, k in other)),
                                  kinds=((MatchKind.TERNARY,) * len(keys)
                                         + tuple(t.kinds[i] for i, _ in other)),
                                  entries=entries))
    return new_encoders, new_tables


def _device_inputs(model: _Model, tables: list[Table]) -> tuple[list[Table], list[int]]:
    """The encoders ``tables`` read, and the features both read (indices, in model order)."""
    encoders: dict[str, Table] = {}
    feats: set[int] = set()
    for t in tables:
        for k in t.keys:
            if k.name in model.encoder_of:
                e = model.encoder_of[k.name]
                encoders[e.name] = e
            elif k.name in model.features:
                feats.add(model.features[k.name])
    for e in encoders.values():
        for k in e.keys:
            feats.add(model.features[k.name])
    order = [e for e in model.pipeline.encoders if e.name in encoders]
    return order, sorted(feats)


def restrict_flow(program: FlowProgram | None, indices: list[int]) -> FlowProgram | None:
    """The register program of the features at ``indices`` (reindexed in that order): the
    registers their outputs read, the signature, and what those depend on."""
    if program is None:
        return None
    position = {old: new for new, old in enumerate(indices)}
    outputs = tuple(FlowOutput(position[o.feature], o.source, o.width) for o in program.outputs
                    if o.feature in position)
    if not outputs:
        return None
    names = {"r_sig"} | {o.source for o in outputs}
    names |= {"r_last" for o in outputs if o.source == "iat"}
    names |= {"r_first" for o in outputs if o.source == "age"}
    regs = [r for r in program.registers if r.name in names]
    if any(r.op == "iat_bin" for r in regs):
        names.add("r_last")
    regs = tuple(r for r in program.registers if r.name in names)
    return FlowProgram(program.config, regs, outputs)


def _flow_for(model: _Model, indices: list[int]) -> Any:
    return restrict_flow(model.pipeline.flow, indices)


def carried_columns(model: _Model, tables: list[Table]) -> set[int]:
    return {model.columns[o.name] for t in tables for o in t.outputs}


def device_pipeline(model: _Model, tables: list[Table], carried_in: list[int], last: bool,
                    name: str, profile: SwitchProfile, requires: tuple[str, ...]
                    ) -> tuple[Pipeline, list[int]]:
    """The program of one device: ``tables`` plus the partial scores ``carried_in`` (class
    columns, in order); returns it and the columns it carries out (none when ``last``)."""
    supports_range = profile.supports_range
    p = model.pipeline
    assert p.score_sum is not None and p.argmax is not None
    w = model.width
    encoders, feats = _device_inputs(model, tables)
    encoders, tables = compact_codes(encoders, tables)
    inputs = tuple(p.features[i] for i in feats)
    widened = [replace(t, outputs=tuple(Field(o.name, w) for o in t.outputs)) for t in tables]
    n = len(p.score_sum.terms)
    own = {c: [Field(o.name, w) for t in widened for o in t.outputs if model.columns[o.name] == c]
           for c in range(n)}
    carried = {c: Field(f"{CARRY_PREFIX}{c}", w) for c in carried_in}
    terms = tuple(tuple(own[c]) for c in range(n))
    bias = p.score_sum.bias if last else (0,) * n
    lookups, left = fold_biases(tuple(widened), terms, bias)
    arrival = term_arrival(lookups, profile.stages is not None)
    carried_terms = [[(0, carried[c])] if c in carried else [] for c in range(n)]
    level_ops, sums = adder_steps(
        [carried_terms[c] + [(arrival[f.name], f) for f in own[c]]
         + ([(-1, left[c])] if left[c] and (own[c] or c in carried) else []) for c in range(n)])
    totals: dict[int, Field] = {}
    setup: list[AluOp] = []
    for c in range(n):
        if sums[c] is None:
            if last:  # a class no table moves: its score is its bias
                score = Field(f"score{c}", w)
                setup.append(AluOp(score, AluKind.SET, left[c]))
                totals[c] = score
            continue
        total = sums[c]
        assert isinstance(total, Field)
        totals[c] = total
    if setup and level_ops:
        level_ops[0].extend(setup)
    elif setup:
        level_ops.append(setup)
    steps = [AluStep(f"sum{i}", tuple(ops)) for i, ops in enumerate(level_ops)]
    if not carried_in:  # the first device classifies only what every device can read
        feats = sorted(set(feats) | {i for i, f in enumerate(p.features)
                                     if not f.flow and f.header_field is None})
        inputs = tuple(p.features[i] for i in feats)
    flow = _flow_for(model, feats)
    base = replace(p, features=inputs, encoders=tuple(encoders), lookups=lookups,
                   score_sum=None, argmax=None, flow=flow, carry_in=tuple(carried.values()),
                   requires=() if carried_in else requires,
                   notes={"switch_lowered": True, "feature_index": feats})
    if last:
        scores = [totals[c] for c in range(n)]
        assert all(isinstance(s, Field) for s in scores)
        if len(scores) <= MAX_SIGN_CLASSES:
            diff, verdict = sign_table(scores, p.verdict)  # type: ignore[arg-type]
            program = replace(base, alu=(*steps, diff), verdict=verdict)
        else:
            program = replace(base, alu=(*steps, *tournament(scores, p.argmax.output)))  # type: ignore[arg-type]
        return _encoded(program, supports_range), []
    out_cols = sorted(totals)
    forward = Table(f"{name}_forward", TableRole.VERDICT, (), (),
                    (Field("hop", 1), VERDICT_FIELDS[0]), (), (0, p.default_port))
    program = replace(base, alu=tuple(steps), verdict=forward,
                      carry_out=tuple(totals[c] for c in out_cols), class_labels=("part",),
                      class_field=Field("hop", 1),
                      notes={**base.notes, "carry_columns": out_cols})
    return _encoded(program, supports_range), out_cols


def _encoded(program: Pipeline, supports_range: bool) -> Pipeline:
    notes = dict(program.notes)
    notes.pop("encoded", None)
    encoded = encode_for_target(replace(program, notes=notes), supports_range)
    return replace(encoded, notes={**encoded.notes, "switch_lowered": True})


# ----------------------------------------------------------------------------- the partition


def _fits(device: Device, program: Pipeline) -> tuple[bool, Usage, str | None]:
    usage = device.target.estimate(program)
    verdict = assess(usage, device.limits)
    return verdict.feasible, usage, None if verdict.feasible else "; ".join(verdict.violations)


@dataclass
class _Fill:
    programs: list[Pipeline] = field(default_factory=list)
    tables: list[tuple[str, ...]] = field(default_factory=list)
    usages: list[Usage] = field(default_factory=list)
    carry: list[int] = field(default_factory=list)
    reason: str | None = None
    complete: bool = True
    host_tables: tuple[str, ...] = ()
    host_carry: tuple[int, ...] = ()
    host_program: Any = None
    host_usage: Usage | None = None


def _fill(model: _Model, order: list[Table], devices: list[Device], requires: tuple[str, ...],
          spare: int, source: Any = None) -> _Fill:
    """Greedy: each device takes the longest run of the remaining tables that fits it (the
    last one, arg-max and verdict included). ``spare`` extra devices like the last may be used
    to measure how many a model that does not fit would need. A host ending the chain takes
    whatever the switches before it did not, judged by its own cost model against its limits
    (``source``: schedule/host.py HostSource); the last switch before it may then take a
    shorter run when that carries fewer bytes and the host still fits (:func:`_to_host`)."""
    out = _Fill()
    i = 0
    carried: list[int] = []
    start, carried_before = 0, []  # where the last switch's run starts, what it reads
    host = devices[-1].host
    switches = devices[:-1] if host else devices
    pool = list(switches) + ([] if host else [devices[-1]] * spare)
    for d, device in enumerate(pool):
        name = f"d{d}"
        best: tuple[int, Pipeline, Usage, list[int]] | None = None
        lo, hi = 1, len(order) - i
        while lo <= hi:  # the longest run that fits (fitting is monotone in the run's length)
            k = (lo + hi) // 2
            run = order[i:i + k]
            last = i + k == len(order)
            program, out_cols = device_pipeline(model, run, carried, last, name,
                                                device.target.profile, requires)
            ok, usage, why = _fits(device, program)
            if ok:
                best = (k, program, usage, out_cols)
                lo = k + 1
            else:
                out.reason = f"device {d + 1} ({device.name}): {why}"
                hi = k - 1
        if best is None:  # a switch that takes no table: the chain never skips a device
            out.complete = False
            return out
        k, program, usage, out_cols = best
        out.programs.append(program)
        out.tables.append(tuple(t.name for t in order[i:i + k]))
        out.usages.append(usage)
        start, carried_before = i, carried
        i += k
        if i == len(order):
            return out
        out.carry.append(carry_layout(program.carry_out)["bytes"])
        carried = out_cols
    if host:  # every switch took a run: the host takes the rest
        return _to_host(model, order, devices, requires, source, out, start, carried_before, i)
    out.complete = False
    return out


def _to_host(model: _Model, order: list[Table], devices: list[Device],
             requires: tuple[str, ...], source: Any, out: _Fill, start: int,
             carried_before: list[int], stop: int) -> _Fill:
    """Hand the tables from ``stop`` on to the host ending the chain. The last switch (its run
    ``order[start:stop]``, the longest that fits it) may keep a shorter run instead: per set of
    class columns it would carry, the longest run carrying that set; the fewest header bytes
    whose rest fits the host wins (then the longest run). If no rest fits the host, the fill is
    incomplete, ``reason`` naming the host and the limit."""
    from homunculus.schedule.host import judge_host

    host = devices[-1]
    d = len(out.programs) - 1
    name = f"d{d}"
    runs: dict[frozenset[int], int] = {}  # carried columns -> the longest run carrying them
    for k in range(1, stop - start + 1):
        runs[frozenset(carried_before) | carried_columns(model, order[start:start + k])] = k
    reason, longest = None, None
    for _, k in sorted(((len(cols), -k), k) for cols, k in runs.items()):
        end = start + k
        if end == stop:
            program, usage = out.programs[-1], out.usages[-1]
            out_cols = list(carried_out_columns(program))
        else:
            program, out_cols = device_pipeline(model, order[start:end], carried_before, False,
                                                name, devices[d].target.profile, requires)
            ok, usage, _ = _fits(devices[d], program)
            if not ok:  # fitting is monotone in the run's length: not expected
                continue
        tables = tuple(t.name for t in order[end:])
        hosted, host_usage, why = judge_host(host, tables, tuple(out_cols), model.pipeline,
                                             source)
        if why is not None:  # the reason given: the fewest tables left to the host
            if longest is None or k > longest:
                longest = k
                reason = (f"device {len(devices)} ({host.name}, {host.target.name} "
                          f"host) with {len(tables)} table(s) left by the switches: {why}")
            continue
        out.programs[-1], out.usages[-1] = program, usage
        out.tables[-1] = tuple(t.name for t in order[start:end])
        out.carry[-1] = carry_layout(program.carry_out)["bytes"]
        out.host_tables, out.host_carry = tables, tuple(out_cols)
        out.host_program, out.host_usage = hosted, host_usage
        out.reason = None
        return out
    out.complete = False
    out.reason = reason
    return out


def table_orders(model: _Model, host: bool = False, source: Any = None
                 ) -> dict[str, list[Table]]:
    """The table orders the partition tries: as lowered; by class column (boosted trees); and,
    before a host ending the chain, each of those with the tables the host cannot run first
    (reading a flow feature, or merged from several: schedule/host.py ``host_runnable``)."""
    tables = list(model.pipeline.lookups)
    orders = {"lowered": tables}
    by_column = sorted(tables, key=lambda t: (min(model.columns[o.name] for o in t.outputs),
                                              tables.index(t)))
    if by_column != tables:
        orders["by column"] = by_column
    if host:
        from homunculus.schedule.host import host_runnable

        runnable = host_runnable(model.pipeline, source)
        for name, base in list(orders.items()):
            first = sorted(base, key=lambda t: (t.name in runnable, base.index(t)))
            if first != base:
                orders[f"{name}, the host's tables last"] = first
    return orders


def whole(pipeline: Pipeline, devices: list[Device]) -> Split:
    """A model that does not split (one table decides): all of it on the first device."""
    device = devices[0]
    program = device.target.prepare(pipeline)
    ok, usage, why = _fits(device, program)
    return Split((program,), (tuple(t.name for t in pipeline.lookups),), (usage,), (),
                 "whole", feasible=ok, needed=1 if ok else -1,
                 reason=None if ok else f"device 1 ({device.name}): {why}")


def partition(pipeline: Pipeline, devices: list[Device], spare: int = 0,
              source: Any = None) -> Split:
    """The split of ``pipeline`` (lowered, not switch-lowered) over ``devices`` with the fewest
    devices, then the fewest header bytes; infeasible (``feasible`` False) when it needs more
    devices than the chain has, with ``needed`` the devices a greedy fill used (the chain's
    plus at most ``spare`` more; -1 when even that was not enough). A host ending the chain is
    costed from ``source`` (schedule/host.py HostSource; default: the one
    :meth:`ChainTarget.attach_model` put in the pipeline's notes)."""
    if source is None:
        source = pipeline.notes.get(HOST_SOURCE)
    if pipeline.score_sum is None or pipeline.argmax is None:
        return whole(pipeline, devices)
    model = analyse(pipeline)
    from homunculus.targets.p4.codegen import _required_headers

    requires = tuple(h for h in _required_headers(pipeline, None) if h in ("tcp", "udp"))
    best: Split | None = None
    for name, order in table_orders(model, devices[-1].host, source).items():
        fill = _fill(model, order, devices, requires, spare, source)
        split = Split(tuple(fill.programs), tuple(fill.tables), tuple(fill.usages),
                      tuple(fill.carry), name,
                      feasible=fill.complete and len(fill.programs) <= len(devices),
                      needed=len(fill.programs) + bool(fill.host_tables) if fill.complete
                      else -1, reason=fill.reason, host_tables=fill.host_tables,
                      host_carry_in=fill.host_carry, host_program=fill.host_program,
                      host_usage=fill.host_usage)
        if best is None or _rank(split) < _rank(best):
            best = split
    assert best is not None
    return best


def _rank(split: Split) -> tuple[Any, ...]:
    return (not split.feasible, split.needed < 0, split.needed, split.header_bytes)


# ----------------------------------------------------------------------------- the chain target


@dataclass(frozen=True)
class ChainTarget:
    """A chain of switches as one search target: a configuration is feasible when its model
    splits over the chain. Its usage counts stages along the chain (each device before the
    last used one counts its whole stage budget), so a model that needs more devices than the
    chain has exceeds the chain's stages; memory and entries add up, the rate is the slowest
    device's and the latency the sum. A host ending the chain counts one stage past the switches
    (every switch before it counts its whole budget)."""

    devices: tuple[Device, ...]
    name: str = "chain"
    supports_dense: bool = False
    lowering: str = "tables"
    misfits: dict[str, tuple[int, str]] = field(default_factory=dict, compare=False,
                                                 repr=False)
    """Why configurations did not split (by the device and limit: how often, the first
    reason), for the error when none does."""

    @property
    def profile(self) -> Any:
        return self.devices[0].target.profile

    @property
    def merges(self) -> bool:
        """Whether the search may merge score tables (passes/merge.py): not before a host,
        which runs the model's own trees or bins (search/problem.py ``merge_budget``)."""
        return not self.devices[-1].host

    @property
    def arch(self) -> str:
        return self.devices[0].target.arch

    def limits(self) -> Limits:
        return Limits(stages=chain_stage_limit(list(self.devices)))

    def prepare(self, pipeline: Pipeline) -> Pipeline:
        """Nothing yet: each device encodes and lowers its own part."""
        return pipeline

    def attach_model(self, pipeline: Pipeline, model: Any, dataset: Any, verdict: Any,
                     winner_to_class: tuple[int, ...] | None) -> Pipeline:
        """``pipeline`` with what a host ending the chain is built from (search/problem.py
        ``lower_for`` calls it): the partition costs the host's program on the host."""
        if not self.devices[-1].host:
            return pipeline
        from homunculus.schedule.host import HostSource

        source = HostSource(model, tuple(dataset.features), verdict, winner_to_class)
        return replace(pipeline, notes={**pipeline.notes, HOST_SOURCE: source})

    def split(self, pipeline: Pipeline) -> Split:
        split = _cached_partition(self, pipeline)
        if not split.feasible and split.reason:
            key = misfit_key(split.reason)
            count, first = self.misfits.get(key, (0, split.reason))
            self.misfits[key] = (count + 1, first)
        return split

    def why_not(self) -> str | None:
        """The most frequent reason configurations did not split over the chain."""
        if not self.misfits:
            return None
        key = max(self.misfits, key=lambda k: self.misfits[k][0])
        count, first = self.misfits[key]
        return f"{first} ({count} time(s))"

    def estimate(self, pipeline: Pipeline) -> Usage:
        return chain_usage(self.split(pipeline), list(self.devices))


NO_STAGE_BUDGET = 1000
"""The stages a switch without a stage budget (BMv2) counts along the chain: more than any of
its programs uses, so only a split that does not fit exceeds the chain's stages."""


def misfit_key(reason: str) -> str:
    """A split's reason without its numbers: the device and the limits named."""
    import re

    return re.sub(r"[0-9.]+", "#", reason)


def chain_stage_limit(devices: list[Device]) -> int:
    """The chain's stages: every switch's budget, one more for a host ending it."""
    return sum(d.stage_budget if d.stage_budget is not None else NO_STAGE_BUDGET
               for d in devices if not d.host) + int(devices[-1].host)


_CACHE: dict[tuple[int, int], tuple[Pipeline, Split]] = {}


def _cached_partition(target: ChainTarget, pipeline: Pipeline) -> Split:
    key = (id(target), id(pipeline))
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is pipeline:
        return hit[1]
    split = partition(pipeline, list(target.devices), spare=len(target.devices) + 2)
    if len(_CACHE) > 64:
        _CACHE.clear()
    _CACHE[key] = (pipeline, split)
    return split


def chain_usage(split: Split, devices: list[Device]) -> Usage:
    """One Usage for the chain (see ChainTarget)."""
    if not split.usages:
        big = max(sum(d.stage_budget or 12 for d in devices) * 10,
                  chain_stage_limit(devices) + 1)
        return Usage(big, 0, 0.0, 0.0, 0, 0, 0.0, 0.0)
    budgets = [devices[min(i, len(devices) - 1)].stage_budget for i in range(len(split.usages))]
    before = sum((b if b is not None else u.stages)
                 for b, u in zip(budgets[:-1], split.usages[:-1], strict=True))
    stages = before + split.usages[-1].stages
    if split.host_tables:  # the last switch carries on: its whole budget, then the host
        last = budgets[-1]
        stages = before + (last if last is not None else split.usages[-1].stages) + 1
    if split.needed < 0:  # even the spare devices were not enough
        stages = sum(d.stage_budget or 12 for d in devices) * 10
    if not split.feasible:  # whatever the stages used, the chain's are exceeded
        stages = max(stages, chain_stage_limit(devices) + 1)
    u = split.usages + ((split.host_usage,) if split.host_usage is not None else ())
    per_stage = []
    offset = 0
    for usage in split.usages:
        per_stage += [replace(st, stage=st.stage + offset) for st in usage.per_stage]
        offset += len(usage.per_stage)
    return Usage(stages=stages, tables=sum(x.tables for x in u),
                 sram_kbit=sum(x.sram_kbit for x in u), tcam_kbit=sum(x.tcam_kbit for x in u),
                 entries=sum(x.entries for x in u), phv_bits=max(x.phv_bits for x in u),
                 instructions=max(x.instructions for x in u),
                 throughput_gpps=min(x.throughput_gpps for x in u),
                 latency_ns=sum(x.latency_ns for x in u), per_stage=tuple(per_stage))


# ----------------------------------------------------------------------------- the twin


def run_split(split: Split, x: np.ndarray, runner: Any) -> Any:
    """The chain on the model's feature rows: each device's twin (``runner(program, d, x_d,
    carried)``) on its features, fed the previous device's carried fields; the last result."""
    return run_switches(split, x, runner)[0]


def run_switches(split: Split, x: np.ndarray, runner: Any
                 ) -> tuple[Any, dict[str, np.ndarray] | None]:
    """:func:`run_split`, with what the last switch carries on (to a host ending the chain)."""
    carried: dict[str, np.ndarray] | None = None
    result = None
    for d, program in enumerate(split.programs):
        x_d = x[:, list(program.notes["feature_index"])].reshape(len(x), -1)
        result = runner(program, d, x_d, carried)
        if program.carry_out:
            carried = {f"{CARRY_PREFIX}{c}": result.fields[f.name]
                       for c, f in zip(carried_out_columns(program), program.carry_out,
                                       strict=True)}
    return result, carried


def carried_out_columns(program: Pipeline) -> list[int]:
    """The class column of each carried-out field (recorded when the program was built)."""
    return list(program.notes.get("carry_columns", ()))


def run_split_packets(split: Split, table: Any, installed: list[Pipeline] | None = None
                      ) -> tuple[Any, np.ndarray]:
    """The chain over a packet table: every device runs its flow registers on every packet; the
    first classifies the packets carrying what the whole model reads and inserts the carry
    header, which is what the others classify. The last device's result on the classified
    packets, and the classified mask."""
    result, classified, _ = run_switch_packets(split, table, installed)
    return result, classified


def run_switch_packets(split: Split, table: Any, installed: list[Pipeline] | None = None
                       ) -> tuple[Any, np.ndarray, dict[str, np.ndarray] | None]:
    """:func:`run_split_packets`, with what the last switch carries on (to a host ending the
    chain), per classified packet."""
    from homunculus.data.traffic import per_capture
    from homunculus.targets.p4.flow_twin import eligible_packets, run_flow_program
    from homunculus.targets.p4.twin import header_feature_values, simulate

    programs = installed if installed is not None else list(split.programs)
    classified: np.ndarray | None = None
    carried: dict[str, np.ndarray] | None = None
    result = None
    for program in programs:
        values, carries = header_feature_values(program, table)
        if program.flow is not None:
            flow_program, n = program.flow, len(program.features)
            flow_values, _ = per_capture(table, lambda t, fp=flow_program, k=n:
                                         run_flow_program(fp, t, k))
            cols = [j for j, f in enumerate(program.features) if f.flow]
            values[:, cols] = flow_values[:, cols]
        if classified is None:
            classified = eligible_packets(table) & carries
        result = simulate(program, values[classified], carried=carried)
        if program.carry_out:
            carried = {f"{CARRY_PREFIX}{c}": result.fields[f.name]
                       for c, f in zip(carried_out_columns(program), program.carry_out,
                                       strict=True)}
    assert classified is not None
    return result, classified, carried
