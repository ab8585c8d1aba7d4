"""The eBPF/XDP target: capacity, cost model, emission, and test-run twins."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from homunculus.ir.cpu import CpuProgram
from homunculus.ir.names import sanitise_identifier
from homunculus.ir.telemetry import TelemetryConfig
from homunculus.targets.base import Limits, Usage
from homunculus.targets.p4.twin import TwinResult
from homunculus.targets.xdp import cost
from homunculus.targets.xdp.build import build_source
from homunculus.targets.xdp.codegen import emit_xdp
from homunculus.targets.xdp.layout import (
    CAPACITY_KNOBS,
    DEFAULT_HEADROOM,
    Capacity,
    capacity_for,
)
from homunculus.targets.xdp.runner import load_built, run_packets, run_vectors
from homunculus.targets.xdp.snapshot import snapshot_of


def object_stem(program_name: str) -> str:
    """A file-name-safe stem for the program's files."""
    if re.fullmatch(r"[a-z_][a-z0-9_]{0,63}", program_name):
        return program_name
    return sanitise_identifier(program_name, "prog")


@dataclass(frozen=True)
class XdpProfile:
    """What a spec may set under ``platform.profile`` for XDP: the headroom of the compiled
    capacity over the model's needs, or the capacity itself (layout.py)."""

    name: str = "xdp"
    headroom: float = DEFAULT_HEADROOM
    max_trees: int | None = None
    max_nodes: int | None = None  # per tree
    max_depth: int | None = None
    max_bins: int | None = None  # per feature
    max_width: int | None = None  # hidden-layer outputs

    def capacity_overrides(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in CAPACITY_KNOBS if getattr(self, k) is not None}

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class XdpTarget:
    """eBPF XDP on Linux (kernel >= 5.17 for bpf_loop)."""

    profile: XdpProfile = field(default_factory=XdpProfile)
    name: str = "xdp"
    arch: str = "xdp"
    supports_dense: bool = True  # packed multiply-accumulates: MLPs run here
    lowering: str = "cpu"  # runs the CPU program (passes/lower_cpu.py), not table pipelines
    telemetry: TelemetryConfig | None = None  # sample packets into a ring buffer (adapt)

    @classmethod
    def with_overrides(cls, overrides: dict[str, object]) -> XdpTarget:
        known = {f.name for f in fields(XdpProfile)} - {"name"}
        bad = sorted(set(overrides) - known)
        if bad:
            raise KeyError(f"unknown profile field(s) {bad}; known: {sorted(known)}")
        headroom = overrides.get("headroom", DEFAULT_HEADROOM)
        if not isinstance(headroom, int | float) or headroom < 1:
            raise KeyError(f"headroom must be a number >= 1 (got {headroom!r})")
        for knob in CAPACITY_KNOBS:
            value = overrides.get(knob)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise KeyError(f"{knob} must be a positive integer (got {value!r})")
        return cls(XdpProfile(**overrides))  # type: ignore[arg-type]

    def default_limits(self) -> Limits:
        """No device limits beyond the verifier's (checked when the program loads)."""
        return Limits()

    def capacity(self, program: CpuProgram) -> Capacity:
        return capacity_for(program, self.profile.headroom, self.profile.capacity_overrides())

    def prepare(self, program: CpuProgram) -> CpuProgram:
        """Nothing to do: the CPU program is what the maps hold."""
        return program

    def estimate(self, program: CpuProgram) -> Usage:
        return cost.estimate(program, self.capacity(program))

    def emit(self, program: CpuProgram, out_dir: Path, program_name: str, *,
             trace: int = 0) -> dict[str, Path]:
        """Write and compile the program for its capacity, and write its snapshot (the model,
        interface and capacity) with what deployment needs: the object and the class labels
        (``trace`` > 0: a test build with the per-packet debug map)."""
        stem = object_stem(program_name)
        xdp_dir = out_dir / "xdp"
        cap = self.capacity(program)
        text = emit_xdp(program, cap, name=program_name, trace=trace, telemetry=self.telemetry)
        source, obj = build_source(text, xdp_dir, stem)
        snapshot = snapshot_of(program, cap) | {
            "object": obj.name, "program": stem, "labels": list(program.class_labels),
            "telemetry": None if self.telemetry is None else self.telemetry.as_json()}
        snap = xdp_dir / "snapshot.json"
        snap.write_text(json.dumps(snapshot, indent=1) + "\n")
        return {"bpf_c": source, "bpf_o": obj, "snapshot": snap}

    def run_twin(self, program: CpuProgram, out_dir: Path, x: np.ndarray) -> TwinResult:
        """Run feature rows ``x`` through the built program (BPF_PROG_TEST_RUN) with the
        written snapshot installed."""
        obj, _ = load_built(out_dir)
        with obj:
            result, _ = run_vectors(obj, program, x)
        return result

    def run_packets(self, program: CpuProgram, out_dir: Path,
                    table: pd.DataFrame) -> tuple[TwinResult, np.ndarray]:
        """Run a packet table through the built program in order (test clock = capture time):
        the result for the classified packets and the classified mask."""
        obj, _ = load_built(out_dir)
        with obj:
            result, classified, _ = run_packets(obj, program, table)
        return result, classified
