"""What a schedule does with a packet: which models run, and how their verdicts combine.

The semantics of schedule/expr.py, executed on arrays of classes (one entry per packet): this is
the reference every target's schedule is verified against, and what the switch's combining
table (schedule/fuse.py) is filled from, one entry per combination of the models' classes.

Policies, over the models that ran, in the policy's order (highest priority first):

* ``severity`` (default): any drop wins; otherwise the DSCP of the first model that marks, and
  the egress port of the first model that forwards its class to an explicit port (else the
  schedule's default port).
* ``priority``: the first model that ran decides the whole verdict.

The default order puts downstream models before the models they follow and parallel models left
to right (``ad > tc | bd``: tc, bd, ad): the later, more specific decision wins.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from homunculus.ir.pipeline import VerdictKind, VerdictPlan
from homunculus.schedule.expr import Node, Par, Ref, Seq

POLICIES = ("severity", "priority")
NOT_RUN = -1
"""The class a model reports for a packet it did not run on."""


@dataclass(frozen=True)
class ModelVerdicts:
    """One model's verdict per class index."""

    drop: tuple[bool, ...]
    mark: tuple[bool, ...]
    dscp: tuple[int, ...]
    port: tuple[int | None, ...]  # an explicit egress port, or None (the default)

    @classmethod
    def of(cls, plan: VerdictPlan, n_classes: int) -> ModelVerdicts:
        drop = tuple(plan.kind is VerdictKind.DROP and c in plan.drop for c in range(n_classes))
        mark = tuple(plan.kind is VerdictKind.DSCP and c in plan.dscp for c in range(n_classes))
        dscp = tuple(plan.dscp.get(c, 0) if mark[c] else 0 for c in range(n_classes))
        port = tuple(plan.ports.get(c) if plan.kind is VerdictKind.FORWARD else None
                     for c in range(n_classes))
        return cls(drop, mark, dscp, port)

    @property
    def n_classes(self) -> int:
        return len(self.drop)


@dataclass(frozen=True)
class Policy:
    kind: str
    order: tuple[str, ...]  # every model, highest priority first
    default_port: int

    def __post_init__(self) -> None:
        if self.kind not in POLICIES:
            raise ValueError(f"unknown policy '{self.kind}' (known: {', '.join(POLICIES)})")


@dataclass(frozen=True)
class Outcome:
    """Per packet: which models ran, their classes (NOT_RUN where they did not) and the
    combined verdict."""

    ran: dict[str, np.ndarray]
    classes: dict[str, np.ndarray]
    port: np.ndarray
    drop: np.ndarray
    mark: np.ndarray
    dscp: np.ndarray

    def verdict_fields(self) -> dict[str, np.ndarray]:
        return {"verdict_port": self.port, "verdict_drop": self.drop,
                "verdict_mark": self.mark, "verdict_dscp": self.dscp}


def run_flags(node: Node, classes: dict[str, np.ndarray], verdicts: dict[str, ModelVerdicts],
              active: np.ndarray, ran: dict[str, np.ndarray]) -> np.ndarray:
    """Fill ``ran`` for every model under ``node`` (given the packets ``active`` there) and
    return the packets that pass ``node``."""
    if isinstance(node, Ref):
        ran[node.name] = active
        c = classes[node.name]
        if node.gate is not None:
            if not isinstance(node, GatedRef):
                raise ValueError(f"the gate on '{node.name}' is not bound to class indices")
            return active & np.isin(c, np.asarray(node.gate_index, dtype=np.int64))
        return active & ~np.asarray(verdicts[node.name].drop, dtype=bool)[c]
    if isinstance(node, Par):
        passed = active.copy()
        for part in node.parts:
            passed &= run_flags(part, classes, verdicts, active, ran)
        return passed
    assert isinstance(node, Seq)
    passed = run_flags(node.first, classes, verdicts, active, ran)
    return run_flags(node.then, classes, verdicts, passed, ran)


def combine(policy: Policy, ran: dict[str, np.ndarray], classes: dict[str, np.ndarray],
            verdicts: dict[str, ModelVerdicts]) -> tuple[np.ndarray, ...]:
    """(port, drop, mark, dscp) per packet from the verdicts of the models that ran."""
    n = len(next(iter(classes.values())))
    port = np.full(n, policy.default_port, dtype=np.int64)
    drop = np.zeros(n, dtype=np.int64)
    mark = np.zeros(n, dtype=np.int64)
    dscp = np.zeros(n, dtype=np.int64)
    if policy.kind == "priority":
        decided = np.zeros(n, dtype=bool)
        for name in policy.order:
            v, c = verdicts[name], classes[name]
            take = ran[name] & ~decided
            explicit = np.asarray([p is not None for p in v.port])[c]
            ports = np.asarray([policy.default_port if p is None else p for p in v.port])[c]
            port = np.where(take & explicit, ports, port)
            drop = np.where(take, np.asarray(v.drop, dtype=np.int64)[c], drop)
            mark = np.where(take, np.asarray(v.mark, dtype=np.int64)[c], mark)
            dscp = np.where(take, np.asarray(v.dscp, dtype=np.int64)[c], dscp)
            decided |= take
    else:
        marked = np.zeros(n, dtype=bool)
        routed = np.zeros(n, dtype=bool)
        for name in policy.order:
            v, c = verdicts[name], classes[name]
            on = ran[name]
            drop |= (on & np.asarray(v.drop, dtype=bool)[c]).astype(np.int64)
            m = on & np.asarray(v.mark, dtype=bool)[c] & ~marked
            dscp = np.where(m, np.asarray(v.dscp, dtype=np.int64)[c], dscp)
            mark = np.where(m, 1, mark)
            marked |= m
            explicit = np.asarray([p is not None for p in v.port])[c]
            ports = np.asarray([0 if p is None else p for p in v.port], dtype=np.int64)[c]
            r = on & explicit & ~routed
            port = np.where(r, ports, port)
            routed |= r
    dropped = drop.astype(bool)  # a dropped packet: nothing else applies
    port = np.where(dropped, policy.default_port, port)
    mark = np.where(dropped, 0, mark)
    dscp = np.where(dropped, 0, dscp)
    return port, drop, mark, dscp


def evaluate(node: Node, classes: dict[str, np.ndarray], verdicts: dict[str, ModelVerdicts],
             policy: Policy) -> Outcome:
    """The schedule on packets whose models' classes are ``classes`` (every model computed for
    every packet, as the fused pipeline does; those that did not run are masked)."""
    n = len(next(iter(classes.values())))
    gated = bind_gates(node, verdicts)
    ran: dict[str, np.ndarray] = {}
    run_flags(gated, classes, verdicts, np.ones(n, dtype=bool), ran)
    port, drop, mark, dscp = combine(policy, ran, classes, verdicts)
    shown = {m: np.where(ran[m], classes[m], NOT_RUN) for m in classes}
    return Outcome(ran, shown, port, drop, mark, dscp)


@dataclass(frozen=True)
class GatedRef(Ref):
    """A Ref whose gate is given as class indices."""

    gate_index: tuple[int, ...] = ()


def bind_gates(node: Node, verdicts: dict[str, ModelVerdicts],
               labels: dict[str, tuple[str, ...]] | None = None) -> Node:
    """The schedule with every gate's class labels turned into class indices (``labels``: each
    model's class labels; without them, gates must already be indices)."""
    if isinstance(node, GatedRef):
        return node
    if isinstance(node, Ref):
        if node.gate is None:
            return node
        if labels is None:
            index = tuple(int(g) for g in node.gate)
        else:
            index = tuple(labels[node.name].index(g) for g in node.gate)
        return GatedRef(node.name, node.gate, node.column, index)
    if isinstance(node, Par):
        return Par(tuple(bind_gates(p, verdicts, labels) for p in node.parts))
    return Seq(bind_gates(node.first, verdicts, labels), bind_gates(node.then, verdicts, labels))


def combinations(order: list[str], counts: dict[str, int]) -> dict[str, np.ndarray]:
    """Every combination of the models' classes, the first model's class varying slowest."""
    grid = list(itertools.product(*(range(counts[m]) for m in order)))
    return {m: np.asarray([g[i] for g in grid], dtype=np.int64) for i, m in enumerate(order)}
