"""XDP schedules whose models keep flow state: one register program shared by the models, updated
once per packet, verified in the kernel (BPF_PROG_TEST_RUN) on packet sequences; a push keeps
the flow state; a per-flow decision is refused in a schedule."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from homunculus.cli import app
from homunculus.errors import NotSupportedError
from homunculus.frontend.yaml_spec import plan_from_yaml
from homunculus.targets.xdp.cost import COSTS

runner = CliRunner()

TRAFFIC = """\
    traffic:
      background: {flows: 40, seconds: 5, seed: 1}
      labels: {kind: attacks, scenario: anomaly, seed: 0}
      flow: {slots: 256}
      features:
"""

SPEC = """\
name: flows
models:
  - name: ad
    algorithms: [dt]
    verdict: {kind: drop, drop: [syn_flood]}
""" + TRAFFIC + """\
        - {name: ip_len, kind: header, field: ipv4.total_len, width: 16}
        - {name: pkts, kind: pkt_count, width: 8}
  - name: second
    algorithms: [dt]
""" + TRAFFIC + """\
SECOND
schedule: "SCHEDULE"
platform: {target: xdp}
search: {trials: 2, seed: 0}
"""

HEADER_ONLY = """\
        - {name: ttl, kind: header, field: ipv4.ttl, width: 8}
        - {name: ip_len, kind: header, field: ipv4.total_len, width: 16}"""

FLOW = """\
        - {name: pkts, kind: pkt_count, width: 8}
        - {name: bytes, kind: byte_count, width: 16}
        - {name: iat, kind: iat, width: 16}
        - {name: ip_len, kind: header, field: ipv4.total_len, width: 16}"""


def _compiled(tmp_path: Path, schedule: str, second: str) -> tuple[Path, Path, dict]:
    """The two traffic models scheduled by ``schedule`` (``second``: the second model's
    features) compiled for xdp: the spec, OUT and the report."""
    spec = tmp_path / "flows.yaml"
    spec.write_text(SPEC.replace("SECOND", second).replace("SCHEDULE", schedule))
    out = tmp_path / "out"
    result = runner.invoke(app, ["compile", str(spec), "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    return spec, out, json.loads((out / "report.json").read_text())


def test_a_flow_model_gates_a_header_model_on_packets(tmp_path) -> None:
    """``ad > second``: the anomaly model counts packets per flow, the header-only model runs
    where it passes; every packet of both captures agrees 100% in the kernel."""
    _, out, report = _compiled(tmp_path, "ad > second", HEADER_ONLY)
    packets = report["verification"]["packets"]
    assert packets["agreement"] == 1.0 and packets["classified"] > 1000
    assert 0 < report["models"][1]["metrics"]["ran"] < 1  # the gate acts
    flow = report["flow_state"]
    assert flow["registers"] == flow["registers_separate"] == 2  # ad's signature and counter
    assert flow["per_model"] == {"ad": 2} and flow["shared_registers"] == {}
    source = next((out / "xdp").glob("*.bpf.c")).read_text()
    assert source.count("int hmn_flow(struct hmn_sched_t *env") == 1
    assert source.count("hmn_flow(sc, &key") == 1  # one update per packet, before the models
    assert all("flow_decide" not in t["params"] for m in report["models"] for t in m["trials"])


def flows(maps, slots: int) -> np.ndarray:
    """The shared flow state (``hmn_flows``): per slot, every register."""
    m = maps.map("hmn_flows")
    return np.array([np.frombuffer(bytes(m.lookup(s)), dtype="<u4") for s in range(slots)])


def test_two_flow_models_share_registers_and_a_push_keeps_the_flow_state(tmp_path) -> None:
    """``ad | second``: both count packets per flow (one register, one feature); the merged
    program verifies on packets; a push flips both models at once and leaves the registers as
    they were, so the flows go on counting."""
    from homunculus.schedule import xdp
    from homunculus.targets.xdp.snapshot import read_snapshot

    spec, out, report = _compiled(tmp_path, "ad | second", FLOW)
    assert report["verification"]["packets"]["agreement"] == 1.0
    flow = report["flow_state"]
    assert flow["shared_registers"] == {"r_sig": ["ad", "second"],
                                        "r_count_w8": ["ad", "second"]}
    assert flow["shared_flow_features"] == {"pkts": ["ad", "second"]}
    assert (flow["registers"], flow["registers_separate"]) == (4, 6)
    assert flow["bytes_saved"] == 2 * 4 * 256
    assert "Shared flow state" in (out / "report.html").read_text()
    # the estimate counts one flow update per packet and the shared registers once
    separate = [next(v["usage"] for v in m["variants"] if v["chosen"]) for m in report["models"]]
    fused = report["resources"]["totals"]
    assert sum(u["latency_ns"] for u in separate) - fused["latency_ns"] == pytest.approx(
        COSTS["flow"] + 2 * COSTS["registers"])  # ad's update: its signature and counter
    assert fused["sram_kbit"] < sum(u["sram_kbit"] for u in separate)
    source = next((out / "xdp").glob("*.bpf.c")).read_text()
    assert "__u32 r[4];" in source and "hmn_r0" not in source  # one entry per flow, 1 map
    # a push between two halves of a capture: the registers are untouched, the flows go on
    plan = plan_from_yaml(spec)
    table = plan.models[0].load_data().traffic.table
    first = table[table["file_id"] == table["file_id"].iloc[0]].reset_index(drop=True)
    half = len(first) // 2
    head, tail = first.iloc[:half], first.iloc[half:]
    obj, doc = xdp.load_built(out)
    n_inputs = _inputs(source)
    with obj:
        whole = xdp.run_packets(obj, 2, n_inputs, first)
    old = [read_snapshot(m["snapshot"]) for m in doc["models"]]
    sizes = [len(m["labels"]) for m in doc["models"]]
    new = [_class_swapped(p, n) for (p, _), n in zip(old, sizes, strict=True)]
    obj, _ = xdp.load_built(out)
    with obj:
        xdp.run_packets(obj, 2, n_inputs, head)
        before = flows(obj, 256)
        assert before.shape == (256, 4) and before.any(axis=0).all()
        assert xdp.push(obj, new, [c for _, c in old], grace_s=0) == 1
        assert (flows(obj, 256) == before).all()  # the flow state survives the push
        classified, classes, _ = xdp.run_packets(obj, 2, n_inputs, tail)
    assert classified.all() and whole[0].all()
    assert (classes == np.array(sizes) - 1 - whole[1][half:]).all()  # both swapped, together


def _inputs(source: str) -> int:
    """HMN_NU of a schedule's generated source (its union of features)."""
    return int(source.split("#define HMN_NU ")[1].split()[0])


def _class_swapped(program, classes: int):
    """``program`` with its classes' order reversed (its winners' verdict rows' class column)."""
    verdict = tuple((classes - 1 - row[0], *row[1:]) for row in program.verdict)
    return dataclasses.replace(program, verdict=verdict)


def test_a_per_flow_decision_is_refused_in_an_xdp_schedule() -> None:
    """A model deciding once per flow cannot run in a schedule (its models classify every
    packet): refused with the model's name, before anything is built."""
    from test_xdp_backend import flow_program

    from homunculus.ir.flow import FlowDecision
    from homunculus.schedule import xdp
    from homunculus.schedule.cpu import CpuSchedule

    program = flow_program(slots=8)
    assert program.flow is not None
    count = next(r.name for r in program.flow.registers if r.op == "count")
    decided = dataclasses.replace(program, flow=dataclasses.replace(
        program.flow, decision=FlowDecision(3, count)))
    schedule = CpuSchedule((), (("ad", program), ("second", decided)), ("m0", "m1"), {}, {},
                           {}, {}, [], (2, 2))
    with pytest.raises(NotSupportedError, match="model 'second' decides once per flow"):
        xdp.check_schedule(schedule)


def test_a_schedule_search_offers_no_per_flow_decision(tmp_path) -> None:
    """The design space of a schedule's model has no per-flow decision (the program built from
    a trial classifies every packet)."""
    from homunculus.compile import make_target_and_limits
    from homunculus.schedule.search import make_model_problem
    from homunculus.search.problem import decision_choices

    spec = tmp_path / "flows.yaml"
    spec.write_text(SPEC.replace("SECOND", FLOW).replace("SCHEDULE", "ad | second"))
    mp = plan_from_yaml(spec).models[0]
    target, limits = make_target_and_limits(mp)
    problem = make_model_problem(mp, mp.load_data(), target, limits, 0)
    assert decision_choices(problem) == ()
    assert decision_choices(dataclasses.replace(problem, flow_decisions=True)) != ()


def test_flow_models_of_different_geometry_are_refused_before_searching(tmp_path) -> None:
    """Two models keeping flow state in different register geometries cannot share them: the
    spec is refused (file, field, both models), before any search."""
    spec = tmp_path / "flows.yaml"
    text = SPEC.replace("SECOND", FLOW).replace("SCHEDULE", "ad | second")
    at = text.rindex("flow: {slots: 256}")
    spec.write_text(text[:at] + "flow: {slots: 512}" + text[at + len("flow: {slots: 256}"):])
    out = tmp_path / "out"
    result = runner.invoke(app, ["compile", str(spec), "-o", str(out), "--no-progress"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"{spec}:2, field 'models'" in result.output.replace("\n", "")
    assert "'ad': 256 slots" in text and "'second': 512 slots" in text
    assert not out.exists() or not any(out.iterdir())


HISTOGRAMS = FLOW + """
        - {name: lb, kind: len_hist, bins: 23, bin_shift: 6, width: 8}
        - {name: ib, kind: iat_hist, bins: 7, bin_shift: 17, width: 8}
        - {name: age, kind: flow_age, width: 16}
        - {name: mn, kind: min_len, width: 16}
        - {name: ew, kind: ewma_len, param: 3, width: 16}"""


def test_every_flow_kind_in_one_flow_entry(tmp_path) -> None:
    """Every kind of flow feature (histograms: a register per bin) in one entry per flow: 37
    registers, where one map per register would take 37 of the program's 64 maps; every
    packet agrees 100% in the kernel."""
    _, out, report = _compiled(tmp_path, "ad | second", HISTOGRAMS)
    assert report["verification"]["packets"]["agreement"] == 1.0
    flow = report["flow_state"]
    assert (flow["registers"], flow["registers_separate"]) == (37, 39)
    source = next((out / "xdp").glob("*.bpf.c")).read_text()
    assert "__u32 r[37];" in source and source.count("bpf_map_lookup_elem(&hmn_flows") == 1


def test_the_example_schedule_compiles(tmp_path) -> None:
    """examples/xdp/schedule_flows.yaml with a tiny budget: packets agree 100%, registers and
    flow features shared."""
    spec = Path(__file__).parent.parent / "examples" / "xdp" / "schedule_flows.yaml"
    out = tmp_path / "out"
    result = runner.invoke(app, ["compile", str(spec), "-o", str(out), "--trials", "2",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["packets"]["agreement"] == 1.0
    flow = report["flow_state"]
    assert set(flow["shared_registers"]) == {"r_sig", "r_last", "r_count_w8"}
    assert set(flow["shared_flow_features"]) == {"pkts", "iat"}
