"""Atomic model installs on switches: versioned tables, the update as P4Runtime JSON,
simple_switch_CLI commands and a bfrt script, and the twin showing that during the update no
packet is classified by a mix of the two models (while an unversioned in-place update does mix
them)."""

from __future__ import annotations

import numpy as np
import pytest

from homunculus.ir.pipeline import VerdictKind, VerdictPlan
from homunculus.models.base import get_family
from homunculus.passes.lower import TreeCodes, codes_within, lower, lower_like
from homunculus.targets.p4.twin import simulate
from homunculus.targets.p4.versioned import (
    Update,
    bfrt_updates,
    capacity,
    check_compatible,
    cli_updates,
    conform,
    p4runtime_updates,
    run_updates,
    update_plan,
    versioned,
)
from homunculus.targets.registry import make_target

from conftest import synthetic_dataset


def trained_pipeline(family: str, params: dict, seed: int, target: str = "bmv2"):  # noqa: ANN201
    ds = synthetic_dataset(600, seed=seed)
    fam = get_family(family)
    model = fam.train(params, ds.x_train, ds.y_train, ds.n_classes, ds.widths, seed)
    plan = VerdictPlan(VerdictKind.DROP, drop=frozenset({1}))
    pipeline = lower(model.quantised, ds.features, ds.class_labels, plan, model.winner_to_class)
    switch, _ = make_target("bmv2", {})
    return switch.prepare(pipeline), ds


def first_that_fits(build, depths, compiled):  # noqa: ANN001, ANN201
    """The first depth whose retrained pipeline ``build(depth)`` fits the compiled tables, as
    adapt's retrain does: (the pipeline as lowered, the same conformed to the tables)."""
    from homunculus.targets.xdp.layout import CapacityError

    for d in depths:
        raw = build(d)
        try:
            return raw, conform(raw, compiled)
        except CapacityError:
            continue
    pytest.fail("no depth fits the compiled tables")


def assert_flip_never_mixes(old, new, xs: np.ndarray) -> None:  # noqa: ANN001
    """Install ``new`` as version 1 beside ``old`` while ``xs`` flows: both versions classify
    some packets, and each packet is classified wholly by the one its version bit names."""
    plan = update_plan(old, new, 0, 1)
    classes, seen = run_updates(old, plan, xs, 0)
    assert set(seen.tolist()) == {0, 1}
    want = np.where(seen == 0, simulate(old, xs).class_index, simulate(new, xs).class_index)
    np.testing.assert_array_equal(classes, want)


@pytest.mark.parametrize("family", ["gnb", "cnb"])
def test_version_flip_never_mixes_models(family: str) -> None:
    old, ds = trained_pipeline(family, get_family(family).default_params() | {}, 0)
    new, _ = trained_pipeline(family, get_family(family).default_params() | {}, 7)
    x = np.concatenate([ds.x_test] * 3)
    a, b = simulate(old, x).class_index, simulate(new, x).class_index
    assert (a != b).any(), "the two models must differ for the test to mean anything"
    # The versioned program computes what the unversioned one does, for either version.
    for v, p in ((0, old), (1, new)):
        got = simulate(versioned(p, v), x, extra={"model_version": np.full(len(x), v)})
        np.testing.assert_array_equal(got.class_index, simulate(p, x).class_index)
    plan = update_plan(old, new, 0, 1)
    assert [u.op for u in plan].count("flip") == 1
    classes, seen = run_updates(old, plan, x, 0)
    assert set(seen.tolist()) == {0, 1}, "packets flowed before and after the flip"
    want = np.where(seen == 0, a, b)
    np.testing.assert_array_equal(classes, want)
    assert (np.diff(seen) >= 0).all()


def test_unversioned_in_place_update_mixes_models() -> None:
    """The same models replaced table by table in place, no version: some packets get a class
    neither model gives (what the versioned update prevents)."""
    old, ds = trained_pipeline("gnb", get_family("gnb").default_params(), 0)
    new, _ = trained_pipeline("gnb", get_family("gnb").default_params(), 7)
    vo, vn = versioned(old, 0), versioned(new, 0)  # one version for both: in-place
    plan: list[Update] = []
    for to, tn in zip(vo.tables(), vn.tables(), strict=True):
        plan += [Update("delete", to.name, e) for e in to.entries]
        plan += [Update("insert", tn.name, e) for e in tn.entries]
    x = np.concatenate([ds.x_test] * 6)
    classes, _ = run_updates(old, plan, x, 0)
    a, b = simulate(old, x).class_index, simulate(new, x).class_index
    mixed = (classes != a) & (classes != b)
    assert mixed.any()


def test_update_writers() -> None:
    old, _ = trained_pipeline("gnb", get_family("gnb").default_params(), 0)
    new, _ = trained_pipeline("gnb", get_family("gnb").default_params(), 7)
    plan = update_plan(old, new, 0, 1)
    data = p4runtime_updates(plan, old, "v1model")
    kinds = [u["type"] for u in data["updates"]]
    flip = kinds.index("MODIFY")
    assert set(kinds[:flip]) == {"INSERT"} and set(kinds[flip + 1:]) == {"DELETE"}
    assert data["updates"][flip]["entity"]["register_entry"]["data"] == "0x1"
    inserted = data["updates"][0]["entity"]["table_entry"]
    assert inserted["match"]["meta.model_version"] == {"exact": {"value": "0x1"}}
    text = cli_updates(plan, old)
    assert "register_write MyIngress.hmn_version 0 1" in text
    assert text.count("table_add") == kinds.count("INSERT")
    assert text.count("table_delete_by_key") == kinds.count("DELETE")
    bfrt = bfrt_updates(plan, old, "prog")
    assert "ingress.hmn_version.mod(REGISTER_INDEX=0, f1=1)" in bfrt
    assert bfrt.count(".add_with_") == kinds.count("INSERT")
    compile(bfrt, "bfrt_update.py", "exec")  # valid Python


def test_incompatible_models_are_refused() -> None:
    """A retrained tree has other thresholds, hence other code widths: as lowered, its tables
    are not the deployed program's, and the update says so (:func:`conform` fits it first)."""
    old, _ = trained_pipeline("dt", get_family("dt").default_params(), 0)
    tree, _ = trained_pipeline("dt", get_family("dt").default_params(), 7)
    other, _ = trained_pipeline("gnb", get_family("gnb").default_params(), 0)
    with pytest.raises(ValueError, match="other tables|differ"):
        check_compatible(old, other)
    with pytest.raises(ValueError, match="keys or outputs differ from the deployed program"):
        update_plan(old, tree, 0, 1)
    with pytest.raises(ValueError, match="versions must differ"):
        update_plan(old, old, 1, 1)


def test_retrained_tree_fits_the_compiled_tables_and_flips_without_mixing() -> None:
    """A tree retrained on other data (only on the features the compiled program encodes, made
    shallower until it fits, as adapt's retrain does) is rewritten into the compiled tables:
    it classifies as before, its update is accepted, and no packet sees a mix of versions."""
    from homunculus.passes.switch import lower_for_switch
    from homunculus.targets.xdp.layout import CapacityError

    fam = get_family("dt")
    params = fam.default_params()
    old, ds = trained_pipeline("dt", params, 0)
    compiled = lower_for_switch(old)
    keyed = {t.keys[0].name for t in compiled.encoders}
    unused = [j for j, f in enumerate(compiled.features) if f.field.name not in keyed]
    other = synthetic_dataset(600, seed=7)
    x = other.x_train.copy()
    x[:, unused] = 0
    depth = next(k for k in params if k.endswith("max_depth"))
    switch, _ = make_target("bmv2", {})
    plan_ = VerdictPlan(VerdictKind.DROP, drop=frozenset({1}))
    def build(d: int):  # noqa: ANN202
        model = fam.train(params | {depth: d}, x, other.y_train, other.n_classes, other.widths, 7)
        return switch.prepare(lower(model.quantised, other.features, other.class_labels, plan_,
                                    model.winner_to_class))

    raw, new = first_that_fits(build, range(int(params[depth]), 0, -1), compiled)
    xs = np.concatenate([ds.x_test, other.x_test] * 2)
    np.testing.assert_array_equal(simulate(new, xs).class_index, simulate(raw, xs).class_index)
    for t in versioned(new, 1).tables():
        assert len(t.entries) <= capacity(compiled)[t.name]
    assert_flip_never_mixes(old, new, xs)
    # a model testing a feature a (smaller) compiled program does not encode cannot be fitted
    small = lower_for_switch(trained_pipeline("dt", params | {depth: 1}, 0)[0])
    keyed = {t.keys[0].name for t in small.encoders}
    unused = [j for j, f in enumerate(small.features) if f.field.name not in keyed]
    assert unused
    only_unused = other.x_train * np.isin(np.arange(other.x_train.shape[1]), unused)
    wide = fam.train(params | {depth: 1}, only_unused, other.y_train, other.n_classes,
                     other.widths, 7)
    raw = switch.prepare(lower(wide.quantised, other.features, other.class_labels, plan_,
                               wide.winner_to_class))
    with pytest.raises(CapacityError, match="does not encode"):
        conform(raw, small)


@pytest.mark.parametrize("target", ["bmv2", "tofino"])
def test_a_retrained_forest_with_a_code_per_tree_fits_the_compiled_tables(target) -> None:
    """A forest compiled with a thermometer code per tree: the retrained forest takes that
    layout (adapt picks the one whose code fields the compiled program has), codes its trees
    no longer need stay 0, it runs through the compiled program's score steps, and the
    version flip mixes nothing. On Tofino the encoders are ternary prefixes."""
    from homunculus.passes.switch import lower_for_switch

    fam = get_family("rf")
    params = fam.default_params() | {"rf_n_estimators": 4, "rf_max_depth": 5}
    ds = synthetic_dataset(600, seed=0)
    plan_ = VerdictPlan(VerdictKind.DROP, drop=frozenset({1}))
    switch, _ = make_target(target, {})
    model = fam.train(params, ds.x_train, ds.y_train, ds.n_classes, ds.widths, 0)
    old = switch.prepare(lower(model.quantised, ds.features, ds.class_labels, plan_,
                               model.winner_to_class, tree_codes=TreeCodes.PER_TREE))
    compiled = lower_for_switch(old)
    assert any("__t3" in o.name for e in compiled.encoders for o in e.outputs)
    keyed = {t.keys[0].name for t in compiled.encoders}
    unused = [j for j, f in enumerate(compiled.features) if f.field.name not in keyed]
    other = synthetic_dataset(600, seed=7)
    x = other.x_train.copy()
    x[:, unused] = 0
    retrained = {}

    def build(d: int):  # noqa: ANN202
        retrained[d] = fam.train(params | {"rf_max_depth": d}, x, other.y_train,
                                 other.n_classes, other.widths, 7)
        shared = lower(retrained[d].quantised, other.features, other.class_labels, plan_,
                       retrained[d].winner_to_class)
        assert not codes_within(shared, compiled)
        like = lower_like(compiled, retrained[d].quantised, other.features,
                          other.class_labels, plan_, retrained[d].winner_to_class)
        return switch.prepare(like)

    raw, new = first_that_fits(build, range(5, 0, -1), compiled)
    xs = np.concatenate([ds.x_test, other.x_test] * 2)
    assert codes_within(raw, compiled)  # the retrain took the compiled per-tree layout
    assert any("__t" in o.name for e in raw.encoders for o in e.outputs)
    assert new.alu == compiled.alu
    np.testing.assert_array_equal(simulate(new, xs).class_index, simulate(raw, xs).class_index)
    np.testing.assert_array_equal(simulate(raw, xs).class_index,
                                  retrained[min(retrained)].predict_quantised(xs))
    assert_flip_never_mixes(old, new, xs)
