"""Resource model, stage allocation and the feasibility verdict."""

from __future__ import annotations

import pytest

from homunculus.ir.pipeline import VerdictPlan
from homunculus.models.base import get_family
from homunculus.passes.allocate import StageCaps, TableCost, _place, dependency_levels
from homunculus.passes.lower import lower
from homunculus.targets.base import Limits, Usage, assess
from homunculus.targets.p4.profiles import BMV2, TOFINO
from homunculus.targets.p4.target import SwitchTarget


def _usage(**kw) -> Usage:
    base = dict(stages=5, tables=6, sram_kbit=100.0, tcam_kbit=50.0, entries=300, phv_bits=900,
                throughput_gpps=1.2, latency_ns=250.0)
    return Usage(**{**base, **kw})


def test_assess_names_the_binding_constraint() -> None:
    limits = Limits(stages=12, entries=200, throughput_gpps=1.0)
    verdict = assess(_usage(), limits)
    assert not verdict.feasible
    assert verdict.binding == "entries"
    assert any("entries 300 > limit 200" in v for v in verdict.violations)
    ok = assess(_usage(entries=100), limits)
    assert ok.feasible and ok.binding == "throughput_gpps"  # 1.0/1.2 is the tightest
    assert all(v <= 0 for v in ok.constraint_values().values())


def test_throughput_is_a_minimum() -> None:
    assert not assess(_usage(throughput_gpps=0.5), Limits(throughput_gpps=1.0)).feasible
    assert assess(_usage(throughput_gpps=2.0), Limits(throughput_gpps=1.0)).feasible


def test_limits_reject_unknown_keys() -> None:
    with pytest.raises(KeyError, match="unknown constraint"):
        Limits().merged({"stagez": 3})


def test_tofino_defaults_documented_numbers() -> None:
    limits = TOFINO.default_limits()
    assert limits.stages == 12 and limits.tables == 12 * 16
    assert limits.sram_kbit == 12 * 80 * 128  # 80 blocks of 1K x 128 bit per stage
    assert limits.tcam_kbit == 12 * 24 * 512 * 44 / 1024


def test_stage_caps_are_respected_and_big_tables_span() -> None:
    caps = StageCaps(tables=2, sram_blocks=4, tcam_blocks=2, sram_block_bits=1, tcam_block_bits=1)
    from homunculus.passes.allocate import _Stage

    stages: list[_Stage] = []
    small = TableCost(10, 1, 1, 1, 1)
    for name in "abc":  # three tables, two per stage
        _place(stages, 0, name, small, caps)
    assert [s.tables for s in stages] == [["a", "b"], ["c"]]
    last = _place(stages, 0, "big", TableCost(5000, 1, 5, 1, 5), caps)  # 5 TCAM blocks: 3 stages
    spanned = [i for i, s in enumerate(stages) if "big" in s.tables]
    assert len(spanned) == 3 and last == spanned[-1]
    assert all(s.tcam_blocks <= caps.tcam_blocks and len(s.tables) <= 2 for s in stages)


def test_dependencies_order_encoders_before_trees(small_dataset) -> None:
    ds = small_dataset
    fam = get_family("rf")
    trained = fam.train(fam.default_params(), ds.x_train, ds.y_train, ds.n_classes, ds.widths, 0)
    pipeline = lower(trained.quantised, ds.features, ds.class_labels, VerdictPlan())
    levels = dependency_levels(pipeline)
    assert {t.name for t in levels[0]} == {t.name for t in pipeline.encoders}
    assert {t.name for t in levels[1]} == {t.name for t in pipeline.lookups}
    usage = SwitchTarget(TOFINO).estimate(SwitchTarget(TOFINO).prepare(pipeline))
    order = {name: s.stage for s in usage.per_stage for name in s.tables}
    assert max(order[t.name] for t in pipeline.encoders) < min(order[t.name]
                                                               for t in pipeline.lookups)
    assert order["verdict"] == usage.stages - 1
    ops = [op for s in usage.per_stage for op in s.ops]
    assert any(op.startswith("sum") for op in ops) and any(op.startswith("argmax") for op in ops)


def test_bmv2_keeps_ranges_and_tofino_expands(small_dataset) -> None:
    ds = small_dataset
    fam = get_family("gnb")
    trained = fam.train(fam.default_params(), ds.x_train, ds.y_train, ds.n_classes, ds.widths, 0)
    pipeline = lower(trained.quantised, ds.features, ds.class_labels, VerdictPlan())
    bm = SwitchTarget(BMV2).prepare(pipeline)
    tf = SwitchTarget(TOFINO).prepare(pipeline)
    assert any("range" in t.kinds for t in bm.lookups)
    assert all("range" not in t.kinds for t in tf.lookups)
    assert tf.n_entries >= bm.n_entries
