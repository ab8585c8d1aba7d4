"""The CPU program: what the XDP and C targets execute, lowered from the quantised model.

Switches run a match-action table pipeline (ir/pipeline.py); a CPU has no TCAM to imitate, so its
program walks trees and indexes encoders directly. The integer semantics are exactly the
quantised model's (ir/quantised.py, ir/dense.py):

- ``TreeModel``: per tree, flat node arrays in breadth-first order. Node ``i`` either splits
  (``feature[i] >= 0``: go to ``left[i]`` when ``x[feature] <= threshold``, else to
  ``left[i] + 1``: siblings are adjacent) or is a leaf (``feature[i] == -1``, ``left[i] == i``,
  ``threshold[i]`` the index of its row in ``values``). A walk of ``depth`` steps from node 0
  always ends on a leaf (leaves point to themselves). Leaf rows are, by ``mode``:
  ``winner`` (one tree: the arg-max of bias + leaf scores, precomputed), ``scalar`` (every tree
  moves one score column, ``column``) or ``vector`` (every column). Scores are summed in int32
  with the bias; the arg-max takes the lowest index on ties.
- ``LookupModel``: one encoder per feature maps the value to its bin (``edges`` are inclusive
  upper edges; the last is the width's maximum) and adds the bin's score row.
- ``QMLP``: the int8 network of ir/dense.py as it is.

Then ``verdict[winner]`` gives the class and the verdict's (port, drop, mark, dscp).

A host ending a chain of switches (schedule/host.py) runs the tables the switches did not: its
program's ``carry_in`` lists the class columns the carry header brings, and every row's scores
start from those partial scores (each masked to ``carry_bits``) plus the bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from homunculus.ir.dense import QMLP
from homunculus.ir.flow import FlowProgram
from homunculus.ir.pipeline import FeatureInput, Shortcut, VerdictKind

WINNER, SCALAR, VECTOR = "winner", "scalar", "vector"
TREE_MODES = (WINNER, SCALAR, VECTOR)
DIRECT_BITS = 16
"""Encoders of features up to this width index a table of every value; wider ones search."""
INT32_MAX = 2**31 - 1
RESULT_FIELDS = ("class_id", "verdict_port", "verdict_drop", "verdict_mark", "verdict_dscp")


@dataclass(frozen=True)
class FlatTree:
    feature: tuple[int, ...]  # -1: leaf
    threshold: tuple[int, ...]  # leaves: the row in ``values``
    left: tuple[int, ...]  # leaves: the node itself
    values: tuple[tuple[int, ...], ...]  # leaf rows (winner/scalar: one value; vector: K)
    column: int = -1  # scalar mode: the score column the tree moves
    depth: int = 0  # steps from the root to the deepest leaf

    @property
    def n_nodes(self) -> int:
        return len(self.feature)

    def leaf_rows(self, x: np.ndarray) -> np.ndarray:
        """The leaf row each input row lands on: ``depth`` steps of the flat walk."""
        feature = np.asarray(self.feature, dtype=np.int64)
        threshold = np.asarray(self.threshold, dtype=np.int64)
        left = np.asarray(self.left, dtype=np.int64)
        padded = np.hstack([x, np.zeros((len(x), 1), dtype=np.int64)])  # column -1 reads 0
        node = np.zeros(len(x), dtype=np.int64)
        for _ in range(self.depth):
            node = left[node] + (padded[np.arange(len(x)), feature[node]] > threshold[node])
        return threshold[node]


@dataclass(frozen=True)
class TreeModel:
    mode: str
    n_scores: int
    bias: tuple[int, ...]
    trees: tuple[FlatTree, ...]

    @property
    def depth(self) -> int:
        return max((t.depth for t in self.trees), default=0)

    def winners(self, x: np.ndarray, partial: np.ndarray | None = None) -> np.ndarray:
        if self.mode == WINNER:
            return np.asarray(self.trees[0].values, dtype=np.int64)[self.trees[0].leaf_rows(x), 0]
        total = start_scores(self.bias, len(x), partial)
        for t in self.trees:
            rows = np.asarray(t.values, dtype=np.int64)[t.leaf_rows(x)]
            if self.mode == SCALAR:
                total[:, t.column] += rows[:, 0]
            else:
                total += rows
        return np.argmax(total, axis=1)


@dataclass(frozen=True)
class Encoder:
    feature: int
    width: int
    edges: tuple[int, ...]  # strictly increasing inclusive upper edges; the last is the max
    scores: tuple[tuple[int, ...], ...]  # one row per bin

    @property
    def direct(self) -> bool:
        return self.width <= DIRECT_BITS

    @property
    def n_bins(self) -> int:
        return len(self.edges)

    def bins(self, values: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.asarray(self.edges, dtype=np.int64), values, side="left")

    def direct_table(self) -> list[int]:
        """The bin of every value 0..2^width-1 (direct encoders)."""
        return self.bins(np.arange(1 << self.width, dtype=np.int64)).tolist()


@dataclass(frozen=True)
class LookupModel:
    n_scores: int
    bias: tuple[int, ...]
    encoders: tuple[Encoder, ...]  # one per feature, in feature order

    def winners(self, x: np.ndarray, partial: np.ndarray | None = None) -> np.ndarray:
        total = start_scores(self.bias, len(x), partial)
        for e in self.encoders:
            total += np.asarray(e.scores, dtype=np.int64)[e.bins(x[:, e.feature])]
        return np.argmax(total, axis=1)


def start_scores(bias: tuple[int, ...], n: int, partial: np.ndarray | None) -> np.ndarray:
    """Every row's scores before the model adds its own: the bias, plus ``partial`` (n, K)."""
    total = np.tile(np.asarray(bias, dtype=np.int64), (n, 1))
    return total if partial is None else total + np.asarray(partial, dtype=np.int64)


CpuModel = TreeModel | LookupModel | QMLP


def model_kind(model: CpuModel) -> str:
    """``trees-<mode>``, ``lookup`` or ``mlp``: what a program of this model can run (a part
    of a split MLP: ``mlp`` then ``-in`` when it starts from carried activations, ``-out`` when
    it carries its activations on)."""
    if isinstance(model, TreeModel):
        return f"trees-{model.mode}"
    if isinstance(model, LookupModel):
        return "lookup"
    return "mlp" + "-in" * model.carried_in + "-out" * model.carries_out


@dataclass(frozen=True)
class CpuProgram:
    features: tuple[FeatureInput, ...]
    class_labels: tuple[str, ...]
    verdict_kind: VerdictKind
    verdict: tuple[tuple[int, int, int, int, int], ...]  # per winner: class, port, drop, mark, dscp
    model: CpuModel
    flow: FlowProgram | None = None
    shortcut: Shortcut | None = None  # the hybrid's category table: its hits decide
    # per class: (class, port, drop, mark, dscp): the verdicts of the category table's hits and
    # of a per-flow decision's stored class
    class_rows: tuple[tuple[int, ...], ...] = ()
    carry_in: tuple[int, ...] = ()  # class columns whose partial scores a chain carries in
    carry_bits: int = 0  # the carried fields' width (partial scores are masked to it)

    @property
    def n_winners(self) -> int:
        return len(self.verdict)

    @property
    def kind(self) -> str:
        return model_kind(self.model)

    def winners(self, x: np.ndarray, partial: np.ndarray | None = None) -> np.ndarray:
        """Per row, the winner; ``partial`` (n, K): the carried partial scores (``carry_in``
        programs only; masked to ``carry_bits`` as the generated code does)."""
        x = np.asarray(x, dtype=np.int64)
        masks = np.asarray([f.field.max_value for f in self.features], dtype=np.int64)
        x = x & masks  # the programs mask every feature to its declared width
        if isinstance(self.model, QMLP):
            return np.argmax(self.model.scores(x), axis=1)
        if partial is not None:
            partial = np.asarray(partial, dtype=np.int64) & ((1 << self.carry_bits) - 1)
        return self.model.winners(x, partial)

    def results(self, x: np.ndarray, partial: np.ndarray | None = None
                ) -> dict[str, np.ndarray]:
        """Per row: the class and the verdict fields (``RESULT_FIELDS``); a category table's
        hit takes its own verdict row."""
        table = np.asarray(self.verdict, dtype=np.int64)[self.winners(x, partial)]
        if self.shortcut is not None:
            masks = np.asarray([f.field.max_value for f in self.features], dtype=np.int64)
            hit, rows = self.shortcut.lookup(np.asarray(x, dtype=np.int64) & masks)
            table = np.where(hit[:, None], rows, table)
        return {name: table[:, i] for i, name in enumerate(RESULT_FIELDS)}


# ----------------------------------------------------------------------------- JSON


def model_to_json(model: CpuModel) -> dict[str, Any]:
    if isinstance(model, QMLP):
        from homunculus.ir.quantised import to_json

        return to_json(model)
    if isinstance(model, TreeModel):
        return {"kind": "trees", "mode": model.mode, "n_scores": model.n_scores,
                "bias": list(model.bias),
                "trees": [{"feature": list(t.feature), "threshold": list(t.threshold),
                           "left": list(t.left), "values": [list(v) for v in t.values],
                           "column": t.column, "depth": t.depth} for t in model.trees]}
    return {"kind": "lookup", "n_scores": model.n_scores, "bias": list(model.bias),
            "encoders": [{"feature": e.feature, "width": e.width, "edges": list(e.edges),
                          "scores": [list(s) for s in e.scores]} for e in model.encoders]}


def model_from_json(data: dict[str, Any]) -> CpuModel:
    if data["kind"] == "mlp":
        from homunculus.ir.quantised import from_json

        model = from_json(data)
        assert isinstance(model, QMLP)
        return model
    if data["kind"] == "trees":
        trees = tuple(FlatTree(tuple(t["feature"]), tuple(t["threshold"]), tuple(t["left"]),
                               tuple(tuple(v) for v in t["values"]), int(t["column"]),
                               int(t["depth"])) for t in data["trees"])
        return TreeModel(str(data["mode"]), int(data["n_scores"]), tuple(data["bias"]), trees)
    if data["kind"] == "lookup":
        encoders = tuple(Encoder(int(e["feature"]), int(e["width"]), tuple(e["edges"]),
                                 tuple(tuple(s) for s in e["scores"])) for e in data["encoders"])
        return LookupModel(int(data["n_scores"]), tuple(data["bias"]), encoders)
    raise ValueError(f"unknown CPU model kind {data['kind']!r}")
