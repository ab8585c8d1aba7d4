"""The C target: a portable C11 library (and an example program) computing the verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from homunculus.ir.cpu import CpuProgram
from homunculus.targets.base import Limits, Usage
from homunculus.targets.c import resources
from homunculus.targets.c.build import compile_shared
from homunculus.targets.c.codegen import c_name, emit_c
from homunculus.targets.c.profiles import CProfile
from homunculus.targets.c.twin import CLibrary
from homunculus.targets.p4.twin import TwinResult


@dataclass(frozen=True)
class CTarget:
    profile: CProfile = field(default_factory=CProfile)
    supports_dense: bool = True  # loops multiply-accumulate: MLPs run here
    lowering: str = "cpu"  # runs the CPU program (passes/lower_cpu.py), not table pipelines

    @property
    def name(self) -> str:
        return "c"

    @classmethod
    def with_overrides(cls, overrides: dict[str, object]) -> CTarget:
        return cls(CProfile().with_overrides(overrides))

    def default_limits(self) -> Limits:
        return self.profile.default_limits()

    def prepare(self, program: CpuProgram) -> CpuProgram:
        """Nothing to do: the CPU program is what the library runs."""
        return program

    def estimate(self, program: CpuProgram) -> Usage:
        return resources.estimate(program, self.profile)

    def emit(self, program: CpuProgram, out_dir: Path, program_name: str) -> dict[str, Path]:
        """Write ``c/hmn_<name>.{h,c}``, ``example.c``, a Makefile, and build the library."""
        c_dir = out_dir / "c"
        c_dir.mkdir(parents=True, exist_ok=True)
        stem = f"hmn_{c_name(program_name)}"
        texts = emit_c(program, name=program_name, tree_code=self.profile.tree_code)
        paths = {name: c_dir / name for name in texts}
        for name, text in texts.items():
            paths[name].write_text(text)
        library = compile_shared([paths[f"{stem}.c"], paths[f"{stem}.h"]], c_dir)
        return {"c_header": paths[f"{stem}.h"], "c_source": paths[f"{stem}.c"],
                "c_library": library, "c_example": paths["example.c"],
                "c_makefile": paths["Makefile"]}

    def run_twin(self, program: CpuProgram, out_dir: Path, x: np.ndarray) -> TwinResult:
        """Run the library built in ``out_dir`` on feature rows ``x`` (class and verdict)."""
        libraries = sorted((out_dir / "c").glob("libhmn_*.so"))
        if len(libraries) != 1:
            raise FileNotFoundError(f"expected one libhmn_*.so in {out_dir / 'c'}, "
                                    f"found {len(libraries)}; emit first")
        return CLibrary(libraries[0]).classify_verdict(x)
