"""Candidate selection: rule out families that cannot fit the target before any training."""

from __future__ import annotations

from dataclasses import dataclass

from homunculus.data.dataset import Dataset
from homunculus.errors import InfeasibleError
from homunculus.ir.pipeline import VerdictPlan
from homunculus.models.base import MAT_UNSUPPORTED, all_families
from homunculus.passes.lower import lower
from homunculus.search.problem import with_flow
from homunculus.targets.base import Limits, assess
from homunculus.targets.p4.target import SwitchTarget


@dataclass(frozen=True)
class Candidate:
    family: str
    allowed: bool
    reason: str


def known_families() -> list[str]:
    return sorted([*all_families(), *MAT_UNSUPPORTED])


def select_candidates(requested: list[str] | None, dataset: Dataset, target: SwitchTarget,
                      limits: Limits, verdict: VerdictPlan,
                      max_lookup_tables: int | None = None) -> list[Candidate]:
    """For each requested family (all when None): allowed, or ruled out and why.

    A family is judged by its smallest pipeline (merged down to ``max_lookup_tables`` when the
    search may merge tables), built without training.
    """
    families = all_families()
    names = requested if requested else sorted(families)
    out: list[Candidate] = []
    for name in names:
        if name in MAT_UNSUPPORTED:
            out.append(Candidate(name, False, MAT_UNSUPPORTED[name]))
            continue
        smallest = families[name].smallest_model(dataset.widths, dataset.n_classes)
        lowered = lower(smallest, dataset.features, dataset.class_labels, verdict,
                        max_lookup_tables=max_lookup_tables)
        pipeline = target.prepare(with_flow(lowered, dataset))
        usage = target.estimate(pipeline)
        verdict_ = assess(usage, limits)
        if verdict_.feasible:
            out.append(Candidate(name, True, f"smallest pipeline fits ({usage.stages} stages, "
                                             f"{usage.tables} tables, {usage.entries} entries)"))
        else:
            out.append(Candidate(name, False, "even its smallest pipeline does not fit: "
                                              + "; ".join(verdict_.violations)))
    return out


def allowed_or_raise(candidates: list[Candidate]) -> list[str]:
    allowed = [c.family for c in candidates if c.allowed]
    if not allowed:
        reasons = "\n".join(f"  - {c.family}: {c.reason}" for c in candidates)
        raise InfeasibleError("no model family can fit the target under these constraints:\n"
                              + reasons)
    return allowed
