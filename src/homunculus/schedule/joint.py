"""Joint allocation: one Pareto variant per model, under the device's limits, by integer program.

Each model's search leaves a front of variants (metric against resources). The program (IPA and
InfAdapter's shape; ``scipy.optimize.milp``, which is HiGHS) has one binary ``x[m, v]`` per
variant, picks exactly one per model, and maximises the weighted sum of the models' metrics
(ties go to the variant set using less of the device) subject to linear resource constraints:
each variant's own use of every additive resource (tables, TCAM and SRAM blocks, entries, PHV
bits, ALU and gateway slots) plus what the models share must stay within the device's limits.

Stages are not additive (the models' tables share stages), so the linear program is a
relaxation: its choice is then fused and placed by the real allocation pass; when that does
not fit, the combination is cut (``sum of its x <= models - 1``) and the program solved again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

TIE_BREAK = 1e-6
"""Weight of the normalised resource use in the objective: only breaks ties between metrics."""
OBJECTIVE_SCALE = 1e6
"""The objective is scaled so that HiGHS's absolute optimality gap (1e-6) cannot hide a tie
break."""


@dataclass(frozen=True)
class Variant:
    """One point of a model's front: its configuration, metric and resource use."""

    model: str
    trial: int  # the search trial it comes from
    family: str
    params: dict[str, Any]
    metric: float
    cost: dict[str, float]  # additive resources this model alone adds to the device


@dataclass
class Round:
    """One solve of the integer program and the verdict of the real check on its choice."""

    choice: dict[str, int]  # model -> index into its variants
    objective: float
    fits: bool
    reason: str | None = None


@dataclass
class Selection:
    chosen: dict[str, int]  # model -> index into its variants
    objective: float
    rounds: list[Round] = field(default_factory=list)


class JointInfeasible(Exception):
    """No combination of variants fits (after ``rounds``)."""

    def __init__(self, message: str, rounds: list[Round]) -> None:
        super().__init__(message)
        self.rounds = rounds


def _index(variants: dict[str, list[Variant]]) -> list[tuple[str, int]]:
    return [(m, i) for m, vs in variants.items() for i in range(len(vs))]


def solve(variants: dict[str, list[Variant]], weights: dict[str, float],
          capacity: dict[str, float], cuts: list[dict[str, int]] = (),  # type: ignore[assignment]
          fixed: dict[str, int] | None = None) -> tuple[dict[str, int], float] | None:
    """The best choice (model -> variant index) and its objective (the weighted metric sum), or
    None when no choice meets ``capacity`` (resource -> what the models may use together) and
    avoids every cut. ``fixed`` forces some models' variants."""
    index = _index(variants)
    n = len(index)
    if n == 0:
        raise ValueError("no variants to choose from")
    metric = np.array([weights[m] * variants[m][i].metric for m, i in index])
    keys = sorted(capacity)
    use = np.array([[variants[m][i].cost.get(k, 0.0) for m, i in index] for k in keys])
    scale = np.array([max(capacity[k], 1e-9) for k in keys])
    spend = (use / scale[:, None]).sum(axis=0) if keys else np.zeros(n)
    c = -(metric - TIE_BREAK * spend) * OBJECTIVE_SCALE
    constraints = []
    one = np.zeros((len(variants), n))
    for row, m in enumerate(variants):
        for col, (mm, _) in enumerate(index):
            one[row, col] = float(mm == m)
    constraints.append(LinearConstraint(one, 1, 1))
    if keys:
        constraints.append(LinearConstraint(use, -np.inf, np.array([capacity[k] for k in keys])))
    for cut in cuts:
        row = np.array([float(cut.get(m) == i) for m, i in index])
        constraints.append(LinearConstraint(row, -np.inf, len(cut) - 1))
    lower = np.zeros(n)
    for col, (m, i) in enumerate(index):
        if fixed is not None and fixed.get(m) == i:
            lower[col] = 1
    result = milp(c, constraints=constraints, integrality=np.ones(n),
                  bounds=Bounds(lower, np.ones(n)), options={"mip_rel_gap": 0.0})
    if result.status != 0 or result.x is None:
        return None
    chosen = {m: i for col, (m, i) in enumerate(index) if result.x[col] > 0.5}
    return chosen, float(sum(weights[m] * variants[m][i].metric for m, i in chosen.items()))


def select(variants: dict[str, list[Variant]], weights: dict[str, float],
           capacity: dict[str, float], fits: Callable[[dict[str, int]], tuple[bool, str | None]],
           max_rounds: int = 40) -> Selection:
    """Solve, check the choice with ``fits`` (the real allocation of the fused program), cut it
    when it does not fit, and solve again; the first choice that fits."""
    cuts: list[dict[str, int]] = []
    rounds: list[Round] = []
    for _ in range(max_rounds):
        solved = solve(variants, weights, capacity, cuts)
        if solved is None:
            break
        choice, objective = solved
        ok, reason = fits(choice)
        rounds.append(Round(dict(choice), objective, ok, reason))
        if ok:
            return Selection(choice, objective, rounds)
        cuts.append(choice)
    tried = len(rounds)
    last = f"; the last tried did not fit: {rounds[-1].reason}" if rounds else ""
    raise JointInfeasible(
        f"no combination of the models' variants fits the device ({tried} combination(s) "
        f"tried by the integer program{last})", rounds)


def alternatives(variants: dict[str, list[Variant]], weights: dict[str, float],
                 capacity: dict[str, float], cuts: list[dict[str, int]]
                 ) -> dict[str, list[float | None]]:
    """Per model and variant: the best objective of the integer program with that variant
    forced (None: nothing fits with it), under the same limits and cuts."""
    out: dict[str, list[float | None]] = {}
    for m, vs in variants.items():
        row: list[float | None] = []
        for i in range(len(vs)):
            solved = solve(variants, weights, capacity, cuts, fixed={m: i})
            row.append(None if solved is None else solved[1])
        out[m] = row
    return out


def pareto(points: list[tuple[float, tuple[float, ...]]]) -> list[int]:
    """Indices of the points no other point dominates (higher metric, no more of any cost)."""
    keep = []
    for i, (m, cost) in enumerate(points):
        dominated = False
        for j, (m2, cost2) in enumerate(points):
            if j == i:
                continue
            no_worse = m2 >= m and all(a <= b for a, b in zip(cost2, cost, strict=True))
            better = m2 > m or any(a < b for a, b in zip(cost2, cost, strict=True))
            if no_worse and better:
                dominated = True
                break
        if not dominated:
            keep.append(i)
    return keep


def spread(indices: list[int], metrics: list[float], k: int) -> list[int]:
    """At most ``k`` of ``indices``, evenly spaced by metric (the best and the worst kept)."""
    ordered = sorted(indices, key=lambda i: -metrics[i])
    if len(ordered) <= k:
        return ordered
    picks = {ordered[round(j * (len(ordered) - 1) / (k - 1))] for j in range(k)} if k > 1 \
        else {ordered[0]}
    return [i for i in ordered if i in picks]
