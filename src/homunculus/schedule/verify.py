"""Verification of a compiled schedule against its quantised models, composed by the schedule.

On feature vectors: each model's test rows, completed with the other models' features from
their own test rows (seeded), so every model's test set runs through the fused program. The
reference runs each quantised model on its features of the row (an upstream class feature is
that model's prediction), then the schedule's semantics (schedule/policy.py). Every model's
class (computed on every row, as the program does) and the combined verdict must agree 100%.

On packets (when every model learns from traffic): the whole data plane over each model's
capture, against each model on the reference features of the same packets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from homunculus.data.dataset import Dataset
from homunculus.errors import VerificationError
from homunculus.frontend.schedule_plan import CLASS_KIND
from homunculus.models.base import TrainedModel
from homunculus.schedule.expr import Node
from homunculus.schedule.policy import ModelVerdicts, Outcome, Policy, evaluate
from homunculus.search.metrics import score

VERDICT_KEYS = ("verdict_port", "verdict_drop", "verdict_mark", "verdict_dscp")


@dataclass
class Member:
    """A model of a compiled schedule, as the verification needs it."""

    name: str
    trained: TrainedModel
    dataset: Dataset  # its features as its pipeline reads them (class features included)
    upstream: dict[int, str]  # feature index -> the model whose class it is
    inputs: list[int]  # fused feature index of each feature (-1: an upstream class)
    verdicts: ModelVerdicts
    metric: str
    positive: int | None
    # upstream model -> its features' names and values on this model's test rows
    upstream_rows: dict[str, tuple[tuple[str, ...], np.ndarray]] = field(default_factory=dict)


def composed_rows(members: list[Member], n_inputs: int, seed: int
                  ) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """Rows of the fused program's inputs: block m holds member m's test rows, the features
    of the others taken from random rows of theirs. Returns the rows and each block's span."""
    rng = np.random.default_rng(seed)
    blocks = []
    spans = []
    start = 0
    for m in members:
        n = len(m.dataset.x_test)
        z = np.zeros((n, n_inputs), dtype=np.int64)
        for other in [o for o in members if o is not m] + [m]:
            rows = np.arange(n) if other is m else rng.integers(0, len(other.dataset.x_test), n)
            for i, j in enumerate(other.inputs):
                if j >= 0:
                    z[:, j] = other.dataset.x_test[rows, i]
            if other is m:  # the upstream models see this row's own values of their features
                for up, (names, values) in m.upstream_rows.items():
                    owner = next(o for o in members if o.name == up)
                    index = {f.name: j for f, j in zip(owner.dataset.features, owner.inputs,
                                                        strict=True) if j >= 0}
                    for k, name in enumerate(names):
                        if name in index:
                            z[:, index[name]] = values[:, k]
                for i, j in enumerate(m.inputs):
                    if j >= 0:
                        z[:, j] = m.dataset.x_test[:, i]
        blocks.append(z)
        spans.append((m.name, np.arange(start, start + n)))
        start += n
    return np.concatenate(blocks), spans


def reference(members: list[Member], x: np.ndarray) -> dict[str, np.ndarray]:
    """Each member's class on fused input rows (members in schedule order: upstream first)."""
    preds: dict[str, np.ndarray] = {}
    for m in members:
        cols = []
        for i, j in enumerate(m.inputs):
            cols.append(preds[m.upstream[i]] if j < 0 else x[:, j])
        preds[m.name] = m.trained.predict_quantised(np.stack(cols, axis=1).astype(np.int64))
    return preds


def expected_outcome(members: list[Member], node: Node, policy: Policy,
                     preds: dict[str, np.ndarray]) -> Outcome:
    return evaluate(node, preds, {m.name: m.verdicts for m in members}, policy)


def compare(members: list[Member], outcome: Outcome, preds: dict[str, np.ndarray],
            produced: dict[str, np.ndarray], fields: dict[str, np.ndarray], what: str,
            host: bool = False) -> None:
    """Raise VerificationError unless every class and verdict field agrees (``host``: the
    program reports a model that did not run as -1, which must be exactly where the schedule
    does not run it)."""
    for m in members:
        got = produced[m.name]
        if host or (got < 0).any():  # a host runs a model only where the schedule does
            skipped = np.nonzero((got < 0) != ~outcome.ran[m.name])[0]
            if len(skipped):
                i = int(skipped[0])
                raise VerificationError(
                    f"{what}: model '{m.name}' ran where the schedule says it does not, or the "
                    f"other way round, on {len(skipped)} rows (first: row {i})")
            got = np.where(got < 0, preds[m.name], got)
        bad = np.nonzero(preds[m.name] != got)[0]
        if len(bad):
            i = int(bad[0])
            raise VerificationError(
                f"{what}: model '{m.name}' disagrees with its quantised model on {len(bad)} of "
                f"{len(preds[m.name])} rows (first: row {i}, model class {preds[m.name][i]}, "
                f"program class {got[i]})")
    for key, want in outcome.verdict_fields().items():
        got = np.asarray(fields[key], dtype=np.int64)
        bad = np.nonzero(want != got)[0]
        if len(bad):
            i = int(bad[0])
            raise VerificationError(
                f"{what}: the combined verdict ({key}) disagrees with the schedule's semantics "
                f"on {len(bad)} of {len(want)} (first: row {i}: expected {want[i]}, program "
                f"{got[i]}; classes " + ", ".join(f"{m.name}={preds[m.name][i]}"
                                                 for m in members) + ")")


@dataclass
class FeatureCheck:
    rows: int
    per_model: dict[str, dict[str, float]]  # metric (ungated) and share of rows it ran on


def check_features(members: list[Member], node: Node, policy: Policy, run: Any, n_inputs: int,
                   seed: int) -> FeatureCheck:
    """``run(x)``: the compiled program on fused input rows -> (model classes, verdict fields).
    Every model's test set through the program; 100% agreement or VerificationError."""
    x, spans = composed_rows(members, n_inputs, seed)
    preds = reference(members, x)
    outcome = expected_outcome(members, node, policy, preds)
    produced, fields = run(x)
    compare(members, outcome, preds, produced, fields, "test rows through the schedule",
            host=hasattr(run, "alone"))
    per_model = {}
    for m, (_, rows) in zip(members, spans, strict=True):
        y = m.dataset.y_test
        got = produced[m.name][rows]
        ran = outcome.ran[m.name][rows]
        entry = {"ran": float(np.mean(ran)),
                 "pipeline_when_run": (score(m.metric, y[ran], got[ran], m.dataset.n_classes,
                                             m.positive) if ran.any() else None)}
        if hasattr(run, "alone"):  # a host: each model's own function on its own test set
            got = run.alone(m.name, m.dataset.x_test)
            want = m.trained.predict_quantised(m.dataset.x_test)
            if (got != want).any():
                raise VerificationError(f"model '{m.name}': its compiled function disagrees with "
                                        f"its quantised model on {(got != want).sum()} test rows")
        # a switch computes every model on every packet: its metric on the whole test set
        entry["pipeline"] = score(m.metric, y, got, m.dataset.n_classes, m.positive)
        per_model[m.name] = entry
    return FeatureCheck(len(x), per_model)


def packet_features(member: Member, table: pd.DataFrame) -> np.ndarray:
    """A traffic member's own (non-class) features on every packet (reference semantics)."""
    from homunculus.data.traffic import per_capture
    from homunculus.features.reference import reference_features

    info = member.dataset.traffic
    defs = [d for d in info.features if d.kind != CLASS_KIND]
    values, _ = per_capture(table, lambda t: reference_features(t, defs, info.config))
    return values


def check_packets(members: list[Member], node: Node, policy: Policy, run: Any,
                  tables: list[pd.DataFrame]) -> dict[str, Any]:
    """``run(table)`` -> (classified mask, model classes, verdict fields) on the classified
    packets. Every capture of every traffic member through the data plane."""
    total = classified_total = 0
    for table in tables:
        classified, produced, fields = run(table)
        preds: dict[str, np.ndarray] = {}
        for m in members:
            own = packet_features(m, table)[classified]
            cols, k = [], 0
            for i, j in enumerate(m.inputs):
                if j < 0:
                    cols.append(preds[m.upstream[i]])
                else:
                    cols.append(own[:, k])
                    k += 1
            preds[m.name] = m.trained.predict_quantised(np.stack(cols, axis=1).astype(np.int64))
        outcome = expected_outcome(members, node, policy, preds)
        compare(members, outcome, preds, produced, fields, "packets through the schedule")
        total += len(table)
        classified_total += int(classified.sum())
    return {"captures": len(tables), "packets": total, "classified": classified_total,
            "agreement": 1.0}
