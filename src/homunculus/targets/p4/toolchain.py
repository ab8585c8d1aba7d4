"""The vendor-toolchain hook: run a real P4 compiler on a generated program and read its report.

Compilers by architecture (found on PATH in this order, or given explicitly):

* TNA (Tofino 1): ``bf-p4c`` or ``p4c-barefoot``, run as
  ``TOOL --target tofino --arch tna -g -o BUILD program.p4``; the resource report is
  ``BUILD/pipe/logs/resources.json`` (``resources.mau.mau_stages[]``: one element per stage used,
  with its logical tables, SRAM and TCAM blocks; a rejected program has none).
* v1model (bmv2): ``p4c-bm2-ss``, run as ``p4c-bm2-ss --std p4-16 -o BUILD/program.json
  program.p4``; it reports acceptance only.

Everything here is pure except :func:`run_toolchain` and :func:`tool_version`, which run the
compiler (with a timeout, in a build directory the caller owns).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ARCH_TOOLS: dict[str, tuple[str, ...]] = {"tna": ("bf-p4c", "p4c-barefoot"),
                                          "v1model": ("p4c-bm2-ss",)}
ARCH_TARGET = {"tna": "tofino", "v1model": "bmv2"}
RESOURCES_JSON = Path("pipe") / "logs" / "resources.json"
EXCERPT_LINES = 8

_SUMMARY = re.compile(r"(\d+)\s+errors?,\s*(\d+)\s+warnings?\s+generated", re.I)
_ERROR = re.compile(r"(^|[\s\]:])error\b", re.I)
_WARNING = re.compile(r"(^|[\s\]:])warning\b", re.I)


class ToolchainPathError(ValueError):
    """A compiler given explicitly cannot be used (missing, not executable, wrong target)."""


@dataclass(frozen=True)
class Toolchain:
    """A P4 compiler for one architecture."""

    path: Path
    arch: str  # "tna" or "v1model"

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class StageReport:
    """One stage as the compiler placed it."""

    stage: int
    tables: tuple[str, ...]
    sram_blocks: int
    tcam_blocks: int


@dataclass(frozen=True)
class ResourceReport:
    """The figures of a Tofino ``resources.json``."""

    stages: tuple[StageReport, ...]
    chip_stages: int | None
    compiler_version: str | None

    @property
    def stages_used(self) -> int:
        """Pipeline depth: the last stage used + 1 (0 when nothing was placed)."""
        return max((s.stage for s in self.stages), default=-1) + 1

    @property
    def sram_blocks(self) -> int:
        return sum(s.sram_blocks for s in self.stages)

    @property
    def tcam_blocks(self) -> int:
        return sum(s.tcam_blocks for s in self.stages)

    @property
    def tables(self) -> int:
        return sum(len(s.tables) for s in self.stages)


@dataclass(frozen=True)
class LogSummary:
    errors: int
    warnings: int
    excerpt: str  # the first error lines (or the tail of the log when there is no error line)


@dataclass(frozen=True)
class ToolchainRun:
    """What one run of the compiler said."""

    tool: str
    command: tuple[str, ...]
    exit_code: int | None  # None: timed out
    seconds: float
    log: str
    summary: LogSummary
    resources: ResourceReport | None  # TNA only, when the compiler wrote its report

    @property
    def accepted(self) -> bool:
        return self.exit_code == 0

    @property
    def timed_out(self) -> bool:
        return self.exit_code is None


# ----------------------------------------------------------------------------- finding a tool


def tool_arch(path: Path) -> str | None:
    """The architecture a compiler's file name says it compiles for (None: not a known name)."""
    for arch, names in ARCH_TOOLS.items():
        if any(path.name == n or path.name.startswith(n + "-") for n in names):
            return arch
    return None


def check_tool(path: Path, arch: str) -> Toolchain:
    """``path`` as the compiler for ``arch``; raise ToolchainPathError saying what is wrong."""
    if not path.exists():
        raise ToolchainPathError(f"no such file: {path}")
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ToolchainPathError(f"{path} is not an executable file")
    named = tool_arch(path)
    if named is not None and named != arch:
        raise ToolchainPathError(
            f"{path.name} compiles for {ARCH_TARGET[named]} ({named}), but the target is "
            f"{ARCH_TARGET[arch]} ({arch}); give one of {list(ARCH_TOOLS[arch])}")
    return Toolchain(path.absolute(), arch)


def explicit_tool(value: str, arch: str, base: Path) -> Toolchain:
    """A compiler given by the user: a path (relative to ``base``) or a name on PATH."""
    if os.sep not in value and "/" not in value:
        found = shutil.which(value)
        if found is None:
            raise ToolchainPathError(f"'{value}' is not on PATH")
        return check_tool(Path(found), arch)
    path = Path(value).expanduser()
    return check_tool(path if path.is_absolute() else base / path, arch)


def find_tool(arch: str, search_path: str | None = None) -> Toolchain | None:
    """The first compiler for ``arch`` on PATH (``search_path`` replaces $PATH), or None."""
    for name in ARCH_TOOLS.get(arch, ()):
        found = shutil.which(name, path=search_path)
        if found is not None:
            return Toolchain(Path(found).absolute(), arch)
    return None


def missing_tool_reason(arch: str) -> str:
    names = ", ".join(ARCH_TOOLS[arch])
    return (f"no P4 compiler for {ARCH_TARGET[arch]} on PATH (looked for {names}); give one "
            "with --p4c PATH or platform.toolchain")


# ----------------------------------------------------------------------------- running it


def compile_command(tool: Toolchain, program: Path, build_dir: Path) -> tuple[str, ...]:
    """The command line that compiles ``program`` into ``build_dir``."""
    if tool.arch == "tna":
        return (str(tool.path), "--target", "tofino", "--arch", "tna", "-g",
                "-o", str(build_dir), str(program))
    return (str(tool.path), "--std", "p4-16", "-o", str(build_dir / f"{program.stem}.json"),
            str(program))


def tool_version(tool: Toolchain, timeout: float = 30.0) -> str | None:
    """The first line ``TOOL --version`` prints, or None when it says nothing useful."""
    try:
        done = subprocess.run([str(tool.path), "--version"], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [ln.strip() for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    return lines[0] if done.returncode == 0 and lines else None


def run_toolchain(tool: Toolchain, program: Path, build_dir: Path,
                  timeout: float) -> ToolchainRun:
    """Compile ``program`` into ``build_dir`` (which must exist); never raises on rejection.

    Raises OSError when the compiler cannot be started at all.
    """
    command = compile_command(tool, program, build_dir)
    start = time.monotonic()
    code, output = run_with_timeout(command, build_dir, timeout)
    seconds = time.monotonic() - start
    log = output.decode(errors="replace")
    resources = None
    if tool.arch == "tna":
        report = find_resources_json(build_dir)
        resources = None if report is None else read_resources(report)
    return ToolchainRun(tool.name, command, code, seconds, log, summarise_log(log), resources)


def run_with_timeout(command: tuple[str, ...], cwd: Path,
                     timeout: float) -> tuple[int | None, bytes]:
    """(exit code or None on timeout, stdout+stderr). The command runs in its own process
    group, so a timeout ends the compiler's helper processes too."""
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return None, output


def find_resources_json(build_dir: Path) -> Path | None:
    """``BUILD/pipe/logs/resources.json``, or the first one below BUILD (other layouts)."""
    direct = build_dir / RESOURCES_JSON
    if direct.is_file():
        return direct
    return next(iter(sorted(build_dir.glob(f"**/{RESOURCES_JSON}"))), None)


# ----------------------------------------------------------------------------- reading reports


def _count_blocks(memory: Any, key: str) -> int:
    """Distinct (row, column) blocks listed under ``memory[key]``."""
    if not isinstance(memory, dict):
        return 0
    blocks = memory.get(key) or []
    if not isinstance(blocks, list):
        raise ValueError(f"resources.json: '{key}' is not a list")
    return len({(b.get("row"), b.get("column")) for b in blocks if isinstance(b, dict)})


def _stage_report(stage: Any, index: int) -> StageReport:
    if not isinstance(stage, dict) or not isinstance(stage.get("stage_number"), int):
        raise ValueError(f"resources.json: mau_stages[{index}] has no stage_number")
    ids = (stage.get("logical_tables") or {}).get("ids") or []
    tables = tuple(str(t["table_name"]) for t in ids if isinstance(t, dict) and "table_name" in t)
    return StageReport(stage["stage_number"], tables, _count_blocks(stage.get("rams"), "srams"),
                       _count_blocks(stage.get("tcams"), "tcams"))


def parse_resources(data: Any) -> ResourceReport:
    """The stages, tables and memory blocks of a parsed ``resources.json``."""
    mau = data.get("resources", {}).get("mau") if isinstance(data, dict) else None
    if not isinstance(mau, dict) or not isinstance(mau.get("mau_stages"), list):
        raise ValueError("resources.json: no resources.mau.mau_stages list")
    stages = tuple(sorted((_stage_report(s, i) for i, s in enumerate(mau["mau_stages"])),
                          key=lambda s: s.stage))
    chip = mau.get("nStages")
    version = data.get("compiler_version")
    return ResourceReport(stages, chip if isinstance(chip, int) else None,
                          str(version) if version is not None else None)


def read_resources(path: Path) -> ResourceReport:
    """Read a Tofino compiler's ``resources.json`` (ValueError naming the file when malformed)."""
    try:
        return parse_resources(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def summarise_log(log: str) -> LogSummary:
    """Error and warning counts (the compiler's own summary line when it printed one) and an
    excerpt starting at the first error line."""
    lines = log.splitlines()
    summary = _SUMMARY.search(log)
    if summary is not None:
        errors, warnings = int(summary.group(1)), int(summary.group(2))
    else:
        errors = sum(bool(_ERROR.search(ln)) for ln in lines)
        warnings = sum(bool(_WARNING.search(ln)) and not _ERROR.search(ln) for ln in lines)
    first = next((i for i, ln in enumerate(lines) if _ERROR.search(ln)), None)
    picked = lines[first:first + EXCERPT_LINES] if first is not None else lines[-EXCERPT_LINES:]
    return LogSummary(errors, warnings, "\n".join(ln.rstrip() for ln in picked).strip())


def rejection_message(run: ToolchainRun, program: str, timeout: float) -> str:
    """Why the compile fails, with the compiler's first error lines."""
    if run.timed_out:
        return (f"{run.tool} did not finish compiling {program} within {timeout:g} s "
                "(raise --p4c-timeout)")
    counts = f"{run.summary.errors} error(s), {run.summary.warnings} warning(s)"
    return (f"{run.tool} rejected the generated program {program} (exit {run.exit_code}; "
            f"{counts}):\n{run.summary.excerpt or '(the compiler printed nothing)'}")


# ----------------------------------------------------------------------------- report section


def resources_as_dict(res: ResourceReport, sram_block_bits: int | None,
                      tcam_block_bits: int | None) -> dict[str, Any]:
    """Real figures, with memory also in Kbit (blocks x the profile's block size)."""
    def kbit(blocks: int, bits: int | None) -> float | None:
        return None if bits is None else blocks * bits / 1024

    return {
        "stages": res.stages_used,
        "chip_stages": res.chip_stages,
        "tables": res.tables,
        "sram_blocks": res.sram_blocks,
        "tcam_blocks": res.tcam_blocks,
        "sram_kbit": kbit(res.sram_blocks, sram_block_bits),
        "tcam_kbit": kbit(res.tcam_blocks, tcam_block_bits),
        "compiler_version": res.compiler_version,
        "per_stage": [{"stage": s.stage, "tables": list(s.tables), "sram_blocks": s.sram_blocks,
                       "tcam_blocks": s.tcam_blocks} for s in res.stages],
    }


def run_as_dict(run: ToolchainRun, tool: Toolchain, version: str | None) -> dict[str, Any]:
    """The report's ``toolchain`` section for a compiler that ran."""
    return {
        "ran": True,
        "tool": run.tool,
        "path": str(tool.path),
        "version": version,
        "command": list(run.command),
        "accepted": run.accepted,
        "exit_code": run.exit_code,
        "timed_out": run.timed_out,
        "seconds": round(run.seconds, 3),
        "errors": run.summary.errors,
        "warnings": run.summary.warnings,
        "log_excerpt": run.summary.excerpt,
    }
