"""Compile generated C with gcc: a shared library (or an executable) with warnings as errors."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

CFLAGS = ("-O3", "-std=c11", "-Wall", "-Wextra", "-Werror")


class CompileError(RuntimeError):
    """gcc rejected the generated code; the message carries its command line and output."""


def compiler() -> str:
    cc = shutil.which("gcc")
    if cc is None:
        raise CompileError("gcc was not found on PATH; the C target needs it to build the library")
    return cc


def run_gcc(args: Sequence[str]) -> None:
    cmd = [compiler(), *CFLAGS, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise CompileError(f"gcc failed ({proc.returncode}): {' '.join(cmd)}\n"
                           f"{proc.stdout}{proc.stderr}")


def compile_shared(sources: Sequence[Path], out_dir: Path) -> Path:
    """Build ``lib<first source stem>.so`` in ``out_dir`` from the given C sources."""
    sources = [Path(s) for s in sources]
    c_files = [s for s in sources if s.suffix == ".c"]
    if not c_files:
        raise CompileError("no .c source to compile")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"lib{c_files[0].stem}.so"
    includes = sorted({f"-I{s.parent}" for s in sources})
    run_gcc(["-shared", "-fPIC", *includes, "-o", str(out), *map(str, c_files)])
    return out


def compile_executable(sources: Sequence[Path], out: Path) -> Path:
    """Build an executable ``out`` from the given C sources (e.g. the example program)."""
    c_files = [str(s) for s in sources if Path(s).suffix == ".c"]
    includes = sorted({f"-I{Path(s).parent}" for s in sources})
    run_gcc([*includes, "-o", str(out), *c_files])
    return out
