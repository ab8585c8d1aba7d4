"""Resource model of a match-action switch: table memory, PHV, stages, rate and latency."""

from __future__ import annotations

import math

from homunculus.ir.pipeline import MatchKind, Pipeline, Table
from homunculus.passes.allocate import StageCaps, TableCost, allocate, register_blocks
from homunculus.targets.base import Usage
from homunculus.targets.p4.profiles import SwitchProfile

HEADER_BITS = {"ethernet": 112, "vlan0": 32, "vlan1": 32, "ipv4": 160, "tcp": 160, "udp": 64}


def table_cost(table: Table, profile: SwitchProfile) -> TableCost:
    """Memory of one table: exact keys and action data in SRAM words; ternary keys in TCAM."""
    n = len(table.entries)
    if n == 0 or not table.keys:
        return TableCost(n, 0, 0, 0, 0)
    data = table.data_width
    if table.match_kind is MatchKind.EXACT:
        words = math.ceil((table.key_width + data) / profile.sram_block_width)
        sram = math.ceil(n / profile.sram_block_entries) * words
        return TableCost(n, sram, 0, sram * profile.sram_block_bits, 0)
    tcam = math.ceil(n / profile.tcam_block_entries) * math.ceil(
        table.key_width / profile.tcam_block_width)
    sram = math.ceil(n / profile.sram_block_entries) * math.ceil(data / profile.sram_block_width)
    return TableCost(n, sram, tcam, sram * profile.sram_block_bits, tcam * profile.tcam_block_bits)


def container_bits(width: int) -> int:
    """PHV containers are 8, 16 or 32 bits; wider fields take several 32-bit containers."""
    if width <= 8:
        return 8
    if width <= 16:
        return 16
    return 32 * math.ceil(width / 32)


def phv_bits(pipeline: Pipeline) -> int:
    headers = sum(HEADER_BITS.values())
    unbound = [f.field.width for f in pipeline.features if f.header_field is None]
    if unbound:
        headers += 8 * math.ceil(sum(unbound) / 8)
    fields = {f.field.name: f.field.width for f in pipeline.features}
    for table in pipeline.tables():
        fields.update({o.name: o.width for o in table.outputs})
    if pipeline.score_sum is not None:
        fields.update({o.name: o.width for o in pipeline.score_sum.outputs})
        # the arg-max tournament keeps one (index, score) pair per match
        top = max(o.width for o in pipeline.score_sum.outputs)
        n = len(pipeline.score_sum.outputs)
        fields.update({f"argmax_tmp{i}": top + 8 for i in range(max(n - 2, 0))})
    return headers + sum(container_bits(w) for w in fields.values())


def flow_phv_bits(pipeline: Pipeline) -> int:
    """Metadata of the flow block: L4 ports, hash, slot, signature, flag, times."""
    if pipeline.flow is None:
        return 0
    fields = [16, 16, 32, 16, 16, 8, 32]  # sport, dport, hash, slot, sig, new_flow, now
    sources = {o.source for o in pipeline.flow.outputs}
    fields += [32] * (("iat" in sources or any(r.op == "iat_bin"
                                               for r in pipeline.flow.registers))
                      + ("age" in sources))
    return sum(fields)


def estimate(pipeline: Pipeline, profile: SwitchProfile) -> Usage:
    costs = {t.name: table_cost(t, profile) for t in pipeline.tables()}
    caps = StageCaps(profile.tables_per_stage, profile.sram_blocks_per_stage,
                     profile.tcam_blocks_per_stage, profile.sram_block_bits,
                     profile.tcam_block_bits, profile.registers_per_stage)
    per_stage = allocate(pipeline, costs, caps)
    n_stages = len(per_stage)
    register_sram = sum(register_blocks(pipeline, caps).values()) * profile.sram_block_bits
    return Usage(
        stages=n_stages,
        tables=len(costs),
        sram_kbit=(sum(c.sram_bits for c in costs.values()) + register_sram) / 1024,
        tcam_kbit=sum(c.tcam_bits for c in costs.values()) / 1024,
        entries=sum(c.entries for c in costs.values()),
        phv_bits=phv_bits(pipeline) + flow_phv_bits(pipeline),
        throughput_gpps=profile.pipeline_gpps,
        latency_ns=profile.base_latency_ns + n_stages * profile.stage_latency_ns,
        per_stage=per_stage,
    )
