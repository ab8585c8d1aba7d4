"""The match-action switch target (Tofino/TNA and bmv2/v1model): passes, costs, emission."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from homunculus.ir.pipeline import Pipeline
from homunculus.ir.telemetry import TelemetryConfig
from homunculus.passes.encode import encode_for_target
from homunculus.passes.switch import lower_for_switch
from homunculus.targets.base import Usage
from homunculus.targets.p4 import resources
from homunculus.targets.p4.check import check_program
from homunculus.targets.p4.codegen import emit_p4
from homunculus.targets.p4.entries import (
    bfrt_loader,
    read_runtime_entries,
    runtime_entries,
    simple_switch_commands,
)
from homunculus.targets.p4.profiles import SwitchProfile
from homunculus.targets.p4.rules import check_rules
from homunculus.targets.p4.twin import TwinResult, simulate, with_installed_entries
from homunculus.targets.p4.versioned import versioned


@dataclass(frozen=True)
class SwitchTarget:
    profile: SwitchProfile
    supports_dense: bool = False  # match-action tables cannot multiply-accumulate
    telemetry: TelemetryConfig | None = None  # sample packets into a digest (adapt)
    versioned: bool = False  # model tables keyed on a version register (atomic installs)

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def arch(self) -> str:
        return self.profile.arch

    def prepare(self, pipeline: Pipeline) -> Pipeline:
        """Target-specific passes: ternary prefixes where range matching is missing, then the
        switch lowering (adder trees, sign-table arg-max, the verdict in the deciding table)."""
        return lower_for_switch(encode_for_target(pipeline, self.profile.supports_range),
                                staged=self.profile.stages is not None)

    def estimate(self, pipeline: Pipeline) -> Usage:
        keyed = versioned(pipeline, 0) if self.versioned else pipeline
        return resources.estimate(keyed, self.profile, telemetry=self.telemetry is not None)

    def emit(self, pipeline: Pipeline, out_dir: Path, program_name: str) -> dict[str, Path]:
        """Write the P4 program and its control-plane entries; check them against each other."""
        p4_text = emit_p4(pipeline, self.arch, program_name=program_name,
                          versioned=self.versioned, telemetry=self.telemetry)
        installed = versioned(pipeline, 0) if self.versioned else pipeline
        runtime = runtime_entries(installed, program_name=program_name, arch=self.arch)
        check_program(p4_text, runtime, flow=pipeline.flow)
        check_rules(p4_text, self.arch)
        files = {
            "p4": out_dir / "p4" / f"{program_name}.p4",
            "entries": out_dir / "runtime" / "entries.json",
        }
        if self.arch == "v1model":
            files["cli"] = out_dir / "runtime" / "simple_switch_cli.txt"
        else:
            files["bfrt"] = out_dir / "runtime" / "bfrt_load.py"
        for path in files.values():
            path.parent.mkdir(parents=True, exist_ok=True)
        files["p4"].write_text(p4_text)
        files["entries"].write_text(json.dumps(runtime, indent=1) + "\n")
        if "cli" in files:
            files["cli"].write_text(simple_switch_commands(installed))
        if "bfrt" in files:
            files["bfrt"].write_text(bfrt_loader(installed, program_name=program_name))
        if self.versioned or self.telemetry is not None:
            files["adapt"] = out_dir / "runtime" / "adapt.json"
            files["adapt"].write_text(json.dumps({
                "target": self.name, "versioned": self.versioned, "version": 0,
                "telemetry": None if self.telemetry is None else self.telemetry.as_json(),
                "digest": "hmn_sample_t" if self.telemetry is not None else None}, indent=1)
                + "\n")
        return files

    def run_twin(self, pipeline: Pipeline, out_dir: Path, x: np.ndarray) -> TwinResult:
        """Execute the entries written in ``out_dir`` on feature rows ``x``."""
        runtime = json.loads((out_dir / "runtime" / "entries.json").read_text())
        keyed = versioned(pipeline, 0) if self.versioned else pipeline
        installed = read_runtime_entries(runtime, keyed)
        return simulate(with_installed_entries(keyed, installed), x)
