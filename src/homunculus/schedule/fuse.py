"""Fuse several models' switch pipelines into one program that runs a schedule.

Each model keeps its tables and ALU steps, renamed under its own prefix; its deciding table now
writes only its class (``<prefix>_class``). What the models have in common is built once:

* the parser and the feature extraction: a feature read from the same header field (same width),
  carried under the same name, or computed by the same flow-state register is one field;
* the flow registers: the register programs merge (a register is its semantics: same name, same
  state), so two models counting packets per flow share one register;
* identical encoders: an encoder table with the same key, entries and output widths as one
  already placed is dropped, and its readers read the first one's outputs.

Every model runs on every classified packet (speculatively: the gates of ``>`` act in the
combining table, so independent models share stages instead of queueing behind each other);
a model reading an upstream model's class as a feature reads that model's class field, so its
tables come after the upstream model's deciding table. The combining table, keyed on every
model's class (exact), is the program's verdict table: one entry per combination of classes,
whose action carries the schedule's verdict (schedule/policy.py). It acts on the packet in its
own actions, like any deciding table (targets/p4/actions.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from homunculus.errors import NotSupportedError
from homunculus.ir.flow import FlowOutput, FlowProgram
from homunculus.ir.names import unique_identifiers
from homunculus.ir.pipeline import (
    VERDICT_FIELDS,
    AluOp,
    AluStep,
    Entry,
    Exact,
    FeatureInput,
    Field,
    MatchKind,
    Pipeline,
    Table,
    TableRole,
    VerdictKind,
    bits_for,
)
from homunculus.passes.switch import lower_for_switch
from homunculus.schedule.expr import Node
from homunculus.schedule.policy import ModelVerdicts, Policy, combinations, evaluate
from homunculus.targets.p4.actions import VERDICT_ROLES

MAX_COMBINATIONS = 4096
"""Entries of the combining table (one per combination of the models' classes) at most."""


@dataclass(frozen=True)
class Part:
    """One model of a schedule as the fusion pass sees it."""

    name: str  # the model's name in the spec
    pipeline: Pipeline  # its switch-lowered pipeline, standalone
    labels: tuple[str, ...]
    verdicts: ModelVerdicts
    upstream: dict[int, str] = field(default_factory=dict)  # feature index -> model whose class


@dataclass
class Fused:
    """The fused pipeline and what the fusion shared."""

    pipeline: Pipeline
    prefixes: dict[str, str]  # model -> prefix of its fields and tables
    class_fields: dict[str, Field]  # model -> its class field in the fused program
    features: dict[str, list[int]]  # model -> fused feature index of each of its inputs
    shared: dict[str, Any]  # what was built once for several models


# ----------------------------------------------------------------------------- renaming


def _rename_field(f: Field, names: dict[str, Field]) -> Field:
    return names.get(f.name, f)


def _rename_table(t: Table, prefix: str, names: dict[str, Field]) -> Table:
    return replace(t, name=f"{prefix}_{t.name}",
                   keys=tuple(_rename_field(k, names) for k in t.keys),
                   outputs=tuple(_rename_field(o, names) for o in t.outputs))


def _rename_op(op: AluOp, names: dict[str, Field]) -> AluOp:
    def operand(x: Field | int | None) -> Field | int | None:
        return _rename_field(x, names) if isinstance(x, Field) else x

    return AluOp(_rename_field(op.dst, names), op.kind, operand(op.a), operand(op.b))


def _rename_step(s: AluStep, prefix: str, names: dict[str, Field]) -> AluStep:
    guard = None if s.guard is None else (_rename_field(s.guard[0], names), s.guard[1])
    return AluStep(f"{prefix}_{s.name}", tuple(_rename_op(o, names) for o in s.ops), guard,
                   tuple(_rename_op(o, names) for o in s.otherwise))


def _internal_fields(p: Pipeline) -> list[Field]:
    """Every field a model's tables and steps write (its private state in the fused program)."""
    out: list[Field] = []
    for item in p.sequence():
        if isinstance(item, Table):
            out += list(item.outputs)
        else:
            out += list(item.writes) + list(item.reads)
    out += [k for k in p.verdict.keys]
    return out


def class_output(verdict: Table) -> int:
    """Index of the class among a deciding table's outputs (the one that is no verdict role)."""
    others = [i for i, o in enumerate(verdict.outputs)
              if not (o.name.startswith("verdict_")
                      and o.name.removeprefix("verdict_") in VERDICT_ROLES)]
    if len(others) != 1:
        raise ValueError(f"table {verdict.name}: expected one class output")
    return others[0]


def class_table(verdict: Table, name: str, class_field: Field) -> Table:
    """A model's deciding table, writing only its class."""
    i = class_output(verdict)
    return Table(name, TableRole.LOOKUP, verdict.keys, verdict.kinds, (class_field,),
                 tuple(Entry(e.matches, (e.params[i],)) for e in verdict.entries),
                 (verdict.default[i],), verdict.slices)


# ----------------------------------------------------------------------------- features


def _flow_source(p: Pipeline, index: int) -> tuple[str, int] | None:
    if p.flow is None:
        return None
    for o in p.flow.outputs:
        if o.feature == index:
            return (o.source, o.width)
    return None


def feature_key(p: Pipeline, index: int) -> tuple[Any, ...]:
    """What makes two models' inputs the same value: the header field and width, the flow
    register (or iat/age) and output width, or the name of a carried feature."""
    f = p.features[index]
    if f.flow:
        return ("flow", _flow_source(p, index), f.field.width)
    if f.header_field is not None:
        return ("header", f.header_field, f.field.width)
    return ("carried", f.name, f.field.width)


def _merge_flow(parts: list[Part], owners: list[list[int]], n_features: int
                ) -> tuple[FlowProgram | None, dict[str, list[str]]]:
    """One register program for every model; which registers serve several models."""
    return merge_flow([(p.name, p.pipeline.flow, index_map)
                       for p, index_map in zip(parts, owners, strict=True)], n_features)


def merge_flow(programs: list[tuple[str, FlowProgram | None, list[int]]], n_features: int
               ) -> tuple[FlowProgram | None, dict[str, list[str]]]:
    """One register program for several models (name, flow program or None, fused index of
    each of its features): registers merge by name (a register's name is its semantics), each
    output reads the first register computing its fused feature. Returns the program (None when
    no model keeps flow state) and the registers serving several models, with their users. The
    per-flow decision is not merged (a schedule's models classify every packet)."""
    kept = [(name, prog, index_map) for name, prog, index_map in programs if prog is not None]
    if not kept:
        return None, {}
    configs = {prog.config for _, prog, _ in kept}
    if len(configs) > 1:
        raise NotSupportedError(
            "the scheduled models keep flow state with different geometry or time base ("
            + "; ".join(f"{name}: {prog.config.slots} slots, time_shift "
                        f"{prog.config.time_shift}" for name, prog, _ in kept)
            + "): give them the same traffic.flow so that they share the flow registers")
    registers: dict[str, Any] = {}
    users: dict[str, list[str]] = {}
    outputs: dict[int, FlowOutput] = {}
    for name, prog, index_map in kept:
        for r in prog.registers:
            registers.setdefault(r.name, r)
            users.setdefault(r.name, []).append(name)
        for o in prog.outputs:
            fused = index_map[o.feature]
            outputs.setdefault(fused, FlowOutput(fused, o.source, o.width))
    ordered = tuple(sorted(registers.values(), key=lambda r: (r.stage, r.name)))
    assert all(0 <= i < n_features for i in outputs)
    program = FlowProgram(configs.pop(), ordered, tuple(outputs[i] for i in sorted(outputs)))
    return program, {r: u for r, u in users.items() if len(u) > 1}


# ----------------------------------------------------------------------------- the pass


def _same_encoder(a: Table, b: Table) -> bool:
    return (a.keys == b.keys and a.kinds == b.kinds and a.entries == b.entries
            and a.default == b.default and a.slices == b.slices
            and tuple(o.width for o in a.outputs) == tuple(o.width for o in b.outputs))


def fuse(parts: list[Part], node: Node, policy: Policy) -> Fused:
    """The fused pipeline of ``parts`` (in an order where upstream models come first)."""
    prefixes = dict(zip([p.name for p in parts],
                        unique_identifiers([p.name for p in parts], "m"), strict=True))
    pipelines = [lower_for_switch(p.pipeline) for p in parts]
    # -- the models' class fields (as wide as their widest reader needs)
    widths: dict[str, int] = {p.name: pl.class_field.width for p, pl in zip(parts, pipelines,
                                                                            strict=True)}
    for p, pl in zip(parts, pipelines, strict=True):
        for i, up in p.upstream.items():
            widths[up] = max(widths[up], pl.features[i].field.width)
    class_fields = {p.name: Field(f"{prefixes[p.name]}_class", widths[p.name]) for p in parts}
    # -- features: one fused input per distinct value
    fused_inputs: list[FeatureInput] = []
    keys: dict[tuple[Any, ...], int] = {}
    owners: list[list[int]] = []  # per model: fused index of each of its inputs (-1: upstream)
    users: dict[int, list[str]] = {}
    taken: set[str] = set()
    for p, pl in zip(parts, pipelines, strict=True):
        index_map = []
        for i, f in enumerate(pl.features):
            if i in p.upstream:
                index_map.append(-1)
                continue
            key = feature_key(pl, i)
            if key not in keys:
                name = f.field.name if f.field.name not in taken else \
                    f"{prefixes[p.name]}_{f.field.name}"
                taken.add(name)
                keys[key] = len(fused_inputs)
                fused_inputs.append(replace(f, field=Field(name, f.field.width)))
            index_map.append(keys[key])
            users.setdefault(keys[key], []).append(p.name)
        owners.append(index_map)
    flow, shared_registers = _merge_flow(parts, owners, len(fused_inputs))
    # -- tables and steps, renamed; identical encoders kept once
    encoders: list[Table] = []
    lookups: list[Table] = []
    steps: list[AluStep] = []
    order: list[str] = []
    shared_encoders: dict[str, list[str]] = {}
    for p, pl, index_map in zip(parts, pipelines, owners, strict=True):
        prefix = prefixes[p.name]
        names: dict[str, Field] = {}
        for f in _internal_fields(pl):
            names.setdefault(f.name, Field(f"{prefix}_{f.name}", f.width))
        for i, f in enumerate(pl.features):
            if i in p.upstream:
                names[f.field.name] = class_fields[p.upstream[i]]
            else:
                names[f.field.name] = fused_inputs[index_map[i]].field
        for item in pl.sequence():
            if isinstance(item, AluStep):
                steps.append(_rename_step(item, prefix, names))
                order.append(steps[-1].name)
                continue
            table = _rename_table(item, prefix, names)
            if item.role is TableRole.ENCODER:
                twin = next((e for e in encoders if _same_encoder(e, table)), None)
                if twin is not None:  # its outputs are the twin's
                    for mine, theirs in zip(item.outputs, twin.outputs, strict=True):
                        names[mine.name] = theirs
                    shared_encoders.setdefault(twin.name, []).append(p.name)
                    continue
                encoders.append(table)
            else:
                lookups.append(table)
            order.append(table.name)
        verdict = _rename_table(pl.verdict, prefix, names)
        decide = class_table(verdict, f"{prefix}_decide", class_fields[p.name])
        lookups.append(decide)
        order.append(decide.name)
    combine = combining_table(parts, node, policy, class_fields)
    kinds = {k for p in parts for k in _verdict_kinds(p.verdicts)}
    verdict_kind = next((k for k in (VerdictKind.DROP, VerdictKind.DSCP, VerdictKind.FORWARD)
                         if k in kinds), VerdictKind.METADATA)
    labels = combination_labels(parts)
    fused = Pipeline(
        features=tuple(fused_inputs), encoders=tuple(encoders), lookups=tuple(lookups),
        score_sum=None, argmax=None, class_field=combine.outputs[0], verdict=combine,
        verdict_kind=verdict_kind, class_labels=labels, flow=flow,
        alu=tuple(steps), default_port=policy.default_port, order=tuple(order),
        notes={"switch_lowered": True, "schedule": {
            "models": [p.name for p in parts],
            "class_fields": {m: f.name for m, f in class_fields.items()}}})
    shared = {
        "parser": len(parts),
        "features": {fused_inputs[i].name: u for i, u in users.items() if len(u) > 1},
        "flow_registers": shared_registers,
        "encoders": {name: [next(p.name for p in parts if name.startswith(
            prefixes[p.name] + "_")), *u] for name, u in shared_encoders.items()},
    }
    features = {p.name: idx for p, idx in zip(parts, owners, strict=True)}
    return Fused(fused, prefixes, class_fields, features, shared)


def _verdict_kinds(v: ModelVerdicts) -> set[VerdictKind]:
    out = set()
    if any(v.drop):
        out.add(VerdictKind.DROP)
    if any(v.mark):
        out.add(VerdictKind.DSCP)
    if any(p is not None for p in v.port):
        out.add(VerdictKind.FORWARD)
    return out


def combination_labels(parts: list[Part]) -> tuple[str, ...]:
    """A label per combination of classes (the combining table's class output)."""
    grid = combinations([p.name for p in parts], {p.name: len(p.labels) for p in parts})
    n = len(next(iter(grid.values())))
    return tuple(",".join(f"{p.name}={p.labels[int(grid[p.name][i])]}" for p in parts)
                 for i in range(n))


def combining_table(parts: list[Part], node: Node, policy: Policy,
                    class_fields: dict[str, Field]) -> Table:
    """Exact table over every model's class -> (combination, port, drop, mark, dscp)."""
    counts = {p.name: len(p.labels) for p in parts}
    total = int(np.prod(list(counts.values())))
    if total > MAX_COMBINATIONS:
        raise NotSupportedError(
            f"the schedule's models have {total} combinations of classes "
            f"({' x '.join(str(c) for c in counts.values())}); the combining table holds at "
            f"most {MAX_COMBINATIONS} entries")
    order = [p.name for p in parts]
    grid = combinations(order, counts)
    outcome = evaluate(node, grid, {p.name: p.verdicts for p in parts}, policy)
    case = Field("sched_case", bits_for(max(total - 1, 1)))
    entries = []
    for i in range(total):
        params = (i, int(outcome.port[i]), int(outcome.drop[i]), int(outcome.mark[i]),
                  int(outcome.dscp[i]))
        entries.append(Entry(tuple(Exact(int(grid[m][i])) for m in order), params))
    keys = tuple(class_fields[m] for m in order)
    return Table("combine", TableRole.VERDICT, keys, (MatchKind.EXACT,) * len(keys),
                 (case, *VERDICT_FIELDS), tuple(entries), (0, policy.default_port, 0, 0, 0))


def model_classes(fused: Fused, env: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each model's class from a twin run of the fused pipeline."""
    return {m: np.asarray(env[f.name], dtype=np.int64) for m, f in fused.class_fields.items()}
