"""Time a generated C library in C (no Python in the loop): one row per ``hmn_classify`` call,
and ``hmn_classify_batch`` over all rows. Used by the calibration and by ``bench/kernel.py``.

The harness (``templates/timing.c.j2``) reads the rows from a binary file, runs each measurement
until it has taken at least ``min_ms`` and repeats it ``repeats`` times; the best time per row is
reported (the machine is shared: the best run is the least disturbed one).
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from homunculus.ir.cpu import CpuProgram
from homunculus.targets.c.build import run_gcc
from homunculus.targets.c.codegen import emit_c, render


@dataclass(frozen=True)
class CTiming:
    single_ns: float  # per hmn_classify call
    batch_ns: float  # per row of hmn_classify_batch
    classes: np.ndarray  # what the batch call returned


def build_harness(program: CpuProgram, work: Path, tree_code: str = "auto") -> Path:
    """Write the library source and the harness into ``work`` and compile them."""
    texts = emit_c(program, name="timed", tree_code=tree_code)
    for name, text in texts.items():
        (work / name).write_text(text)
    harness = work / "timing.c"
    harness.write_text(render("timing.c.j2", {"stem": "hmn_timed"}))
    exe = work / "timing"
    run_gcc([f"-I{work}", "-o", str(exe), str(harness), str(work / "hmn_timed.c")])
    return exe


def run_harness(exe: Path, x: np.ndarray, *, repeats: int = 5, min_ms: float = 20.0) -> CTiming:
    rows = np.ascontiguousarray(np.asarray(x, dtype=np.int64).astype(np.uint32))
    with tempfile.TemporaryDirectory(prefix="hmn_timing_") as tmp:
        data, out = Path(tmp) / "rows.bin", Path(tmp) / "classes.bin"
        rows.tofile(data)
        proc = subprocess.run([str(exe), str(data), str(len(rows)), str(out), str(repeats),
                               str(min_ms)], capture_output=True, text=True, check=True)
        classes = np.fromfile(out, dtype=np.int32).astype(np.int64)
    single, batch = (float(v) for v in proc.stdout.split())
    return CTiming(single, batch, classes)


def time_program(program: CpuProgram, x: np.ndarray, *, tree_code: str = "auto",
                 repeats: int = 5, min_ms: float = 20.0) -> CTiming:
    """Build ``program`` with the harness and time it on rows ``x``."""
    with tempfile.TemporaryDirectory(prefix="hmn_timing_") as tmp:
        exe = build_harness(program, Path(tmp), tree_code)
        return run_harness(exe, x, repeats=repeats, min_ms=min_ms)
