"""What every target shares: limits, resource usage, and the feasibility verdict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from homunculus.errors import NotSupportedError

RESOURCE_KEYS = ("stages", "tables", "sram_kbit", "tcam_kbit", "entries", "phv_bits",
                 "instructions")
PERFORMANCE_KEYS = ("throughput_gpps", "latency_ns")
LIMIT_KEYS = RESOURCE_KEYS + PERFORMANCE_KEYS
UNITS = {"stages": "stages", "tables": "tables", "sram_kbit": "Kbit SRAM", "tcam_kbit": "Kbit TCAM",
         "entries": "entries", "phv_bits": "PHV bits", "instructions": "verifier instructions",
         "throughput_gpps": "Gpkt/s", "latency_ns": "ns"}


class CapacityExceeded(NotSupportedError):
    """A model needs more than a target's compiled capacity allows (e.g. an explicit XDP
    ``max_trees``): the search skips such a configuration rather than stopping."""


@dataclass(frozen=True)
class Limits:
    """Constraints on a compile; None = unconstrained. Throughput is a minimum, the rest maxima."""

    stages: int | None = None
    tables: int | None = None
    sram_kbit: float | None = None
    tcam_kbit: float | None = None
    entries: int | None = None
    phv_bits: int | None = None
    instructions: int | None = None  # XDP: instructions the verifier processes (hmn_xdp)
    throughput_gpps: float | None = None
    latency_ns: float | None = None

    def merged(self, overrides: dict[str, float | int | None]) -> Limits:
        """These limits with the given keys replaced (unknown keys raise KeyError)."""
        known = {f.name for f in fields(self)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise KeyError(f"unknown constraint(s) {bad}; known: {sorted(known)}")
        return Limits(**{**asdict(self), **overrides})

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


@dataclass(frozen=True)
class StageUsage:
    stage: int
    tables: tuple[str, ...]
    ops: tuple[str, ...]
    entries: int
    sram_bits: int
    tcam_bits: int


@dataclass(frozen=True)
class Usage:
    """What a compiled pipeline uses on a target (memory as allocated: whole blocks)."""

    stages: int
    tables: int
    sram_kbit: float
    tcam_kbit: float
    entries: int
    phv_bits: int
    throughput_gpps: float
    latency_ns: float
    per_stage: tuple[StageUsage, ...] = field(default=())
    instructions: int = 0  # XDP: estimated verifier instructions processed (else 0)

    def totals(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in LIMIT_KEYS}


@dataclass(frozen=True)
class Feasibility:
    feasible: bool
    binding: str | None  # the tightest constraint (the one that fails first)
    ratios: dict[str, float]  # usage / limit (for throughput: required / achieved)
    violations: tuple[str, ...]

    def constraint_values(self) -> dict[str, float]:
        """Optuna-style constraints: one value per limit, <= 0 when satisfied."""
        return {k: self.ratios[k] - 1.0 for k in LIMIT_KEYS if k in self.ratios}


def assess(usage: Usage, limits: Limits) -> Feasibility:
    """Compare usage with every limit; name the binding one."""
    ratios: dict[str, float] = {}
    violations: list[str] = []
    for key in LIMIT_KEYS:
        limit = getattr(limits, key)
        if limit is None:
            continue
        used = float(getattr(usage, key))
        if key == "throughput_gpps":
            ratio = float(limit) / used if used > 0 else float("inf")
            broken = used < float(limit)
            text = f"throughput {used:g} {UNITS[key]} < required {limit:g}"
        else:
            ratio = used / float(limit) if limit > 0 else (float("inf") if used > 0 else 0.0)
            broken = used > float(limit)
            text = f"{key} {used:g} > limit {limit:g} {UNITS[key]}"
        ratios[key] = ratio
        if broken:
            violations.append(text)
    binding = max(ratios, key=lambda k: ratios[k]) if ratios else None
    return Feasibility(not violations, binding, ratios, tuple(violations))


def with_field_overrides(obj: Any, overrides: dict[str, Any], fixed: tuple[str, ...] = ()) -> Any:
    """A copy of the dataclass ``obj`` with ``overrides`` applied; unknown or fixed fields raise
    KeyError listing the known ones (profiles use it for spec overrides)."""
    from dataclasses import replace

    known = {f.name for f in fields(obj)} - set(fixed)
    bad = sorted(set(overrides) - known)
    if bad:
        raise KeyError(f"unknown profile field(s) {bad}; known: {sorted(known)}")
    types = {f.name: str(f.type) for f in fields(obj)}
    for key, value in overrides.items():
        check_profile_value(key, value, types[key])
    return replace(obj, **overrides)


MAX_PROFILE_INT = 2**31 - 1
MAX_PROFILE_FLOAT = 1e12


def check_profile_value(key: str, value: Any, annotation: str) -> None:
    """A profile override must have its field's type: a bool, a count in 1..2^31-1, or a finite
    non-negative number (ValueError otherwise)."""
    if "bool" in annotation:
        if not isinstance(value, bool):
            raise ValueError(f"profile field '{key}' is true or false, not {value!r}")
    elif "int" in annotation:
        if isinstance(value, bool) or not isinstance(value, int) or not (
                1 <= value <= MAX_PROFILE_INT):
            raise ValueError(f"profile field '{key}' is a whole number in "
                             f"1..{MAX_PROFILE_INT}, not {value!r}")
    elif "float" in annotation and (
            isinstance(value, bool) or not isinstance(value, int | float)
            or not 0 <= value <= MAX_PROFILE_FLOAT):
        raise ValueError(f"profile field '{key}' is a number in 0..{MAX_PROFILE_FLOAT:g}, "
                         f"not {value!r}")


class Target(Protocol):
    """What the compiler asks of a backend: passes, a resource estimate, emission, a twin."""

    name: str
    supports_dense: bool  # can run dense (MLP) arithmetic
    profile: Any

    def prepare(self, pipeline: Any) -> Any:
        """Target-specific passes on the lowered pipeline."""

    def estimate(self, pipeline: Any) -> Usage:
        """Resources and performance of the pipeline on this target."""

    def emit(self, pipeline: Any, out_dir: Path, program_name: str) -> dict[str, Path]:
        """Write the program and its runtime artefacts into ``out_dir``."""

    def run_twin(self, pipeline: Any, out_dir: Path, x: Any) -> Any:
        """Execute what was emitted on feature rows; a TwinResult."""
