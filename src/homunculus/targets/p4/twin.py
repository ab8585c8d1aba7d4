"""The P4 backend's executable twin: a match-action simulator running the generated entries.

It executes tables exactly as a switch would (first match by priority, else the default action),
the score sums with the field widths' wrap-around, the tournament arg-max of the generated code,
and the verdict table. It reads the entries from the runtime JSON written for the control plane,
so what is verified is what would be installed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from homunculus.data.packets import header_values, required_header
from homunculus.ir.pipeline import (
    AluKind,
    AluOp,
    AluStep,
    Argmax,
    Exact,
    Field,
    Match,
    Pipeline,
    Range,
    ScoreSum,
    Table,
    Ternary,
)
from homunculus.passes.switch import FLOW_CLASS, FLOW_COUNT, MODEL_CLASS
from homunculus.targets.p4.flow_twin import (
    eligible_packets,
    run_decisions,
    run_flow_program,
    trace_flow_program,
)


@dataclass(frozen=True)
class TwinResult:
    """Per sample: the class index and the verdict fields the pipeline produced."""

    class_index: np.ndarray
    fields: dict[str, np.ndarray]


def _match_vector(match: Match, values: np.ndarray) -> np.ndarray:
    if isinstance(match, Ternary):
        return (values & match.mask) == (match.value & match.mask)
    if isinstance(match, Range):
        return (values >= match.lo) & (values <= match.hi)
    if isinstance(match, Exact):
        return values == match.value
    raise TypeError(f"unknown match {match!r}")


def key_values(table: Table, i: int, env: dict[str, np.ndarray]) -> np.ndarray:
    """Key ``i`` of ``table`` as matched: the field, or its one sliced bit."""
    values = env[table.keys[i].name]
    bit = table.key_slice(i)
    return values if bit is None else (values >> bit) & 1


def run_table(table: Table, env: dict[str, np.ndarray], n: int) -> None:
    """Apply ``table`` to every sample: the first matching entry's params, else the default."""
    outputs = [np.full(n, d, dtype=np.int64) for d in table.default]
    unmatched = np.ones(n, dtype=bool)
    keys = [key_values(table, i, env) for i in range(len(table.keys))]
    for entry in table.entries:
        hit = unmatched.copy()
        for values, match in zip(keys, entry.matches, strict=True):
            hit &= _match_vector(match, values)
        if not hit.any():
            continue
        for out, param in zip(outputs, entry.params, strict=True):
            out[hit] = param
        unmatched &= ~hit
    for field, values in zip(table.outputs, outputs, strict=True):
        env[field.name] = values & field.max_value


def run_score_sum(score_sum: ScoreSum, env: dict[str, np.ndarray], n: int) -> None:
    for out, terms, bias in zip(score_sum.outputs, score_sum.terms, score_sum.bias, strict=True):
        total = np.full(n, bias, dtype=np.int64)
        for term in terms:
            total = total + env[term.name]
        env[out.name] = total & out.max_value  # the hardware wraps; lowering must prevent it


def _operand(operand: Field | int, env: dict[str, np.ndarray], n: int) -> np.ndarray:
    if isinstance(operand, Field):
        return env[operand.name]
    return np.full(n, operand, dtype=np.int64)


def _run_ops(ops: tuple[AluOp, ...], env: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The values one action writes; every operand is read before any is written."""
    result: dict[str, np.ndarray] = {}
    for op in ops:
        a = _operand(op.a, env, n)
        if op.kind is AluKind.SET:
            value = a
        else:
            assert op.b is not None
            b = _operand(op.b, env, n)
            value = a + b if op.kind is AluKind.ADD else a - b
        result[op.dst.name] = value & op.dst.max_value
    return result


def run_alu_step(step: AluStep, env: dict[str, np.ndarray], n: int) -> None:
    """One action (or, with a guard, a one-bit gateway choosing between two actions)."""
    taken = _run_ops(step.ops, env, n)
    if step.guard is None:
        env.update(taken)
        return
    field, bit = step.guard
    on = ((env[field.name] >> bit) & 1).astype(bool)
    other = _run_ops(step.otherwise, env, n)
    for name in set(taken) | set(other):
        old = env.get(name, np.zeros(n, dtype=np.int64))
        env[name] = np.where(on, taken.get(name, old), other.get(name, old))


def run_argmax(argmax: Argmax, env: dict[str, np.ndarray]) -> None:
    """Pairwise tournament, lower index wins ties: the generated code's exact order."""
    contenders = [(np.full_like(env[s.name], i), env[s.name]) for i, s in enumerate(argmax.scores)]
    while len(contenders) > 1:
        nxt = []
        for a in range(0, len(contenders) - 1, 2):
            (ia, va), (ib, vb) = contenders[a], contenders[a + 1]
            right_wins = vb > va
            nxt.append((np.where(right_wins, ib, ia), np.where(right_wins, vb, va)))
        if len(contenders) % 2:
            nxt.append(contenders[-1])
        contenders = nxt
    env[argmax.output.name] = contenders[0][0]


def simulate(pipeline: Pipeline, x: np.ndarray,
             extra: dict[str, np.ndarray] | None = None, *,
             carried: dict[str, np.ndarray] | None = None) -> TwinResult:
    """Run ``pipeline`` on integer feature rows ``x`` (n, n_features): the IR's reference
    execution (tables and ALU steps in their order, or the MLP's arg-max, then the verdict
    table). ``extra``: other fields the tables read (the model version of versioned programs;
    a per-flow decision's flow count and stored class; 0 when they read them and they are not
    given: with a decision, every row is then decided by the model). ``carried``: the values of
    the carry-in fields (a split model's partial results from the previous device), by field
    name."""
    x = np.asarray(x, dtype=np.int64)
    n = len(x)
    env: dict[str, np.ndarray] = {}
    if any(k.name == "model_version" for t in pipeline.tables() for k in t.keys):
        env["model_version"] = np.zeros(n, dtype=np.int64)
    if pipeline.decider is not None:
        env[FLOW_COUNT] = np.zeros(n, dtype=np.int64)
        env[FLOW_CLASS] = np.zeros(n, dtype=np.int64)
    for name, values in (extra or {}).items():
        env[name] = np.broadcast_to(np.asarray(values, dtype=np.int64), (n,)).copy()
    for j, feature in enumerate(pipeline.features):
        env[feature.field.name] = x[:, j] & feature.field.max_value
    for field in pipeline.carry_in:
        if carried is None or field.name not in carried:
            raise ValueError(f"no carried value for {field.name}")
        env[field.name] = np.asarray(carried[field.name], dtype=np.int64) & field.max_value
    if pipeline.mlp is not None:  # the dense stage of kernel/C pipelines: QMLP.scores arg-max
        masked = np.stack([env[f.field.name] for f in pipeline.features], axis=1)
        env[pipeline.winner_field().name] = np.argmax(pipeline.mlp.scores(masked), axis=1)
    for item in pipeline.sequence():
        if isinstance(item, Table):
            run_table(item, env, n)
        else:
            run_alu_step(item, env, n)
    if pipeline.score_sum is not None and pipeline.argmax is not None:  # not switch-lowered
        run_score_sum(pipeline.score_sum, env, n)
        run_argmax(pipeline.argmax, env)
    if pipeline.decider is not None:
        run_table(pipeline.decider, env, n)
    run_table(pipeline.verdict, env, n)
    if pipeline.shortcut is not None:  # not yet lowered to tables: its hits decide
        features = np.stack([env[f.field.name] for f in pipeline.features], axis=1)
        hit, rows = pipeline.shortcut.lookup(features)
        for i, out in enumerate(pipeline.verdict.outputs):
            env[out.name] = np.where(hit, rows[:, i], env[out.name])
    return TwinResult(env[pipeline.class_field.name], env)


def with_installed_entries(pipeline: Pipeline,
                           installed: dict[str, tuple[tuple, tuple[int, ...]]]) -> Pipeline:
    """The pipeline with every table's entries and default replaced by what was installed."""

    def swap(table: Table) -> Table:
        if table.name not in installed:
            raise KeyError(f"no entries were written for table '{table.name}'")
        entries, default = installed[table.name]
        return replace(table, entries=tuple(entries), default=tuple(default))

    return replace(
        pipeline,
        encoders=tuple(swap(t) for t in pipeline.encoders),
        lookups=tuple(swap(t) for t in pipeline.lookups),
        decider=None if pipeline.decider is None else swap(pipeline.decider),
        verdict=swap(pipeline.verdict),
    )


def header_feature_values(pipeline: Pipeline, table: pd.DataFrame) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """Header features copied as the parser sees them, and the mask of packets carrying every
    header they read (as the generated classification condition requires)."""
    n = len(table)
    values = np.zeros((n, len(pipeline.features)), dtype=np.int64)
    carried = np.ones(n, dtype=bool)
    for j, feature in enumerate(pipeline.features):
        if feature.flow:
            continue
        if feature.header_field is None:
            raise ValueError(f"feature '{feature.name}' is read from the Homunculus feature "
                             "header, which real captures do not carry; compile from traffic")
        values[:, j] = header_values(table, feature.header_field)
        flag = required_header(feature.header_field)
        if flag is not None:
            carried &= table[flag].to_numpy(bool)
    return values, carried


def simulate_packets(pipeline: Pipeline, table: pd.DataFrame) -> tuple[TwinResult, np.ndarray]:
    """Run the whole data plane over a packet table: flow registers, header copies, tables,
    verdict. Each capture (file_id) starts with fresh flow state. Returns the result for the
    classified packets and the classified mask."""
    from homunculus.data.traffic import per_capture

    values, carried = header_feature_values(pipeline, table)
    eligible = eligible_packets(table)
    classified = eligible & carried
    if pipeline.flow is None:
        return simulate(pipeline, values[classified]), classified
    program, n = pipeline.flow, len(pipeline.features)
    flow_cols = [j for j, f in enumerate(pipeline.features) if f.flow]
    if pipeline.decider is None:
        flow_values, _ = per_capture(table, lambda t: run_flow_program(program, t, n))
        values[:, flow_cols] = flow_values[:, flow_cols]
        return simulate(pipeline, values[classified]), classified
    # the per-flow decision: the model's class of every packet, then the decision register
    # packet by packet (each capture with fresh state), then the verdict table
    count = np.zeros(len(table), dtype=np.int64)
    stored = np.zeros(len(table), dtype=np.int64)
    ids = table["file_id"].to_numpy()
    for f in pd.unique(ids):
        rows = np.nonzero(ids == f)[0]
        part = table.iloc[rows]
        flow_values, ok, trace = trace_flow_program(program, part, n)
        values[np.ix_(rows, flow_cols)] = flow_values[:, flow_cols]
        model = np.zeros(len(rows), dtype=np.int64)
        if (classified[rows]).any():
            picked = classified[rows]
            model[picked] = simulate(pipeline, values[rows][picked]).fields[MODEL_CLASS]
        count[rows], stored[rows] = run_decisions(program, trace, ok & classified[rows], model)
    result = simulate(pipeline, values[classified],
                      {FLOW_COUNT: count[classified], FLOW_CLASS: stored[classified]})
    return result, classified
