"""Switch target profiles: documented defaults a spec may override.

Tofino 1 figures are those the open-source Tofino backend of p4c models (bf-p4c
mau/tofino/memories.h, input_xbar.h, specs/device.cpp; see docs/targets.md): 12 stages; per
stage 16 logical tables, 8 ternary tables, 80 SRAM blocks of 1K x 128 bit, 24 TCAM blocks of
512 x 44 bit, 4 stateful ALUs, 16 gateways, 8 hash groups of 52 bits, 128 bytes of exact-match
and 12 groups of ternary-match crossbar, 128 bytes of action-data bus; ~4 Kbit of PHV; one
packet per clock (~1.2 Gpkt/s per pipeline). bmv2 is a software switch: no stage or memory
limits; its rate and latency are rough figures for simple_switch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from homunculus.targets.base import Limits, with_field_overrides


@dataclass(frozen=True)
class SwitchProfile:
    name: str
    arch: str  # "tna" or "v1model"
    stages: int | None
    tables_per_stage: int | None
    sram_blocks_per_stage: int | None
    tcam_blocks_per_stage: int | None
    phv_bits: int | None
    supports_range: bool
    pipeline_gpps: float
    base_latency_ns: float
    stage_latency_ns: float
    registers_per_stage: int | None = None  # stateful ALUs per stage (flow-state registers)
    ternary_tables_per_stage: int | None = None  # TCAM and ternary-indirect tables
    gateways_per_stage: int | None = None
    hash_bits_per_stage: int | None = None
    exact_xbar_bytes_per_stage: int | None = None
    ternary_xbar_groups_per_stage: int | None = None
    action_bus_bytes_per_stage: int | None = None
    sram_block_entries: int = 1024
    sram_block_width: int = 128
    tcam_block_entries: int = 512
    tcam_block_width: int = 44

    def default_limits(self) -> Limits:
        """Limits implied by the device itself (a spec's constraints tighten them)."""
        sram = tcam = None
        if self.stages is not None and self.sram_blocks_per_stage is not None:
            sram = self.stages * self.sram_blocks_per_stage * self.sram_block_bits / 1024
        if self.stages is not None and self.tcam_blocks_per_stage is not None:
            tcam = self.stages * self.tcam_blocks_per_stage * self.tcam_block_bits / 1024
        tables = (self.stages * self.tables_per_stage
                  if self.stages is not None and self.tables_per_stage is not None else None)
        return Limits(stages=self.stages, tables=tables, sram_kbit=sram, tcam_kbit=tcam,
                      phv_bits=self.phv_bits)

    @property
    def sram_block_bits(self) -> int:
        return self.sram_block_entries * self.sram_block_width

    @property
    def tcam_block_bits(self) -> int:
        return self.tcam_block_entries * self.tcam_block_width

    def with_overrides(self, overrides: dict[str, object]) -> SwitchProfile:
        return with_field_overrides(self, overrides, ("name", "arch"))

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


TOFINO = SwitchProfile(
    name="tofino", arch="tna", stages=12, tables_per_stage=16, sram_blocks_per_stage=80,
    tcam_blocks_per_stage=24, phv_bits=4096, supports_range=False, pipeline_gpps=1.2,
    base_latency_ns=150.0, stage_latency_ns=20.0, registers_per_stage=4,
    ternary_tables_per_stage=8, gateways_per_stage=16, hash_bits_per_stage=8 * 52,
    exact_xbar_bytes_per_stage=128, ternary_xbar_groups_per_stage=12,
    action_bus_bytes_per_stage=128,
)

BMV2 = SwitchProfile(
    name="bmv2", arch="v1model", stages=None, tables_per_stage=None, sram_blocks_per_stage=None,
    tcam_blocks_per_stage=None, phv_bits=None, supports_range=True, pipeline_gpps=0.0002,
    base_latency_ns=20000.0, stage_latency_ns=1000.0,
)

PROFILES = {p.name: p for p in (TOFINO, BMV2)}
