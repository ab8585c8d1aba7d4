"""Per-flow decisions: classify at packet N of a flow, keep the class in flow state and apply it
to the flow's later packets. The reference (features/reference.py) against the register twin,
the generated P4 decision code against the twin, and the whole data plane (P4 twin, XDP in the
kernel) against the reference over every packet of a capture."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_p4_flow_codegen import FlowBlock, _headers, _translate, block, packet_table

from homunculus.compile import write_model
from homunculus.data.attacks import synthetic_background
from homunculus.data.traffic import build_traffic_dataset, packet_positions
from homunculus.features.library import FeatureDef, FlowConfig
from homunculus.features.reference import flow_decisions, flow_positions
from homunculus.ir.flow import lower_flow_features
from homunculus.ir.pipeline import VerdictKind, VerdictPlan
from homunculus.ir.serialize import compiled_to_json
from homunculus.models.base import get_family
from homunculus.search.problem import DECIDE_PARAM, decided, decision_choices, evaluate
from homunculus.search.problem import make_problem as new_problem
from homunculus.simulate import simulate_capture
from homunculus.targets.p4.codegen import emit_p4
from homunculus.targets.p4.flow_twin import run_decisions, trace_flow_program
from homunculus.targets.registry import make_target

FEATURES = [FeatureDef("ip_len", "header", 16, "ipv4.total_len"),
            FeatureDef("pkts", "pkt_count", 8), FeatureDef("bytes", "byte_count", 16)]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), slots=st.sampled_from([2, 4, 64]), at=st.integers(1, 6))
def test_reference_equals_the_decision_register(seed, slots, at) -> None:
    table = packet_table(300, seed)
    cfg = FlowConfig(slots=slots)
    program = lower_flow_features(FEATURES, cfg, decide_at=at)
    assert program is not None and program.decision is not None
    _, eligible, trace = trace_flow_program(program, table, len(FEATURES))
    classes = np.random.default_rng(seed).integers(0, 5, len(table))
    count, stored = run_decisions(program, trace, eligible, classes)
    twin = np.where(count > at, stored, classes)[eligible]
    positions, episodes = flow_positions(table, cfg)
    assert (positions[eligible] == count[eligible]).all()
    reference = flow_decisions(classes[eligible], positions[eligible], episodes[eligible], at)
    assert (twin == reference).all()


def test_positions_count_each_stay_in_a_slot() -> None:
    table = packet_table(400, 3)
    positions, episodes = flow_positions(table, FlowConfig(slots=2))
    eligible = episodes >= 0
    for ep in np.unique(episodes[eligible]):
        assert positions[episodes == ep].tolist() == list(range(1, (episodes == ep).sum() + 1))
    assert len(np.unique(episodes[eligible])) > 20  # evictions start new stays


def length_labelled_dataset(seed: int = 0):
    """Packets labelled by their own length, so the model's class changes within a flow (and
    a decision at packet N changes what later packets get)."""
    table = synthetic_background(np.random.default_rng(seed), 80, 10_000_000)
    table["label"] = np.where(table["ip_total_len"] > 300, "big", "small")
    return table, build_traffic_dataset(table, FEATURES, FlowConfig(slots=64, unit_ns=1024),
                                        split="flow", test_fraction=0.3, seed=seed,
                                        source="synthetic")


@pytest.mark.parametrize("target", ["tofino", "bmv2", "xdp"])
def test_whole_data_plane_applies_the_decision(tmp_path, target) -> None:
    table, ds = length_labelled_dataset()
    if target != "tofino":  # the flow clock's unit differs by target; rebuild for it
        ds = build_traffic_dataset(table, FEATURES, FlowConfig(slots=64, unit_ns=1000),
                                   split="flow", test_fraction=0.3, seed=0, source="synthetic")
    tgt, limits = make_target(target, {})
    verdict = VerdictPlan(VerdictKind.DSCP, dscp={0: 46})
    problem = new_problem(ds, tgt, limits, "f1_macro", None, verdict, 0)
    assert decision_choices(problem)[0] == 0 and 3 in decision_choices(problem)
    params = {**get_family("dt").default_params(), DECIDE_PARAM: 3}
    ev = evaluate(problem, "dt", params)
    pred = ev.trained.predict_quantised(ds.x_train)
    assert (decided(problem, params, pred) != pred).sum() > 20  # the decision matters here
    out = tmp_path / "out"
    ev.problem.target.emit(ev.pipeline, out, "prog")
    (out / "pipeline.json").write_text(json.dumps(compiled_to_json(ev.pipeline)))
    write_model(out, ev, ev.problem.dataset)
    report = simulate_capture(out, table)  # raises unless 100 % agreement with the reference
    assert report.agreement == 1.0 and report.classified > 500


@pytest.mark.parametrize("arch", ["tna", "v1model"])
def test_generated_decision_code_matches_the_twin(arch) -> None:
    table, ds = length_labelled_dataset(1)
    unit = 1024 if arch == "tna" else 1000
    ds = build_traffic_dataset(table, FEATURES, FlowConfig(slots=8, unit_ns=unit),
                               split="flow", test_fraction=0.3, seed=0, source="synthetic")
    tgt, limits = make_target("tofino" if arch == "tna" else "bmv2", {})
    problem = new_problem(ds, tgt, limits, "f1_macro", None, VerdictPlan(), 0)
    ev = evaluate(problem, "dt", {**get_family("dt").minimal_params(), DECIDE_PARAM: 2})
    pipeline = ev.pipeline
    text = emit_p4(pipeline, arch)
    program = pipeline.flow
    flow_block = FlowBlock(text, arch, program)
    flow_block.registers["r_decision"] = [0] * program.config.slots
    apply = text[text.index("apply {", text.index("control MyIngress(")):]
    start = apply.index(f"{pipeline.decider.name}.apply();") + len(pipeline.decider.name) + 9
    decide = apply[start:apply.index("verdict.apply();", start)]
    widths = {**flow_block.widths, "v": 8, "rv": 8}
    code = compile("\n".join(_translate(decide, widths)), "decide", "exec")
    _, eligible, trace = trace_flow_program(program, table, len(FEATURES))
    classes = np.random.default_rng(0).integers(0, 2, len(table))
    count, stored = run_decisions(program, trace, eligible, classes)
    decided_rows = 0
    for i in np.nonzero(eligible)[0]:
        row = table.iloc[i]
        meta = flow_block.run(_headers(row), int(row["ts_us"]) * (1000 if arch == "tna" else 1))
        meta["model_class"] = int(classes[i])

        def execute(name: str, meta=meta) -> int:
            v, rv = flow_block.actions[name](flow_block.registers[name][meta["hmn_flow_slot"]],
                                             meta, {}, 0)
            flow_block.registers[name][meta["hmn_flow_slot"]] = v
            return rv

        exec(code, {"M": meta, "H": {}, "R": flow_block.registers, "EXEC": execute})
        assert (meta["flow_count"], meta["flow_class"]) == (count[i], stored[i]), i
        decided_rows += count[i] > 2
    assert decided_rows > 100
    assert "r_decision" in block(text, text.index("{", text.index("control MyIngress(")))


def test_no_decision_without_flow_state_or_on_c() -> None:
    _, ds = length_labelled_dataset()
    tgt, limits = make_target("c", {})
    assert decision_choices(new_problem(ds, tgt, limits, "f1_macro", None, VerdictPlan(),
                                        0)) == ()
    tgt, limits = make_target("tofino", {})
    tcp = [*FEATURES, FeatureDef("win", "header", 16, "tcp.window")]
    table, _ = length_labelled_dataset()
    ds2 = build_traffic_dataset(table, tcp, FlowConfig(slots=64, unit_ns=1024), split="flow",
                                test_fraction=0.3, seed=0, source="synthetic")
    # a TCP-only feature: packets of a flow without TCP are not classified, so no decision
    assert decision_choices(new_problem(ds2, tgt, limits, "f1_macro", None, VerdictPlan(),
                                        0)) == ()
    positions, _ = packet_positions(table, FlowConfig(slots=64))
    assert positions.max() > 3
