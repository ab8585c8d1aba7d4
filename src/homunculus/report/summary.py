"""Assemble the report dict (report.json) from a finished compile."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from sklearn.metrics import confusion_matrix

from homunculus.search.candidates import Candidate
from homunculus.search.study import trial_index
from homunculus.targets.base import LIMIT_KEYS, Feasibility, Limits, Usage


def trial_rows(trials: list[optuna.trial.FrozenTrial]) -> list[dict[str, Any]]:
    rows = []
    for t in trials:
        usage = t.user_attrs.get("usage")
        rows.append({
            "number": trial_index(t),
            "family": t.user_attrs.get("family", t.params.get("family")),
            "params": {k: v for k, v in t.params.items() if k != "family"},
            "state": t.state.name,
            "feasible": bool(t.user_attrs.get("feasible", False)),
            "metric": t.user_attrs.get("metric"),
            "entries": usage["entries"] if usage else None,
            "binding": t.user_attrs.get("binding"),
            "usage": usage,
        })
    return rows


def resources_section(usage: Usage, limits: Limits, feasibility: Feasibility) -> dict[str, Any]:
    return {
        "stages": [{"stage": s.stage, "tables": list(s.tables), "ops": list(s.ops),
                    "entries": s.entries, "sram_bits": s.sram_bits, "tcam_bits": s.tcam_bits}
                   for s in usage.per_stage],
        "totals": usage.totals(),
        "limits": {k: getattr(limits, k) for k in LIMIT_KEYS},
        "feasible": feasibility.feasible,
        "binding": feasibility.binding,
        "violations": list(feasibility.violations),
    }


def confusion(y_true: np.ndarray, y_pred: np.ndarray, labels: tuple[str, ...]) -> dict[str, Any]:
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(labels))))
    return {"labels": list(labels), "matrix": matrix.tolist()}


def candidates_section(candidates: list[Candidate]) -> list[dict[str, Any]]:
    return [{"family": c.family, "allowed": c.allowed, "reason": c.reason} for c in candidates]
