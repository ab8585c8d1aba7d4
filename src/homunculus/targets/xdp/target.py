"""The eBPF/XDP target: passes, cost model, emission, and test-run twins."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from homunculus.ir.names import sanitise_identifier
from homunculus.ir.pipeline import Pipeline
from homunculus.passes.encode import encode_for_target
from homunculus.targets.base import Limits, Usage
from homunculus.targets.p4.twin import TwinResult
from homunculus.targets.xdp import cost
from homunculus.targets.xdp.build import build_source
from homunculus.targets.xdp.codegen import emit_xdp, shape_digest
from homunculus.targets.xdp.runner import load_built, run_packets, run_vectors
from homunculus.targets.xdp.snapshot import snapshot_of


def object_stem(program_name: str) -> str:
    """A file-name-safe stem for the program's files."""
    if re.fullmatch(r"[a-z_][a-z0-9_]{0,63}", program_name):
        return program_name
    return sanitise_identifier(program_name, "prog")


@dataclass(frozen=True)
class XdpTarget:
    """eBPF XDP on Linux (kernel >= 5.17 for bpf_loop)."""

    name: str = "xdp"
    arch: str = "xdp"
    supports_dense: bool = True  # C loops multiply-accumulate: MLP snapshots run here

    @classmethod
    def with_overrides(cls, overrides: dict[str, object]) -> XdpTarget:
        """The XDP target has no profile fields to override yet (its costs are in cost.py)."""
        if overrides:
            raise KeyError(f"unknown profile field(s) {sorted(overrides)}; the xdp target has "
                           "none")
        return cls()

    def default_limits(self) -> Limits:
        """No device limits beyond the verifier's (checked when the program loads)."""
        return Limits()

    def prepare(self, pipeline: Pipeline) -> Pipeline:
        """Range matching costs nothing extra in a linear scan: keep ranges, elide defaults."""
        return encode_for_target(pipeline, supports_range=True)

    def estimate(self, pipeline: Pipeline) -> Usage:
        return cost.estimate(pipeline)

    def emit(self, pipeline: Pipeline, out_dir: Path, program_name: str, *,
             trace: int = 0) -> dict[str, Path]:
        """Write and compile the program, and write its map contents (snapshot.json) with what
        deployment needs: the object, the class labels and the program's shape digest
        (``trace`` > 0: a test build with the per-packet debug map)."""
        stem = object_stem(program_name)
        xdp_dir = out_dir / "xdp"
        text = emit_xdp(pipeline, name=program_name, trace=trace)
        source, obj = build_source(text, xdp_dir, stem)
        snapshot = snapshot_of(pipeline) | {"object": obj.name, "program": stem,
                                            "labels": list(pipeline.class_labels),
                                            "shape": shape_digest(text)}
        snap = xdp_dir / "snapshot.json"
        snap.write_text(json.dumps(snapshot, indent=1) + "\n")
        return {"bpf_c": source, "bpf_o": obj, "snapshot": snap}

    def run_twin(self, pipeline: Pipeline, out_dir: Path, x: np.ndarray) -> TwinResult:
        """Run feature rows ``x`` through the built program (BPF_PROG_TEST_RUN) with the
        written snapshot installed."""
        obj, _ = load_built(out_dir)
        with obj:
            result, _ = run_vectors(obj, pipeline, x)
        return result

    def run_packets(self, pipeline: Pipeline, out_dir: Path,
                    table: pd.DataFrame) -> tuple[TwinResult, np.ndarray]:
        """Run a packet table through the built program in order (test clock = capture time):
        the result for the classified packets and the classified mask."""
        obj, _ = load_built(out_dir)
        with obj:
            result, classified, _ = run_packets(obj, pipeline, table)
        return result, classified
