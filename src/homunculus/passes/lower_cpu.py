"""Lower a quantised model to the CPU program (ir/cpu.py) that the XDP and C targets run.

Trees are simplified on the way: a split that the path to it already decides (every value left
in range goes one way) is replaced by the side taken, and a split whose two sides are equal
leaves becomes that leaf; the leaves keep the row their mode needs (the precomputed winner of a
single tree, the one score column a boosted tree moves, or the whole vector). Both rewrites keep
the model's result on every input of the declared widths. Per-feature bins become one encoder per
feature (features without bins get a single all-zero bin).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from homunculus.data.dataset import FeatureDecl
from homunculus.errors import NotSupportedError
from homunculus.ir.cpu import (
    INT32_MAX,
    SCALAR,
    VECTOR,
    WINNER,
    CpuModel,
    CpuProgram,
    Encoder,
    FlatTree,
    LookupModel,
    TreeModel,
)
from homunculus.ir.dense import QMLP, check_ranges
from homunculus.ir.flow import FlowProgram
from homunculus.ir.pipeline import VerdictPlan, class_rows_of
from homunculus.ir.quantised import FeatureBins, QLookupSum, QTree, QTreeEnsemble, QuantisedModel
from homunculus.passes.lower import feature_inputs


def lower_cpu(model: QuantisedModel, features: tuple[FeatureDecl, ...],
              class_labels: tuple[str, ...], verdict: VerdictPlan,
              winner_to_class: tuple[int, ...] | None = None,
              flow: FlowProgram | None = None, summed: bool = False) -> CpuProgram:
    """The CPU program computing exactly ``model`` (then ``winner_to_class`` and ``verdict``);
    ``summed``: a single tree still sums its scores (a chain's host adds carried scores)."""
    max_values = tuple((1 << f.width) - 1 for f in features)
    cpu_model: CpuModel
    if isinstance(model, QMLP):
        if len(model.input_shift) != len(features) or model.layers[0].shape[1] != len(features):
            raise ValueError(f"the MLP reads {model.layers[0].shape[1]} inputs but "
                             f"{len(features)} features are declared")
        check_ranges(model)
        cpu_model = model
    elif isinstance(model, QTreeEnsemble):
        cpu_model = lower_trees(model, max_values, summed)
    else:
        cpu_model = lower_lookup(model, max_values)
    n_winners = model.n_classes
    rows = []
    for w in range(n_winners):
        cls = winner_to_class[w] if winner_to_class is not None else w
        rows.append((cls, *verdict.params(cls)))
    return CpuProgram(feature_inputs(features), tuple(class_labels), verdict.kind, tuple(rows),
                      cpu_model, flow, class_rows=class_rows_of(verdict, len(class_labels)))


# ----------------------------------------------------------------------------- trees


@dataclass(frozen=True)
class _Node:
    feature: int  # -1: leaf
    threshold: int = 0
    left: _Node | None = None
    right: _Node | None = None
    row: tuple[int, ...] = ()


def tree_mode(model: QTreeEnsemble, summed: bool = False) -> str:
    """``winner`` for one tree (unless ``summed``), ``scalar`` when every tree moves at most one
    column."""
    if len(model.trees) == 1 and not summed:
        return WINNER
    return SCALAR if all(len(varying_columns(t)) <= 1 for t in model.trees) else VECTOR


def varying_columns(tree: QTree) -> list[int]:
    rows = np.asarray([tree.leaf_scores[i] for i in tree.leaves()], dtype=np.int64)
    return [c for c in range(rows.shape[1]) if (rows[:, c] != rows[0, c]).any()]


def _simplify(tree: QTree, node: int, lo: list[int], hi: list[int], leaf_row) -> _Node:  # noqa: ANN001
    """The subtree at ``node`` for inputs with ``lo[f] < x[f] <= hi[f]``."""
    f = tree.feature[node]
    if f < 0:
        return _Node(-1, row=leaf_row(tree.leaf_scores[node]))
    t = tree.threshold[node]
    if t >= hi[f]:
        return _simplify(tree, tree.left[node], lo, hi, leaf_row)
    if t <= lo[f]:
        return _simplify(tree, tree.right[node], lo, hi, leaf_row)
    saved = hi[f]
    hi[f] = t
    left = _simplify(tree, tree.left[node], lo, hi, leaf_row)
    hi[f], saved = saved, lo[f]
    lo[f] = t
    right = _simplify(tree, tree.right[node], lo, hi, leaf_row)
    lo[f] = saved
    if left.feature < 0 and right.feature < 0 and left.row == right.row:
        return left
    return _Node(f, t, left, right)


def flatten(root: _Node, column: int = -1) -> FlatTree:
    """Breadth-first node arrays with adjacent siblings; identical leaf rows are shared."""
    order = [root]
    feature: list[int] = []
    threshold: list[int] = []
    left: list[int] = []
    rows: dict[tuple[int, ...], int] = {}
    depth = {0: 0}
    i = 0
    while i < len(order):
        node = order[i]
        if node.feature < 0:
            feature.append(-1)
            threshold.append(rows.setdefault(node.row, len(rows)))
            left.append(i)
        else:
            assert node.left is not None and node.right is not None
            feature.append(node.feature)
            threshold.append(node.threshold)
            left.append(len(order))
            depth[len(order)] = depth[len(order) + 1] = depth[i] + 1
            order += [node.left, node.right]
        i += 1
    return FlatTree(tuple(feature), tuple(threshold), tuple(left), tuple(rows), column,
                    max(depth.values()))


def lower_trees(model: QTreeEnsemble, max_values: tuple[int, ...],
                summed: bool = False) -> TreeModel:
    mode = tree_mode(model, summed)
    n = model.n_classes
    bias = np.asarray(model.bias, dtype=np.int64)

    def walk(tree: QTree, leaf_row) -> _Node:  # noqa: ANN001
        return _simplify(tree, 0, [-1] * len(max_values), list(max_values), leaf_row)

    if mode == WINNER:
        root = walk(model.trees[0], lambda s: (int(np.argmax(bias + np.asarray(s))),))
        return TreeModel(WINNER, n, tuple(int(b) for b in bias), (flatten(root),))
    trees = []
    for tree in model.trees:
        columns = varying_columns(tree)
        base = np.asarray(tree.leaf_scores[tree.leaves()[0]], dtype=np.int64)
        if not columns:  # a constant tree: its scores join the bias
            bias = bias + base
            continue
        if mode == SCALAR:
            (column,) = columns
            constant = base.copy()
            constant[column] = 0
            bias = bias + constant
            trees.append(flatten(walk(tree, lambda s, c=column: (int(s[c]),)), column))
        else:
            trees.append(flatten(walk(tree, lambda s: tuple(int(v) for v in s))))
    check_int32(bias, [(t.column, np.abs(np.asarray(t.values)).max(axis=0)) for t in trees], n)
    return TreeModel(mode, n, tuple(int(b) for b in bias), tuple(trees))


def check_int32(bias: np.ndarray, terms: list[tuple[int, np.ndarray]], n: int) -> None:
    """Raise unless every column's worst-case sum fits int32 (the programs sum in int32)."""
    worst = np.abs(bias).astype(np.int64)
    for column, top in terms:
        if column >= 0:
            worst[column] += int(top[0])
        else:
            worst += top.astype(np.int64)
    if worst.max(initial=0) > INT32_MAX or len(worst) != n:
        raise NotSupportedError(f"summed scores could reach {int(worst.max())}: the CPU "
                                "targets sum scores in int32")


# ----------------------------------------------------------------------------- lookups


def _merged_bins(bins: list[FeatureBins], top: int, n: int) -> tuple[list[int], list[list[int]]]:
    """One partition of 0..top summing every FeatureBins of a feature, equal neighbours merged."""
    edges = sorted({min(max(e, 0), top) for b in bins for e in b.upper_edges} | {top})
    rows = []
    for e in edges:
        row = np.zeros(n, dtype=np.int64)
        for b in bins:
            index = int(np.searchsorted(np.asarray(b.upper_edges), e, side="left"))
            if index >= len(b.upper_edges):
                raise ValueError(f"feature {b.feature}: its bins end at {b.upper_edges[-1]}, "
                                 f"below the width's maximum {top}")
            row += np.asarray(b.scores[index], dtype=np.int64)
        rows.append(row.tolist())
    out_edges, out_rows = [edges[0]], [rows[0]]
    for e, r in zip(edges[1:], rows[1:], strict=True):
        if r == out_rows[-1]:
            out_edges[-1] = e
        else:
            out_edges.append(e)
            out_rows.append(r)
    return out_edges, out_rows


def lower_lookup(model: QLookupSum, max_values: tuple[int, ...]) -> LookupModel:
    n = model.n_classes
    encoders = []
    for j, top in enumerate(max_values):
        edges, rows = _merged_bins([b for b in model.bins if b.feature == j], top, n)
        encoders.append(Encoder(j, top.bit_length(), tuple(edges),
                                tuple(tuple(r) for r in rows)))
    bias = np.asarray(model.bias, dtype=np.int64)
    check_int32(bias, [(-1, np.abs(np.asarray(e.scores)).max(axis=0)) for e in encoders], n)
    return LookupModel(n, model.bias, tuple(encoders))
