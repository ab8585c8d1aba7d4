"""Encoding passes keep table semantics exactly; lowering keeps tables linear in leaves."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from homunculus.ir.pipeline import Entry, Field, MatchKind, Range, Table, TableRole
from homunculus.ir.quantised import from_json, predict_index, to_json
from homunculus.models.base import get_family
from homunculus.passes.encode import elide_default, expand_ranges, range_to_prefixes
from homunculus.passes.lower import CODE_CHUNK_BITS, lower
from homunculus.targets.p4.twin import run_table


@given(width=st.integers(1, 16), data=st.data())
def test_prefixes_cover_exactly_the_range(width: int, data: st.DataObject) -> None:
    top = (1 << width) - 1
    lo = data.draw(st.integers(0, top))
    hi = data.draw(st.integers(lo, top))
    prefixes = range_to_prefixes(lo, hi, width)
    values = np.arange(top + 1) if width <= 12 else np.unique(
        np.concatenate([np.arange(max(lo - 3, 0), min(hi + 4, top + 1)),
                        np.random.default_rng(0).integers(0, top + 1, 2000)]))
    covered = np.zeros(len(values), dtype=bool)
    for p in prefixes:
        hit = (values & p.mask) == (p.value & p.mask)
        assert not (covered & hit).any(), "prefixes overlap"
        covered |= hit
    np.testing.assert_array_equal(covered, (values >= lo) & (values <= hi))
    assert len(prefixes) <= max(1, 2 * width - 2)


def _range_table(edges: list[int], width: int) -> Table:
    lows = [0, *[e + 1 for e in edges[:-1]]]
    out = Field("o", 8)
    entries = tuple(Entry((Range(lo, hi),), (i % 3,)) for i, (lo, hi) in
                    enumerate(zip(lows, edges, strict=True)))
    return Table("t", TableRole.LOOKUP, (Field("k", width),), (MatchKind.RANGE,), (out,), entries,
                 (0,))


@given(cuts=st.lists(st.integers(0, 254), max_size=12, unique=True))
def test_expand_and_elide_keep_semantics(cuts: list[int]) -> None:
    table = _range_table([*sorted(cuts), 255], 8)
    keys = np.arange(256)
    results = []
    for t in (table, expand_ranges(table), elide_default(expand_ranges(table)),
              elide_default(table)):
        env = {"k": keys}
        run_table(t, env, len(keys))
        results.append(env["o"])
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    assert len(elide_default(table).entries) < len(table.entries) or len(table.entries) == 0


def test_tree_tables_are_linear_in_leaves(small_dataset) -> None:
    fam = get_family("rf")
    ds = small_dataset
    params = {**fam.default_params(), "rf_n_estimators": 12, "rf_max_depth": 7}
    trained = fam.train(params, ds.x_train, ds.y_train, ds.n_classes, ds.widths, 0)
    pipeline = lower(trained.quantised, ds.features, ds.class_labels,
                     __import__("homunculus.ir.pipeline", fromlist=["VerdictPlan"]).VerdictPlan())
    leaves = sum(len(t.leaves()) for t in trained.quantised.trees)
    tree_entries = sum(len(t.entries) for t in pipeline.lookups)
    assert tree_entries <= leaves  # one entry per reachable leaf, never a cross product
    assert len(pipeline.lookups) == len(trained.quantised.trees)
    for enc in pipeline.encoders:
        assert all(o.width <= CODE_CHUNK_BITS for o in enc.outputs)


def test_quantised_json_round_trip(small_dataset) -> None:
    ds = small_dataset
    for name in ("xgb", "gnb"):
        fam = get_family(name)
        trained = fam.train(fam.default_params(), ds.x_train, ds.y_train, ds.n_classes,
                            ds.widths, 0)
        again = from_json(to_json(trained.quantised))
        np.testing.assert_array_equal(predict_index(again, ds.x_test),
                                      predict_index(trained.quantised, ds.x_test))


def test_decision_tree_quantisation_is_exact(small_dataset) -> None:
    ds = small_dataset
    fam = get_family("dt")
    trained = fam.train(fam.default_params(), ds.x_train, ds.y_train, ds.n_classes, ds.widths, 0)
    np.testing.assert_array_equal(trained.predict_float(ds.x_test),
                                  trained.predict_quantised(ds.x_test))


def test_merging_everything_folds_sum_and_argmax(small_dataset) -> None:
    from homunculus.ir.pipeline import VerdictPlan
    from homunculus.targets.p4.twin import simulate

    ds = small_dataset
    fam = get_family("rf")
    params = {**fam.default_params(), "rf_n_estimators": 3, "rf_max_depth": 2}
    trained = fam.train(params, ds.x_train, ds.y_train, ds.n_classes, ds.widths, 0)
    apart = lower(trained.quantised, ds.features, ds.class_labels, VerdictPlan())
    fused = lower(trained.quantised, ds.features, ds.class_labels, VerdictPlan(),
                  max_lookup_tables=1)
    assert len(apart.lookups) == 3 and apart.score_sum is not None
    assert len(fused.lookups) == 1 and fused.score_sum is None and fused.argmax is None
    np.testing.assert_array_equal(simulate(fused, ds.x_test).class_index,
                                  trained.predict_quantised(ds.x_test))


def test_encoding_twice_changes_nothing(small_dataset) -> None:
    from homunculus.ir.pipeline import VerdictPlan
    from homunculus.passes.encode import encode_for_target
    from homunculus.targets.p4.twin import simulate

    ds = small_dataset
    fam = get_family("cnb")
    trained = fam.train(fam.default_params(), ds.x_train, ds.y_train, ds.n_classes, ds.widths, 0)
    once = encode_for_target(lower(trained.quantised, ds.features, ds.class_labels,
                                   VerdictPlan()), supports_range=True)
    twice = encode_for_target(once, supports_range=True)
    assert twice == once
    np.testing.assert_array_equal(simulate(twice, ds.x_test).class_index,
                                  trained.predict_quantised(ds.x_test))
