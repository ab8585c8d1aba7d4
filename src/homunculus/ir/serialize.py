"""Pipelines to and from plain JSON (OUT/pipeline.json), so a compiled program can be re-run."""

from __future__ import annotations

from typing import Any

from homunculus.features.library import FlowConfig
from homunculus.ir.cpu import CpuProgram, model_from_json, model_to_json
from homunculus.ir.flow import FlowDecision, FlowOutput, FlowProgram, Register
from homunculus.ir.pipeline import (
    AluKind,
    AluOp,
    AluStep,
    Argmax,
    Entry,
    Exact,
    FeatureInput,
    Field,
    Match,
    MatchKind,
    Pipeline,
    Range,
    ScoreSum,
    Shortcut,
    Table,
    TableRole,
    Ternary,
    VerdictKind,
)
from homunculus.ir.quantised import from_json, to_json


def _field(f: Field) -> list[Any]:
    return [f.name, f.width]


def _unfield(d: list[Any]) -> Field:
    return Field(str(d[0]), int(d[1]))


def _match(m: Match) -> list[Any]:
    if isinstance(m, Ternary):
        return ["ternary", m.value, m.mask]
    if isinstance(m, Range):
        return ["range", m.lo, m.hi]
    return ["exact", m.value]


def _unmatch(d: list[Any]) -> Match:
    kind, *values = d
    return {"ternary": Ternary, "range": Range, "exact": Exact}[kind](*map(int, values))


def _table(t: Table) -> dict[str, Any]:
    return {"name": t.name, "role": t.role.value, "keys": [_field(k) for k in t.keys],
            "kinds": [k.value for k in t.kinds], "outputs": [_field(o) for o in t.outputs],
            "entries": [[[_match(m) for m in e.matches], list(e.params)] for e in t.entries],
            "default": list(t.default), "slices": list(t.slices)}


def _untable(d: dict[str, Any]) -> Table:
    return Table(d["name"], TableRole(d["role"]), tuple(_unfield(k) for k in d["keys"]),
                 tuple(MatchKind(k) for k in d["kinds"]), tuple(_unfield(o) for o in d["outputs"]),
                 tuple(Entry(tuple(_unmatch(m) for m in ms), tuple(ps)) for ms, ps in d["entries"]),
                 tuple(d["default"]), tuple(d.get("slices", ())))


def _operand(o: Field | int | None) -> Any:
    return _field(o) if isinstance(o, Field) else o


def _unoperand(d: Any) -> Field | int | None:
    return _unfield(d) if isinstance(d, list) else d


def _ops(ops: tuple[AluOp, ...]) -> list[Any]:
    return [[_field(op.dst), op.kind.value, _operand(op.a), _operand(op.b)] for op in ops]


def _unops(d: list[Any]) -> tuple[AluOp, ...]:
    return tuple(AluOp(_unfield(dst), AluKind(kind), _unoperand(a), _unoperand(b))
                 for dst, kind, a, b in d)


def _step(s: AluStep) -> dict[str, Any]:
    return {"name": s.name, "ops": _ops(s.ops), "otherwise": _ops(s.otherwise),
            "guard": None if s.guard is None else [_field(s.guard[0]), s.guard[1]]}


def _unstep(d: dict[str, Any]) -> AluStep:
    guard = None if d["guard"] is None else (_unfield(d["guard"][0]), int(d["guard"][1]))
    return AluStep(d["name"], _unops(d["ops"]), guard, _unops(d["otherwise"]))


def _flow(p: FlowProgram | None) -> dict[str, Any] | None:
    if p is None:
        return None
    c = p.config
    return {"config": {"slots": c.slots, "time_shift": c.time_shift, "unit_ns": c.unit_ns},
            "registers": [[r.name, r.width, r.op, r.param, r.bin_shift, r.bins]
                          for r in p.registers],
            "outputs": [[o.feature, o.source, o.width] for o in p.outputs],
            "decision": None if p.decision is None else [p.decision.at, p.decision.count,
                                                         p.decision.register, p.decision.width]}


def _unflow(d: dict[str, Any] | None) -> FlowProgram | None:
    if d is None:
        return None
    decision = d.get("decision")
    return FlowProgram(FlowConfig(**d["config"]), tuple(Register(*r) for r in d["registers"]),
                       tuple(FlowOutput(*o) for o in d["outputs"]),
                       None if decision is None else FlowDecision(*decision))


def pipeline_to_json(p: Pipeline) -> dict[str, Any]:
    return {
        "features": [[f.name, _field(f.field), f.header_field, f.flow] for f in p.features],
        "encoders": [_table(t) for t in p.encoders],
        "lookups": [_table(t) for t in p.lookups],
        "score_sum": None if p.score_sum is None else {
            "outputs": [_field(o) for o in p.score_sum.outputs],
            "terms": [[_field(t) for t in ts] for ts in p.score_sum.terms],
            "bias": list(p.score_sum.bias)},
        "argmax": None if p.argmax is None else {
            "scores": [_field(s) for s in p.argmax.scores], "output": _field(p.argmax.output)},
        "class_field": _field(p.class_field),
        "verdict": _table(p.verdict),
        "verdict_kind": p.verdict_kind.value,
        "class_labels": list(p.class_labels),
        "flow": _flow(p.flow),
        "mlp": None if p.mlp is None else to_json(p.mlp),
        "winner": _field(p.notes["winner"]) if "winner" in p.notes else None,
        "alu": [_step(s) for s in p.alu],
        "default_port": p.default_port,
        "switch_lowered": bool(p.notes.get("switch_lowered")),
        "shortcut": _shortcut(p.shortcut),
        "class_rows": [list(r) for r in p.class_rows],
        "decider": None if p.decider is None else _table(p.decider),
        "order": list(p.order),
        "carry_in": [_field(f) for f in p.carry_in],
        "carry_out": [_field(f) for f in p.carry_out],
        "requires": list(p.requires),
    }


def _shortcut(s: Shortcut | None) -> dict[str, Any] | None:
    return None if s is None else {"feature": s.feature, "values": list(s.values),
                                   "rows": [list(r) for r in s.rows]}


def _unshortcut(d: dict[str, Any] | None) -> Shortcut | None:
    if d is None:
        return None
    return Shortcut(int(d["feature"]), tuple(int(v) for v in d["values"]),
                    tuple(tuple(int(v) for v in r) for r in d["rows"]))  # type: ignore[misc]


def pipeline_from_json(d: dict[str, Any]) -> Pipeline:
    ss, am = d["score_sum"], d["argmax"]
    return Pipeline(
        features=tuple(FeatureInput(n, _unfield(f), h, bool(fl)) for n, f, h, fl in d["features"]),
        encoders=tuple(_untable(t) for t in d["encoders"]),
        lookups=tuple(_untable(t) for t in d["lookups"]),
        score_sum=None if ss is None else ScoreSum(
            tuple(_unfield(o) for o in ss["outputs"]),
            tuple(tuple(_unfield(t) for t in ts) for ts in ss["terms"]), tuple(ss["bias"])),
        argmax=None if am is None else Argmax(tuple(_unfield(s) for s in am["scores"]),
                                              _unfield(am["output"])),
        class_field=_unfield(d["class_field"]),
        verdict=_untable(d["verdict"]),
        verdict_kind=VerdictKind(d["verdict_kind"]),
        class_labels=tuple(d["class_labels"]),
        flow=_unflow(d["flow"]),
        mlp=None if d.get("mlp") is None else from_json(d["mlp"]),
        notes=({"winner": _unfield(d["winner"])} if d.get("winner") else {})
        | ({"switch_lowered": True} if d.get("switch_lowered") else {}),
        alu=tuple(_unstep(s) for s in d.get("alu", [])),
        default_port=int(d.get("default_port", 1)),
        shortcut=_unshortcut(d.get("shortcut")),
        class_rows=tuple(tuple(int(v) for v in r) for r in d.get("class_rows", [])),
        decider=None if d.get("decider") is None else _untable(d["decider"]),
        order=tuple(d.get("order", ())),
        carry_in=tuple(_unfield(f) for f in d.get("carry_in", ())),
        carry_out=tuple(_unfield(f) for f in d.get("carry_out", ())),
        requires=tuple(d.get("requires", ())),
    )


def program_to_json(p: CpuProgram) -> dict[str, Any]:
    """A CPU program (ir/cpu.py) as plain JSON (``kind: cpu``)."""
    return {
        "kind": "cpu",
        "features": [[f.name, _field(f.field), f.header_field, f.flow] for f in p.features],
        "class_labels": list(p.class_labels),
        "verdict_kind": p.verdict_kind.value,
        "verdict": [list(row) for row in p.verdict],
        "model": model_to_json(p.model),
        "flow": _flow(p.flow),
        "shortcut": _shortcut(p.shortcut),
        "class_rows": [list(r) for r in p.class_rows],
        **({"carry_in": list(p.carry_in), "carry_bits": p.carry_bits} if p.carry_in else {}),
    }


def program_from_json(d: dict[str, Any]) -> CpuProgram:
    return CpuProgram(
        features=tuple(FeatureInput(n, _unfield(f), h, bool(fl)) for n, f, h, fl in d["features"]),
        class_labels=tuple(d["class_labels"]),
        verdict_kind=VerdictKind(d["verdict_kind"]),
        verdict=tuple(tuple(int(v) for v in row) for row in d["verdict"]),  # type: ignore[misc]
        model=model_from_json(d["model"]),
        flow=_unflow(d["flow"]),
        shortcut=_unshortcut(d.get("shortcut")),
        class_rows=tuple(tuple(int(v) for v in r) for r in d.get("class_rows", [])),
        carry_in=tuple(int(c) for c in d.get("carry_in", [])),
        carry_bits=int(d.get("carry_bits", 0)),
    )


def compiled_to_json(p: Pipeline | CpuProgram) -> dict[str, Any]:
    """OUT/pipeline.json: the table pipeline of a switch compile, the CPU program otherwise."""
    return program_to_json(p) if isinstance(p, CpuProgram) else pipeline_to_json(p)


def compiled_from_json(d: dict[str, Any]) -> Pipeline | CpuProgram:
    return program_from_json(d) if d.get("kind") == "cpu" else pipeline_from_json(d)
