"""Resource model of a match-action switch: units per stage, table memory, PHV, rate, latency.

The program is described unit by unit (targets/p4/units.py mirrors the templates) and placed
into stages by passes/allocate.py under the profile's per-stage limits; memory is counted in
whole blocks as allocated.
"""

from __future__ import annotations

import math

from homunculus.ir.pipeline import Pipeline
from homunculus.passes.allocate import StageCaps, place, stage_usage
from homunculus.passes.switch import lower_for_switch
from homunculus.targets.base import Usage
from homunculus.targets.p4.codegen import build_context
from homunculus.targets.p4.profiles import SwitchProfile
from homunculus.targets.p4.units import program_units

HEADER_BITS = {"ethernet": 112, "vlan0": 32, "vlan1": 32, "ipv4": 160, "tcp": 160, "udp": 64}


def stage_caps(profile: SwitchProfile) -> StageCaps:
    return StageCaps(
        logical=profile.tables_per_stage, ternary=profile.ternary_tables_per_stage,
        tcam_blocks=profile.tcam_blocks_per_stage, sram_blocks=profile.sram_blocks_per_stage,
        salus=profile.registers_per_stage, gateways=profile.gateways_per_stage,
        hash_bits=profile.hash_bits_per_stage,
        exact_xbar_bytes=profile.exact_xbar_bytes_per_stage,
        ternary_xbar_groups=profile.ternary_xbar_groups_per_stage,
        action_bus_bytes=profile.action_bus_bytes_per_stage,
        sram_block_bits=profile.sram_block_bits, tcam_block_bits=profile.tcam_block_bits)


def container_bits(width: int) -> int:
    """PHV containers are 8, 16 or 32 bits; wider fields take several 32-bit containers."""
    if width <= 8:
        return 8
    if width <= 16:
        return 16
    return 32 * math.ceil(width / 32)


def phv_bits(pipeline: Pipeline, arch: str) -> int:
    """Headers plus every metadata field the program declares, each in its own container."""
    context = build_context(pipeline, arch, program_name="estimate", feature_udp_port=1)
    headers = sum(HEADER_BITS.values())
    if context["feature_header"] is not None:
        fh = context["feature_header"]
        headers += sum(f["width"] for f in fh["fields"]) + fh["pad"]
    carry = context["carry"]
    if carry is not None:
        headers += sum(8 * carry[side]["bytes"] for side in ("in", "out") if carry[side])
    return headers + sum(container_bits(f["width"]) for f in context["meta_fields"])


def estimate(pipeline: Pipeline, profile: SwitchProfile, *, telemetry: bool = False) -> Usage:
    pipeline = lower_for_switch(pipeline)
    caps = stage_caps(profile)
    units = program_units(pipeline, profile, telemetry=telemetry)
    stages = place(units, caps)
    per_stage = stage_usage(stages, caps)
    n_stages = len(per_stage)
    tables = [u for u in units if u.kind == "table"]
    return Usage(
        stages=n_stages,
        tables=len(tables),
        sram_kbit=sum(u.sram_blocks for u in units) * profile.sram_block_bits / 1024,
        tcam_kbit=sum(u.tcam_blocks for u in units) * profile.tcam_block_bits / 1024,
        entries=sum(len(t.entries) for t in pipeline.tables()),
        phv_bits=phv_bits(pipeline, profile.arch),
        throughput_gpps=profile.pipeline_gpps,
        latency_ns=profile.base_latency_ns + n_stages * profile.stage_latency_ns,
        per_stage=per_stage,
    )
