"""Compile generated eBPF C to a BPF object with clang (``-O2 -g -target bpf -Werror``)."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

from homunculus.errors import HomunculusError


class BuildError(HomunculusError):
    """clang is missing or rejected the generated program."""


CLANG_FLAGS = ("-O2", "-g", "-target", "bpf", "-Wall", "-Werror", "-Wno-unused-function",
               "-Wno-unused-variable", "-Wno-unused-label",
               "-Wno-unused-but-set-variable")


def find_clang() -> str:
    for name in ("clang", "clang-14", "clang-15", "clang-16", "clang-17", "clang-18"):
        path = shutil.which(name)
        if path:
            return path
    raise BuildError("clang not found: install clang (>= 12) to build XDP programs")


def include_flags() -> list[str]:
    """``asm/types.h`` lives under the multiarch include directory on Debian/Ubuntu."""
    multiarch = Path(f"/usr/include/{platform.machine()}-linux-gnu")
    return [f"-I{multiarch}"] if multiarch.is_dir() else []


def compile_bpf(source: Path, output: Path, *, clang: str | None = None) -> Path:
    """Compile ``source`` to ``output``; raise BuildError with clang's diagnostics on failure."""
    cmd = [clang or find_clang(), *CLANG_FLAGS, *include_flags(), "-c", str(source), "-o",
           str(output)]
    output.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"clang failed ({proc.returncode}) on {source}:\n"
                         f"{proc.stderr.strip()[-4000:]}")
    return output


def build_source(text: str, out_dir: Path, name: str) -> tuple[Path, Path]:
    """Write ``<name>.bpf.c`` in ``out_dir`` and compile it to ``<name>.bpf.o``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    source = out_dir / f"{name}.bpf.c"
    source.write_text(text)
    return source, compile_bpf(source, out_dir / f"{name}.bpf.o")
