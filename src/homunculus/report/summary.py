"""Assemble the report dict (report.json) from a finished compile."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from sklearn.metrics import confusion_matrix

from homunculus.search.candidates import Candidate
from homunculus.search.study import FITTED_ATTR, trial_index
from homunculus.targets.base import LIMIT_KEYS, Feasibility, Limits, Usage


def trial_rows(trials: list[optuna.trial.FrozenTrial]) -> list[dict[str, Any]]:
    rows = []
    for t in trials:
        usage = t.user_attrs.get("usage")
        rows.append({
            "number": trial_index(t),
            "family": t.user_attrs.get("family", t.params.get("family")),
            "params": {k: v for k, v in t.params.items() if k != "family"},
            # the size the model shipped with, when sized down to the limits
            "fitted_to_limits": t.user_attrs.get(FITTED_ATTR),
            "state": t.state.name,
            "feasible": bool(t.user_attrs.get("feasible", False)),
            "metric": t.user_attrs.get("metric"),
            "entries": usage["entries"] if usage else None,
            "binding": t.user_attrs.get("binding"),
            "usage": usage,
        })
    return rows


# The figures a CPU target is described by (no stages, TCAM or PHV on a host or SmartNIC)
CPU_KEYS = {
    "xdp": ("tables", "entries", "sram_kbit", "latency_ns", "throughput_gpps", "instructions"),
    "c": ("tables", "entries", "sram_kbit", "latency_ns", "throughput_gpps"),
}


def resources_section(usage: Usage, limits: Limits, feasibility: Feasibility,
                      target: str | None = None) -> dict[str, Any]:
    """Usage against the limits; a CPU target's (``xdp``, ``c``) only in its own terms."""
    keys = CPU_KEYS.get(target or "", LIMIT_KEYS)
    return {
        "stages": [{"stage": s.stage, "tables": list(s.tables), "ops": list(s.ops),
                    "entries": s.entries, "sram_bits": s.sram_bits, "tcam_bits": s.tcam_bits}
                   for s in usage.per_stage],
        "totals": {k: v for k, v in usage.totals().items() if k in keys},
        "limits": {k: getattr(limits, k) for k in LIMIT_KEYS if k in keys},
        "feasible": feasibility.feasible,
        "binding": feasibility.binding,
        "violations": list(feasibility.violations),
    }


def confusion(y_true: np.ndarray, y_pred: np.ndarray, labels: tuple[str, ...]) -> dict[str, Any]:
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(labels))))
    return {"labels": list(labels), "matrix": matrix.tolist()}


def candidates_section(candidates: list[Candidate]) -> list[dict[str, Any]]:
    return [{"family": c.family, "allowed": c.allowed, "reason": c.reason} for c in candidates]


def resource_line(target: str, totals: dict[str, Any], binding: str | None) -> str:
    """One line of the compile summary, in the target's own terms."""
    tail = f"feasible; binding: {binding}"
    if target == "xdp":
        return (f"~{totals['latency_ns']:.0f} ns/packet, {totals['instructions']:,} verifier "
                f"instructions (estimates); {totals['sram_kbit'] / 8:,.1f} KiB of maps; "
                f"{totals['tables']} trees/encoders/layers, {totals['entries']:,} "
                f"nodes/bins/weights; {tail}")
    if target == "c":
        return (f"~{totals['latency_ns']:.0f} ns per classification on one core (estimate); "
                f"{totals['sram_kbit'] / 8:,.1f} KiB of parameters; {totals['tables']} "
                f"trees/encoders/layers, {totals['entries']:,} nodes/bins/weights; {tail}")
    return (f"{totals['stages']} stages, {totals['tables']} tables, {totals['entries']} entries, "
            f"{totals['sram_kbit']:g} Kbit SRAM, {totals['tcam_kbit']:g} Kbit TCAM; {tail}")
