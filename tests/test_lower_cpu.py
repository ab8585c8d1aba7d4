"""The CPU lowering (passes/lower_cpu.py) keeps the quantised model's integer semantics exactly:
random trees and lookup models (thresholds below 0 and beyond a width, splits the path already
decides, several bin sets on one feature) give the same classes through the flat node arrays and
encoders as through ``QTreeEnsemble.scores`` / ``QLookupSum.scores``, and survive JSON."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from homunculus.data.dataset import FeatureDecl
from homunculus.ir.cpu import SCALAR, VECTOR, WINNER, TreeModel
from homunculus.ir.pipeline import VerdictKind, VerdictPlan
from homunculus.ir.quantised import FeatureBins, QLookupSum, QTree, QTreeEnsemble
from homunculus.ir.serialize import program_from_json, program_to_json
from homunculus.passes.lower_cpu import lower_cpu

WIDTHS = (1, 3, 8, 16, 32)


def random_tree(rng: np.random.Generator, widths: tuple[int, ...], n_scores: int,
                columns: list[int], max_depth: int) -> QTree:
    feature, threshold, left, right, leaves = [], [], [], [], []

    def grow(depth: int) -> int:
        node = len(feature)
        feature.append(-2)
        threshold.append(0)
        left.append(-1)
        right.append(-1)
        row = [0] * n_scores
        for c in columns:
            row[c] = int(rng.integers(-50, 50))
        leaves.append(tuple(row))
        if depth < max_depth and rng.random() < 0.7:
            f = int(rng.integers(0, len(widths)))
            top = (1 << widths[f]) - 1
            feature[node] = f
            threshold[node] = int(rng.choice([-1, 0, top, top + 5, rng.integers(0, top + 1)]))
            left[node] = grow(depth + 1)
            right[node] = grow(depth + 1)
        return node

    grow(0)
    return QTree(tuple(feature), tuple(threshold), tuple(left), tuple(right), tuple(leaves))


def probe(rng: np.random.Generator, widths: tuple[int, ...]) -> np.ndarray:
    rows = np.stack([rng.integers(0, 1 << w, 400, dtype=np.int64) for w in widths], axis=1)
    edges = np.array([[0] * len(widths), [(1 << w) - 1 for w in widths]], dtype=np.int64)
    return np.vstack([rows, edges])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_features=st.integers(1, 4),
       n_trees=st.sampled_from([1, 2, 5]), n_scores=st.integers(2, 5),
       one_column=st.booleans())
def test_trees_keep_the_model(seed: int, n_features: int, n_trees: int, n_scores: int,
                              one_column: bool) -> None:
    rng = np.random.default_rng(seed)
    widths = tuple(int(rng.choice(WIDTHS)) for _ in range(n_features))
    trees = tuple(random_tree(rng, widths, n_scores,
                              [i % n_scores] if one_column else list(range(n_scores)),
                              int(rng.integers(0, 7))) for i in range(n_trees))
    model = QTreeEnsemble(trees, tuple(int(v) for v in rng.integers(-20, 20, n_scores)))
    feats = tuple(FeatureDecl(f"x{i}", w) for i, w in enumerate(widths))
    plan = VerdictPlan(kind=VerdictKind.DROP, drop=frozenset({0}))
    program = lower_cpu(model, feats, tuple(f"c{i}" for i in range(n_scores)), plan)
    assert isinstance(program.model, TreeModel)
    if n_trees == 1:
        assert program.model.mode == WINNER
    else:  # boosted trees move one score each; others vote vectors (unless all are constant)
        assert program.model.mode in ((SCALAR,) if one_column else (SCALAR, VECTOR))
    x = probe(rng, widths)
    want = np.argmax(model.scores(x), axis=1)
    np.testing.assert_array_equal(program.results(x)["class_id"], want)
    np.testing.assert_array_equal(program.results(x)["verdict_drop"], (want == 0).astype(int))
    for tree in program.model.trees:  # a walk of `depth` steps always ends on a leaf
        assert all(tree.feature[tree.left[i]] >= -1 for i in range(tree.n_nodes))
        assert tree.n_nodes <= max(len(t.feature) for t in trees)
    again = program_from_json(program_to_json(program))
    np.testing.assert_array_equal(again.results(x)["class_id"], want)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_features=st.integers(1, 4),
       n_scores=st.integers(2, 6))
def test_lookups_keep_the_model(seed: int, n_features: int, n_scores: int) -> None:
    rng = np.random.default_rng(seed)
    widths = tuple(int(rng.choice(WIDTHS)) for _ in range(n_features))
    bins = []
    for f, w in enumerate(widths):
        for _ in range(int(rng.integers(0, 3))):  # none, one or two bin sets per feature
            top = (1 << w) - 1
            inner = sorted({int(v) for v in rng.integers(0, top + 1, int(rng.integers(0, 6)))})
            edges = tuple(e for e in inner if e < top) + (top + int(rng.integers(0, 3)),)
            scores = tuple(tuple(int(v) for v in rng.integers(-30, 30, n_scores))
                           for _ in edges)
            bins.append(FeatureBins(f, edges, scores))
    model = QLookupSum(tuple(bins), tuple(int(v) for v in rng.integers(-10, 10, n_scores)))
    feats = tuple(FeatureDecl(f"x{i}", w) for i, w in enumerate(widths))
    program = lower_cpu(model, feats, tuple(f"c{i}" for i in range(n_scores)), VerdictPlan())
    x = probe(rng, widths)
    np.testing.assert_array_equal(program.results(x)["class_id"],
                                  np.argmax(model.scores(x), axis=1))
    for e in program.model.encoders:  # one partition of each feature's range
        assert e.edges[-1] == (1 << e.width) - 1
        assert list(e.edges) == sorted(set(e.edges))
