"""Resource model, stage allocation and the feasibility verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from homunculus.ir.pipeline import Field, VerdictPlan
from homunculus.models.base import get_family
from homunculus.passes.allocate import StageCaps, Unit, pack_narrow, place, span_of
from homunculus.passes.lower import lower
from homunculus.targets.base import Limits, Usage, assess
from homunculus.targets.p4.calibration import calibrate, legacy_units
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
    caps = StageCaps(logical=2, sram_blocks=4, tcam_blocks=2)
    small = [Unit(n, "table", writes=frozenset({n}), tcam_blocks=1, sram_blocks=1)
             for n in "abc"]
    big = Unit("big", "table", writes=frozenset({"big"}), tcam_blocks=5, sram_blocks=1)
    stages = place([*small, big], caps)  # two per stage; 5 TCAM blocks span 3 stages
    names = [[u.name for u in s] for s in stages]
    assert names[0] == ["a", "b"] and "c" in names[1]
    assert sum("big" in s for s in names) == 3
    for s in stages:
        assert sum(1 for _ in s) <= 2
        assert sum(-(-u.tcam_blocks // span_of(u, caps)) for u in s) <= 2


def test_dependencies_and_container_conflicts() -> None:
    """A unit waits for every writer of what it reads or writes; tables writing one shared
    (packed) container never share a stage; independent units share one."""
    caps = StageCaps(logical=16)
    a = Unit("a", "table", writes=frozenset({"x"}))
    b = Unit("b", "action", frozenset({"x"}), frozenset({"y"}))
    c = Unit("c", "table", writes=frozenset({"z"}))
    d = Unit("d", "action", frozenset({"y"}), frozenset({"x"}))  # rewrites x: after a and b
    stages = place([a, b, c, d], caps)
    where = {u.name: i for i, s in enumerate(stages) for u in s}
    assert where == {"a": 0, "c": 0, "b": 1, "d": 2}
    packed = pack_narrow([("p", 1, "t1"), ("q", 3, "t2"), ("r", 8, "t3"), ("s", 5, "t4")])
    assert packed == {"p": "phv8_0", "q": "phv8_0", "s": "phv8_1"}
    t1 = Unit("t1", "table", writes=frozenset({"p"}), packed_writes=frozenset({"phv8_0"}))
    t2 = Unit("t2", "table", writes=frozenset({"q"}), packed_writes=frozenset({"phv8_0"}))
    assert len(place([t1, t2], caps)) == 2
    solitary = [Unit(u.name, "table", writes=u.writes) for u in (t1, t2)]
    assert len(place(solitary, caps)) == 1


def test_encoders_before_trees_and_the_verdict_last(small_dataset) -> None:
    ds = small_dataset
    fam = get_family("rf")
    trained = fam.train(fam.default_params(), ds.x_train, ds.y_train, ds.n_classes, ds.widths, 0)
    pipeline = lower(trained.quantised, ds.features, ds.class_labels, VerdictPlan())
    target = SwitchTarget(TOFINO)
    prepared = target.prepare(pipeline)
    usage = target.estimate(prepared)
    order = {name: s.stage for s in usage.per_stage for name in s.tables}
    assert max(order[t.name] for t in prepared.encoders) < min(order[t.name]
                                                               for t in prepared.lookups)
    assert order["verdict"] == usage.stages - 1
    ops = [op for s in usage.per_stage for op in s.ops]
    levels = [op for op in ops if op.startswith("action sum")]
    assert levels and any(op == "action argmax_diff" for op in ops)
    # each add after the trees it adds (the first ones beside later trees: adder_steps), and
    # the differences after the last add
    stage_of = {op: s.stage for s in usage.per_stage for op in s.ops}
    tree_of = {o.name: order[t.name] for t in prepared.lookups for o in t.outputs}
    for step in prepared.alu:
        if step.name.startswith("sum"):
            added = [tree_of[f.name] for op in step.ops for f in (op.a, op.b)
                     if isinstance(f, Field)]
            assert stage_of[f"action {step.name}"] > max(added)
    assert stage_of["action argmax_diff"] > max(stage_of[op] for op in levels)


def test_calibration_matches_the_real_compiler() -> None:
    """The Tofino compiler placed the fixture's dt program in 7 stages (resources.json)."""
    root = Path(__file__).parent / "fixtures" / "real-compilers" / "tna" / "iot-dt-tofino"
    real = len(json.loads((root / "resources.json").read_text())
               ["resources"]["mau"]["mau_stages"])
    result = calibrate("iot-dt-tofino", (root / "program.p4").read_text(), TOFINO, real)
    assert real == 7 and result.estimated == real
    # three encoder stages: three narrow outputs packed into one container (1 + 1 + 3 bits)
    encoder_stages = [s for s in result.stages if any(n.startswith("enc_") for n in s)]
    assert len(encoder_stages) == 3
    assert result.stages[-2:] == (("verdict_apply",), ("ipv4_checksum_condition",))


def test_a_wide_ternary_key_takes_the_crossbar_groups_the_compiler_gave_it() -> None:
    """bf-p4c put the fixture's 161-bit tree key in 22 ternary crossbar bytes (two pairs of
    5-byte groups with their mid bytes) and 4 TCAMs side by side: the model says 4 groups and 4
    TCAMs (5-byte groups alone would say 5)."""
    root = Path(__file__).parent / "fixtures" / "real-compilers" / "tna" / "iot-dt-tofino"
    stages = json.loads((root / "resources.json").read_text())["resources"]["mau"]["mau_stages"]

    def used_by_tree(item: dict) -> bool:
        return any(u["used_by"] == "MyIngress.tree0" for u in item["usages"])

    tcams = [t for s in stages for t in s["tcams"]["tcams"] if used_by_tree(t)]
    xbar = [b for s in stages for b in s["xbar_bytes"]["bytes"]
            if b["byte_type"] == "ternary" and used_by_tree(b)]
    assert (len(tcams), len(xbar)) == (4, 22)
    tree = {u.name: u for u in legacy_units((root / "program.p4").read_text(), TOFINO)}["tree0"]
    assert tree.ternary_xbar_groups == len(tcams) and tree.tcam_blocks == len(tcams)


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
