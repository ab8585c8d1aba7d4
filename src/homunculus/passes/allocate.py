"""Stage allocation: place tables and ALU work into pipeline stages, respecting dependencies.

A table can run once the fields its keys read are written; the score sum needs an adder tree of
depth ceil(log2(terms)); the arg-max a tournament of depth ceil(log2(classes)); the verdict table
reads the winner. Within a dependency level, tables are packed first-fit (largest first) into
stages with per-stage limits on logical tables and SRAM/TCAM blocks; a table too large for one
stage is split evenly over as many stages as it needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from homunculus.ir.pipeline import Pipeline, Table
from homunculus.targets.base import StageUsage


@dataclass(frozen=True)
class TableCost:
    entries: int
    sram_blocks: int
    tcam_blocks: int
    sram_bits: int
    tcam_bits: int


@dataclass(frozen=True)
class StageCaps:
    tables: int | None
    sram_blocks: int | None
    tcam_blocks: int | None
    sram_block_bits: int
    tcam_block_bits: int
    registers: int | None = None  # stateful ALUs per stage


@dataclass
class _Stage:
    tables: list[str]
    ops: list[str]
    entries: int = 0
    sram_blocks: int = 0
    tcam_blocks: int = 0
    registers: int = 0


def dependency_levels(pipeline: Pipeline) -> list[list[Table]]:
    """Tables grouped by the earliest level at which their keys are available."""
    written_at: dict[str, int] = {f.field.name: -1 for f in pipeline.features}
    levels: dict[int, list[Table]] = {}
    for table in (*pipeline.encoders, *pipeline.lookups):
        level = 1 + max((written_at.get(k.name, -1) for k in table.keys), default=-1)
        levels.setdefault(level, []).append(table)
        for out in table.outputs:
            written_at[out.name] = level
    return [levels[k] for k in sorted(levels)]


def adder_depth(pipeline: Pipeline) -> int:
    if pipeline.score_sum is None:
        return 0
    most = max(len(t) + (1 if b else 0)
               for t, b in zip(pipeline.score_sum.terms, pipeline.score_sum.bias, strict=True))
    return math.ceil(math.log2(most)) if most > 1 else 1


def argmax_depth(pipeline: Pipeline) -> int:
    if pipeline.argmax is None:
        return 0
    return max(1, math.ceil(math.log2(len(pipeline.argmax.scores))))


def _fits(stage: _Stage, cost: TableCost, caps: StageCaps, share: int) -> bool:
    if caps.tables is not None and len(stage.tables) >= caps.tables:
        return False
    sram = math.ceil(cost.sram_blocks / share)
    tcam = math.ceil(cost.tcam_blocks / share)
    if caps.sram_blocks is not None and stage.sram_blocks + sram > caps.sram_blocks:
        return False
    return not (caps.tcam_blocks is not None and stage.tcam_blocks + tcam > caps.tcam_blocks)


def _span(cost: TableCost, caps: StageCaps) -> int:
    """Stages a table must be split over so that each share fits an empty stage."""
    span = 1
    if caps.sram_blocks:
        span = max(span, math.ceil(cost.sram_blocks / caps.sram_blocks))
    if caps.tcam_blocks:
        span = max(span, math.ceil(cost.tcam_blocks / caps.tcam_blocks))
    return span


def _place(stages: list[_Stage], start: int, name: str, cost: TableCost, caps: StageCaps) -> int:
    """Place one table at the first stage >= start where it fits; return its last stage."""
    span = _span(cost, caps)
    s = start
    while True:
        while len(stages) < s + span:
            stages.append(_Stage([], []))
        window = stages[s:s + span]
        if all(_fits(st, cost, caps, span) for st in window):
            for st in window:
                st.tables.append(name)
                st.entries += math.ceil(cost.entries / span)
                st.sram_blocks += math.ceil(cost.sram_blocks / span)
                st.tcam_blocks += math.ceil(cost.tcam_blocks / span)
            return s + span - 1
        s += 1


def register_blocks(pipeline: Pipeline, caps: StageCaps) -> dict[str, int]:
    """SRAM blocks of every flow-state register array."""
    if pipeline.flow is None:
        return {}
    slots = pipeline.flow.config.slots
    return {r.name: math.ceil(slots * r.width / caps.sram_block_bits)
            for r in pipeline.flow.registers}


def _place_flow(stages: list[_Stage], pipeline: Pipeline, caps: StageCaps) -> int:
    """Place register arrays by dependency level (one stateful ALU each); return the next stage."""
    if pipeline.flow is None:
        return 0
    blocks = register_blocks(pipeline, caps)
    next_free = 0
    for level in (0, 1, 2):
        regs = [r for r in pipeline.flow.registers if r.stage == level]
        if not regs:
            continue
        last = next_free
        for r in regs:
            s = next_free
            while True:
                while len(stages) <= s:
                    stages.append(_Stage([], []))
                st = stages[s]
                alu_ok = caps.registers is None or st.registers < caps.registers
                mem_ok = (caps.sram_blocks is None
                          or st.sram_blocks + blocks[r.name] <= caps.sram_blocks)
                if alu_ok and mem_ok:
                    st.ops.append(f"register {r.name}")
                    st.registers += 1
                    st.sram_blocks += blocks[r.name]
                    last = max(last, s)
                    break
                s += 1
        next_free = last + 1
    return next_free


def allocate(pipeline: Pipeline, costs: dict[str, TableCost], caps: StageCaps
             ) -> tuple[StageUsage, ...]:
    """The per-stage plan: which registers, tables and ALU operations sit in which stage.

    Flow-state registers come first; tables start after them (conservative: a table keyed only
    on header fields could share the flow stages).
    """
    stages: list[_Stage] = []
    next_free = _place_flow(stages, pipeline, caps)
    for level in dependency_levels(pipeline):
        last = next_free - 1
        for table in sorted(level, key=lambda t: -(costs[t.name].sram_blocks
                                                    + costs[t.name].tcam_blocks)):
            last = max(last, _place(stages, next_free, table.name, costs[table.name], caps))
        next_free = last + 1
    for label, depth in (("sum", adder_depth(pipeline)), ("argmax", argmax_depth(pipeline))):
        for i in range(depth):
            while len(stages) <= next_free:
                stages.append(_Stage([], []))
            stages[next_free].ops.append(f"{label}[{i}]")
            next_free += 1
    _place(stages, next_free, pipeline.verdict.name, costs[pipeline.verdict.name], caps)
    return tuple(
        StageUsage(i, tuple(st.tables), tuple(st.ops), st.entries,
                   st.sram_blocks * caps.sram_block_bits, st.tcam_blocks * caps.tcam_block_bits)
        for i, st in enumerate(stages)
    )
