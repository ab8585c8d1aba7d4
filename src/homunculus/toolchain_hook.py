"""The vendor-toolchain hook as the compiler driver uses it.

* :func:`resolve_hook`: which P4 compiler runs (``--p4c`` > ``platform.toolchain`` > PATH), or
  why none does; a bad path is a SpecError naming the option or the spec field.
* :func:`check_final_program`: compile the emitted program in a temporary build directory; a
  rejection (or a real stage count above the limit) is a ToolchainError with the compiler's first
  error lines; otherwise its log and report are kept under ``OUT/toolchain/`` and the report's
  ``toolchain`` section is returned.
* :func:`make_oracle`: the same compiler as a search trial's feasibility judge
  (``--toolchain-feasibility``).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homunculus.errors import SpecError, ToolchainError
from homunculus.frontend.plan import Plan
from homunculus.search.problem import Evaluation
from homunculus.search.study import OracleVerdict
from homunculus.targets.base import Limits, Target, Usage
from homunculus.targets.p4.toolchain import (
    ARCH_TOOLS,
    Toolchain,
    ToolchainPathError,
    ToolchainRun,
    explicit_tool,
    find_resources_json,
    find_tool,
    missing_tool_reason,
    rejection_message,
    resources_as_dict,
    run_as_dict,
    run_toolchain,
    tool_version,
)

DEFAULT_TIMEOUT = 900.0  # seconds; a Tofino compile of a large program takes minutes
ESTIMATES_NOTE = ("No P4 compiler ran: every resource figure in this report is Homunculus' own "
                  "estimate, not a compiler's.")
FEASIBILITY_FLAG = "--toolchain-feasibility"


@dataclass(frozen=True)
class Hook:
    """The compiler to run (None: none available, and why) and its settings."""

    tool: Toolchain | None
    reason: str | None  # why no compiler runs
    timeout: float
    version: str | None = None


def spec_dir(plan: Plan) -> Path:
    """Where relative paths of the platform section are taken from (the spec or the script)."""
    file, _ = plan.origins.get("platform", (plan.source, None))
    return Path(file).resolve().parent


def resolve_hook(plan: Plan, target: Target, p4c: str | None,
                 timeout: float | None) -> Hook:
    """Pick the compiler for ``target``: ``p4c`` (the CLI), then ``platform.toolchain``, then
    PATH. Raises SpecError when an explicit one is unusable or given for a non-P4 target."""
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    arch = getattr(target, "arch", None)
    if arch not in ARCH_TOOLS:
        if p4c is not None:
            raise SpecError(f"the target {target.name} is not compiled by a P4 compiler; "
                            "--p4c applies to tofino and bmv2", field="--p4c")
        if plan.platform.toolchain is not None:
            raise plan.error("platform.toolchain", f"the target {target.name} is not compiled by "
                             "a P4 compiler; toolchain applies to tofino and bmv2")
        return Hook(None, f"the {target.name} target has no vendor P4 compiler", timeout)
    try:
        if p4c is not None:
            tool = explicit_tool(p4c, arch, Path.cwd())
        elif plan.platform.toolchain is not None:
            tool = explicit_tool(plan.platform.toolchain, arch, spec_dir(plan))
        else:
            tool = find_tool(arch)
    except ToolchainPathError as exc:
        if p4c is not None:
            raise SpecError(str(exc), field="--p4c") from None
        raise plan.error("platform.toolchain", str(exc)) from None
    if tool is None:
        return Hook(None, missing_tool_reason(arch), timeout)
    return Hook(tool, None, timeout, tool_version(tool))


def require_tool(hook: Hook) -> Toolchain:
    """The compiler, for options that cannot work without one."""
    if hook.tool is None:
        raise SpecError(f"{FEASIBILITY_FLAG} needs a P4 compiler: {hook.reason}",
                        field=FEASIBILITY_FLAG)
    return hook.tool


def compile_program(hook: Hook, program: Path, build_dir: Path) -> ToolchainRun:
    """Run the hook's compiler on ``program``. A compiler that cannot start, or whose resource
    report cannot be read, is a ToolchainError."""
    assert hook.tool is not None
    try:
        return run_toolchain(hook.tool, program, build_dir, hook.timeout)
    except OSError as exc:
        raise ToolchainError(f"cannot run {hook.tool.path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ToolchainError(f"{hook.tool.name} wrote a resource report Homunculus cannot "
                             f"read: {exc}") from None


def stage_excess(run: ToolchainRun, limits: Limits) -> str | None:
    """Why the real stage count breaks the stage limit (None when it does not)."""
    if run.resources is None or limits.stages is None:
        return None
    used = run.resources.stages_used
    if used <= limits.stages:
        return None
    return f"{run.tool} placed the program in {used} stages, above the limit of {limits.stages}"


def _keep_outputs(run: ToolchainRun, build_dir: Path, out: Path, program: str) -> list[str]:
    """Copy the log, the resource report and bmv2's JSON into ``out/toolchain``."""
    dest = out / "toolchain"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"{run.tool}.log").write_text(run.log)
    kept = [f"toolchain/{run.tool}.log"]
    for source in (find_resources_json(build_dir), build_dir / f"{program}.json"):
        if source is not None and source.is_file():
            shutil.copy2(source, dest / source.name)
            kept.append(f"toolchain/{source.name}")
    return kept


def shown_command(command: tuple[str, ...], out: Path, build: Path) -> list[str]:
    """The command as the report shows it: paths relative to OUT, the build dir as BUILD."""
    def show(arg: str) -> str:
        for root, label in ((build, "BUILD"), (out, "")):
            with contextlib.suppress(ValueError):
                return str(Path(label) / Path(arg).relative_to(root))
        return arg

    return [command[0], *(show(a) for a in command[1:])]


def estimate_figures(usage: Usage) -> dict[str, Any]:
    return {"stages": usage.stages, "tables": usage.tables, "sram_kbit": usage.sram_kbit,
            "tcam_kbit": usage.tcam_kbit}


def check_final_program(hook: Hook, out: Path, program: str, usage: Usage, limits: Limits,
                        profile: Any) -> dict[str, Any]:
    """Compile ``out/p4/PROGRAM.p4``; raise ToolchainError if the compiler turns it down;
    return the report's ``toolchain`` section (``ran: false`` and why, without a compiler)."""
    if hook.tool is None:
        return {"ran": False, "reason": hook.reason, "note": ESTIMATES_NOTE}
    with tempfile.TemporaryDirectory(prefix="hmn-p4c-") as tmp:
        build = Path(tmp)
        run = compile_program(hook, out / "p4" / f"{program}.p4", build)
        if not run.accepted:
            raise ToolchainError(rejection_message(run, f"p4/{program}.p4", hook.timeout))
        excess = stage_excess(run, limits)
        if excess is not None:
            raise ToolchainError(f"{excess} (platform.constraints.resources.stages or the "
                                 f"profile); the estimate was {usage.stages}. Re-run with "
                                 f"{FEASIBILITY_FLAG} so the search counts the compiler's "
                                 "stages.")
        kept = _keep_outputs(run, build, out, program)
    section = run_as_dict(run, hook.tool, hook.version)
    section["command"] = shown_command(run.command, out, build)
    section["files"] = kept
    section["estimate"] = estimate_figures(usage)
    section["resources"] = None if run.resources is None else resources_as_dict(
        run.resources, getattr(profile, "sram_block_bits", None),
        getattr(profile, "tcam_block_bits", None))
    return section


def judge(hook: Hook, ev: Evaluation, program: str, limits: Limits) -> OracleVerdict:
    """Emit the trial's program into a temporary directory and let the compiler judge it."""
    with tempfile.TemporaryDirectory(prefix="hmn-oracle-") as tmp:
        work = Path(tmp)
        ev.problem.target.emit(ev.pipeline, work, program)
        build = work / "build"
        build.mkdir()
        run = compile_program(hook, work / "p4" / f"{program}.p4", build)
    details: dict[str, Any] = {"tool": run.tool, "exit_code": run.exit_code,
                               "seconds": round(run.seconds, 3),
                               "stages": None if run.resources is None
                               else run.resources.stages_used}
    if not run.accepted:
        first = run.summary.excerpt.splitlines()[0] if run.summary.excerpt else ""
        reason = rejection_message(run, program, hook.timeout).splitlines()[0]
        return OracleVerdict(False, 1.0, f"{reason} {first}".strip(), details)
    excess = stage_excess(run, limits)
    if excess is not None:
        used = run.resources.stages_used  # type: ignore[union-attr]
        return OracleVerdict(False, used / limits.stages - 1.0, excess,  # type: ignore[operator]
                             details)
    return OracleVerdict(True, 0.0, None, details)


def make_oracle(hook: Hook, program: str, limits: Limits):  # noqa: ANN201  (Oracle)
    """The trial judge for ``--toolchain-feasibility``."""
    require_tool(hook)
    return lambda ev: judge(hook, ev, program, limits)
