"""Thermometer codes per tree: an ensemble's trees each test their own code per feature, all
written by the feature's one encoder, so each tree's key is only as wide as its own thresholds
and several trees share a Tofino stage. The lowering keeps the layout with fewer stages."""

from __future__ import annotations

import numpy as np
import pytest

from homunculus.ir.pipeline import VerdictKind, VerdictPlan
from homunculus.models.base import get_family
from homunculus.passes.lower import TreeCodes, lower
from homunculus.search.problem import lower_for
from homunculus.targets.p4 import emit_p4, runtime_entries
from homunculus.targets.p4.check import check_program
from homunculus.targets.p4.profiles import BMV2, TOFINO
from homunculus.targets.p4.rules import check_rules
from homunculus.targets.p4.target import SwitchTarget
from homunculus.targets.p4.twin import simulate

from conftest import synthetic_dataset

VERDICT = VerdictPlan(VerdictKind.DROP, drop=frozenset({1}))
FOREST = {"rf_n_estimators": 12, "rf_max_depth": 7, "rf_min_samples_leaf": 1,
          "rf_max_features": 0.7, "rf_leaf_bits": 4}


def trained(family: str, params: dict | None = None):  # noqa: ANN201
    ds = synthetic_dataset(1200, seed=3)
    fam = get_family(family)
    return ds, fam.train(params or fam.default_params(), ds.x_train, ds.y_train, ds.n_classes,
                         ds.widths, 0)


def tree_key_bits(pipeline) -> list[int]:  # noqa: ANN001
    return [t.key_width for t in pipeline.lookups if t.name.startswith("tree")]


@pytest.mark.parametrize(("family", "params"), [("rf", FOREST), ("xgb", None)])
@pytest.mark.parametrize("profile", [TOFINO, BMV2], ids=["tna", "v1model"])
def test_codes_per_tree_agree_with_the_model_and_narrow_every_key(family, params,
                                                                   profile) -> None:
    ds, model = trained(family, params)
    target = SwitchTarget(profile)
    shared, per_tree = (target.prepare(lower(model.quantised, ds.features, ds.class_labels,
                                             VERDICT, model.winner_to_class, tree_codes=c))
                        for c in (TreeCodes.SHARED, TreeCodes.PER_TREE))
    x = np.concatenate([ds.x_train, ds.x_test])
    want = model.predict_quantised(x)
    np.testing.assert_array_equal(simulate(per_tree, x).class_index, want)
    np.testing.assert_array_equal(simulate(shared, x).class_index, want)
    # one encoder per feature either way; each tree keys on its own code fields only
    assert len(per_tree.encoders) == len(shared.encoders)
    narrow, wide = tree_key_bits(per_tree), tree_key_bits(shared)
    assert len(narrow) == len(wide) and all(n <= w for n, w in zip(narrow, wide, strict=True))
    assert sum(narrow) < sum(wide)
    for table in per_tree.lookups:
        owner = {k.name.split("__t")[1].split("_")[0] for k in table.keys if "__t" in k.name}
        assert owner == {table.name[4:]}, (table.name, owner)
    arch = "tna" if profile is TOFINO else "v1model"
    text = emit_p4(per_tree, arch, program_name="forest")
    check_rules(text, arch)
    check_program(text, runtime_entries(per_tree, program_name="forest", arch=arch))


def test_tofino_takes_the_layout_with_fewer_stages() -> None:
    """On Tofino a shared code of a few hundred bits fills a stage's ternary crossbar, so the
    forest's trees take a stage each; with a code per tree they share stages, and lower_for
    keeps that. A single tree has one layout (the shared one)."""
    ds, model = trained("rf", FOREST)
    target = SwitchTarget(TOFINO)
    stages = {c: target.estimate(target.prepare(lower(
        model.quantised, ds.features, ds.class_labels, VERDICT, model.winner_to_class,
        tree_codes=c))).stages for c in TreeCodes}
    assert stages[TreeCodes.PER_TREE] < stages[TreeCodes.SHARED]
    chosen = lower_for(target, model.quantised, ds, VERDICT, model.winner_to_class)
    assert target.estimate(chosen).stages == stages[TreeCodes.PER_TREE]
    assert any("__t" in o.name for e in chosen.encoders for o in e.outputs)
    _, tree = trained("dt")
    single = lower_for(target, tree.quantised, ds, VERDICT, tree.winner_to_class)
    assert not any("__t" in o.name for e in single.encoders for o in e.outputs)
