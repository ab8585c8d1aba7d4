"""What each model adds to a shared device, and what the device offers: the integer program's
linear constraints (schedule/joint.py).

On a switch, a model's cost is the sum over the units of its own tables and steps
(targets/p4/units.py) of every per-stage resource (logical tables, ternary tables, TCAM and SRAM
blocks, gateways, crossbar and action-bus bytes), its entries, its table count and the PHV of the
fields it writes. The device offers ``stages`` times each per-stage limit, and the spec's limits
(tables, SRAM, TCAM, entries, PHV), minus what the schedule's shared part uses (parser, feature
extraction, flow registers, the combining table). On a host (XDP, C) the models run one after
the other on a core: latencies and memory add up.
"""

from __future__ import annotations

import math
from typing import Any

from homunculus.ir.cpu import CpuProgram
from homunculus.ir.pipeline import Pipeline, Table
from homunculus.passes.switch import lower_for_switch
from homunculus.targets.base import Limits, Usage
from homunculus.targets.p4.resources import container_bits
from homunculus.targets.p4.units import program_units

PER_STAGE = {"logical": "tables_per_stage", "ternary": "ternary_tables_per_stage",
             "tcam_blocks": "tcam_blocks_per_stage", "sram_blocks": "sram_blocks_per_stage",
             "gateways": "gateways_per_stage", "salus": "registers_per_stage",
             "exact_xbar_bytes": "exact_xbar_bytes_per_stage",
             "ternary_xbar_groups": "ternary_xbar_groups_per_stage",
             "action_bus_bytes": "action_bus_bytes_per_stage"}
"""Unit resources with a per-stage limit (passes/allocate.py), by profile field."""


def model_unit_names(pipeline: Pipeline) -> set[str]:
    """Units of a model's own computation: its tables, its steps, its deciding table."""
    return {item.name for item in pipeline.sequence()} | {pipeline.verdict.name}


def units_cost(units: list[Any], pipeline: Pipeline | None = None) -> dict[str, float]:
    cost: dict[str, float] = {k: float(sum(getattr(u, k) for u in units)) for k in PER_STAGE}
    cost["entries"] = float(sum(u.entries for u in units))
    cost["tables"] = float(sum(u.kind == "table" for u in units))
    if pipeline is not None:
        written = {}
        for item in pipeline.sequence():
            fields = item.outputs if isinstance(item, Table) else item.writes
            for f in fields:
                written[f.name] = f.width
        cost["phv_bits"] = float(sum(container_bits(w) for w in written.values()))
    return cost


def switch_cost(pipeline: Pipeline, profile: Any) -> dict[str, float]:
    """What one model's own units use (a standalone pipeline; its front is shared)."""
    pipeline = lower_for_switch(pipeline)
    names = model_unit_names(pipeline)
    units = [u for u in program_units(pipeline, profile) if u.name in names]
    return units_cost(units, pipeline)


def switch_shared(fused: Pipeline, profile: Any, prefixes: list[str],
                  usage: Usage) -> dict[str, float]:
    """What a fused program uses besides its models' own units (and their fields)."""
    units = [u for u in program_units(fused, profile)
             if not any(u.name.startswith(p + "_") for p in prefixes)]
    cost = units_cost(units)
    written = 0.0
    for item in fused.sequence():
        fields = item.outputs if isinstance(item, Table) else item.writes
        written += sum(container_bits(f.width) for f in fields
                       if any(f.name.startswith(p + "_") for p in prefixes))
    cost["phv_bits"] = max(0.0, usage.phv_bits - written)
    return cost


def switch_capacity(profile: Any, limits: Limits, shared: dict[str, float]) -> dict[str, float]:
    """What the models may use together: per-stage limits times the stages, the spec's limits
    (in blocks where they are in Kbit), minus the shared part."""
    stages = limits.stages if limits.stages is not None else profile.stages
    cap: dict[str, float] = {}
    if stages is not None:
        for key, attr in PER_STAGE.items():
            per = getattr(profile, attr, None)
            if per is not None:
                cap[key] = float(stages * per)
    if limits.tables is not None:
        cap["tables"] = float(limits.tables)
    if limits.entries is not None:
        cap["entries"] = float(limits.entries)
    if limits.phv_bits is not None:
        cap["phv_bits"] = float(limits.phv_bits)
    if limits.sram_kbit is not None:
        blocks = math.floor(limits.sram_kbit * 1024 / profile.sram_block_bits)
        cap["sram_blocks"] = min(cap.get("sram_blocks", math.inf), float(blocks))
    if limits.tcam_kbit is not None:
        blocks = math.floor(limits.tcam_kbit * 1024 / profile.tcam_block_bits)
        cap["tcam_blocks"] = min(cap.get("tcam_blocks", math.inf), float(blocks))
    return {k: v - shared.get(k, 0.0) for k, v in cap.items()}


CPU_KEYS = ("latency_ns", "sram_kbit", "instructions")


def cpu_cost(usage: Usage) -> dict[str, float]:
    return {"latency_ns": float(usage.latency_ns), "sram_kbit": float(usage.sram_kbit),
            "instructions": float(usage.instructions)}


def cpu_capacity(limits: Limits) -> dict[str, float]:
    return {k: float(getattr(limits, k)) for k in CPU_KEYS if getattr(limits, k) is not None}


def cost_of(pipeline: Pipeline | CpuProgram, usage: Usage, target: Any) -> dict[str, float]:
    if isinstance(pipeline, CpuProgram):
        return cpu_cost(usage)
    return switch_cost(pipeline, target.profile)
