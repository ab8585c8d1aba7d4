"""Score sums scheduled as their terms arrive (passes/switch.py, ``adder_steps``)."""

from __future__ import annotations

import numpy as np
import pytest

from homunculus.ir.pipeline import AluKind, AluOp, Field, VerdictKind, VerdictPlan
from homunculus.models.base import get_family
from homunculus.passes.allocate import place
from homunculus.passes.lower import TreeCodes, lower
from homunculus.passes.switch import adder_steps
from homunculus.targets.p4.profiles import TOFINO
from homunculus.targets.p4.resources import stage_caps
from homunculus.targets.p4.target import SwitchTarget
from homunculus.targets.p4.twin import simulate
from homunculus.targets.p4.units import program_units

from conftest import synthetic_dataset


def run_steps(steps: list[list[AluOp]], env: dict[str, int]) -> dict[str, int]:
    """Execute the steps as a switch does: every op of a step reads the values before it."""
    env = dict(env)
    for ops in steps:
        new = {}
        for op in ops:
            assert op.kind is AluKind.ADD
            a = env[op.a.name] if isinstance(op.a, Field) else op.a
            b = env[op.b.name] if isinstance(op.b, Field) else op.b
            new[op.dst.name] = a + b
        assert len(new) == len(ops), "two ops of one step write one field"
        env.update(new)
    return env


def finish(steps: list[list[AluOp]], arrival: dict[str, int], totals: list) -> int:
    """The stage after which every total can be read: a step runs in the first stage after
    what it reads, an add taking one stage."""
    ready = dict(arrival)
    for ops in steps:
        start = max(ready[f.name] for op in ops for f in (op.a, op.b) if isinstance(f, Field))
        for op in ops:
            ready[op.dst.name] = start + 1
    return max(ready[t.name] for t in totals if isinstance(t, Field))


@pytest.mark.parametrize("n_terms", [1, 2, 3, 9, 24])
@pytest.mark.parametrize("per_stage", [1, 2, 100])
def test_the_sums_are_right_and_end_soon_after_the_last_term(n_terms, per_stage) -> None:
    """Terms of three classes arriving ``per_stage`` a stage: every total is right, the adds
    of one time run in one step, and the last total is ready at most two adds after the last
    term, or after the balanced tree's ceil(log2 n) adds when they all arrive at once (level
    by level, the sum always took ceil(log2 n) adds after the last term). Adds of one time
    run in one step."""
    rng = np.random.default_rng(n_terms)
    terms = [[(k // per_stage, Field(f"t{k}_c{c}", 12)) for k in range(n_terms)]
             for c in range(3)]
    values = {f.name: int(rng.integers(0, 50)) for cls in terms for _, f in cls}
    steps, totals = adder_steps(terms)
    env = run_steps(steps, values)
    for c, cls in enumerate(terms):
        total = totals[c]
        assert isinstance(total, Field)
        assert env[total.name] == sum(values[f.name] for _, f in cls)
    last = (n_terms - 1) // per_stage
    levels = int(np.ceil(np.log2(n_terms)))
    done = finish(steps, {f.name: t for cls in terms for t, f in cls}, totals)
    assert done <= last + (levels if per_stage >= n_terms else min(levels, 2))
    assert sum(len(ops) for ops in steps) == 3 * (n_terms - 1)
    if per_stage >= n_terms:  # all at once (bmv2): one step per level of a balanced tree
        assert len(steps) == levels


def test_classes_with_their_own_tables_and_a_constant() -> None:
    """Boosting's layout: each class's terms come from tables of their own (other slots);
    a constant (a bias left over) is only ever the second operand."""
    terms = [[(slot, Field(f"s{slot}", 10)) for slot in range(c, 12, 3)] for c in range(3)]
    terms[1].append((-2, 7))
    values = {f.name: slot + 1 for cls in terms for slot, f in cls if isinstance(f, Field)}
    steps, totals = adder_steps(terms)
    env = run_steps(steps, values)
    for c, cls in enumerate(terms):
        want = sum(values[f.name] if isinstance(f, Field) else f for _, f in cls)
        total = totals[c]
        assert isinstance(total, Field) and env[total.name] == want
    assert all(isinstance(op.a, Field) for ops in steps for op in ops)
    assert adder_steps([[]]) == ([], [None])


def test_a_forest_on_tofino_sums_while_its_last_trees_match() -> None:
    """24 depth-8 trees on TNA, about six a stage: the adds start while later trees still
    match; the scores are complete at most one stage later than the best adder tree for the
    stages the trees landed in (the estimate ``term_arrival`` works from keys alone), and
    earlier than level by level (ceil(log2 24) = 5 adds after the last tree); the twin
    agrees with the model."""
    ds = synthetic_dataset(1200, seed=3)
    model = get_family("rf").train(
        {"rf_n_estimators": 24, "rf_max_depth": 8, "rf_min_samples_leaf": 1,
         "rf_max_features": 0.7, "rf_leaf_bits": 4}, ds.x_train, ds.y_train, ds.n_classes,
        ds.widths, 0)
    pipeline = SwitchTarget(TOFINO).prepare(lower(
        model.quantised, ds.features, ds.class_labels, VerdictPlan(VerdictKind.DROP,
                                                                   drop=frozenset({1})),
        model.winner_to_class, tree_codes=TreeCodes.PER_TREE))
    x = np.concatenate([ds.x_train, ds.x_test])
    np.testing.assert_array_equal(simulate(pipeline, x).class_index, model.predict_quantised(x))
    stages = place(program_units(pipeline, TOFINO), stage_caps(TOFINO))
    stage_of = {u.name: i for i, stage in enumerate(stages) for u in stage}
    trees = {o.name: stage_of[t.name] + 1 for t in pipeline.lookups for o in t.outputs}
    sums = [stage_of[s.name] for s in pipeline.alu if s.name.startswith("sum")]
    assert min(sums) < max(trees.values()) - 1
    placed = max(sums) + 1
    terms = [[(trees[o.name], o) for t in pipeline.lookups for o in t.outputs[c:c + 1]]
             for c in range(ds.n_classes)]
    steps, totals = adder_steps(terms)
    assert placed <= finish(steps, trees, totals) + 1
    assert placed < max(trees.values()) + 5
