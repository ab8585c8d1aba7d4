"""Candidate selection: rule out families that cannot fit the target before any training."""

from __future__ import annotations

from dataclasses import dataclass

from homunculus.data.dataset import Dataset
from homunculus.data.dataset import select_features as select_features_of
from homunculus.errors import InfeasibleError
from homunculus.ir.pipeline import VerdictPlan
from homunculus.models.base import DENSE_REASON, all_families, requires_dense
from homunculus.search.problem import lower_for
from homunculus.targets.base import Limits, Target, assess


@dataclass(frozen=True)
class Candidate:
    family: str
    allowed: bool
    reason: str


def known_families() -> list[str]:
    return sorted(all_families())


def select_candidates(requested: list[str] | None, dataset: Dataset, target: Target,
                      limits: Limits, verdict: VerdictPlan,
                      max_lookup_tables: int | None = None,
                      select_features: bool = False) -> list[Candidate]:
    """For each requested family (all when None): allowed, or ruled out and why.

    A family is judged by its smallest pipeline (merged down to ``max_lookup_tables`` when the
    search may merge tables; on a single feature when the search selects features), built
    without training.
    """
    if select_features and len(dataset.features) > 1:
        dataset = select_features_of(dataset, [cheapest_feature(dataset)])
    families = all_families()
    names = requested if requested else sorted(families)
    out: list[Candidate] = []
    for name in names:
        if requires_dense(families[name]) and not target.supports_dense:
            out.append(Candidate(name, False, DENSE_REASON))
            continue
        smallest = families[name].smallest_model(dataset.widths, dataset.n_classes)
        pipeline = lower_for(target, smallest, dataset, verdict, None, max_lookup_tables)
        usage = target.estimate(pipeline)
        verdict_ = assess(usage, limits)
        if verdict_.feasible:
            out.append(Candidate(name, True, f"smallest pipeline fits ({usage.stages} stages, "
                                             f"{usage.tables} tables, {usage.entries} entries)"))
        else:
            out.append(Candidate(name, False, "even its smallest pipeline does not fit: "
                                              + "; ".join(verdict_.violations)))
    return out


def cheapest_feature(dataset: Dataset) -> int:
    """A header feature if there is one (no register), else the first feature."""
    kinds = [f.kind for f in dataset.features]
    return kinds.index(None) if None in kinds else 0


def allowed_or_raise(candidates: list[Candidate]) -> list[str]:
    allowed = [c.family for c in candidates if c.allowed]
    if not allowed:
        reasons = "\n".join(f"  - {c.family}: {c.reason}" for c in candidates)
        raise InfeasibleError("no model family can fit the target under these constraints:\n"
                              + reasons)
    return allowed
