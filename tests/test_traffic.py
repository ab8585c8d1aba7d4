"""Traffic specs end to end: packets -> features -> search -> P4 with registers -> packet-level
simulation agreeing with the model; splits without leakage; spec errors with lines."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from homunculus.cli import app
from homunculus.compile import CompileOptions, compile_plan
from homunculus.data.attacks import scenario_anomaly, synthetic_background
from homunculus.data.traffic import flow_groups, split_rows
from homunculus.errors import SpecError
from homunculus.frontend.yaml_spec import plan_from_yaml

from conftest import write_spec

runner = CliRunner()

TRAFFIC_SPEC = """\
name: anomaly-test
traffic:
  background: {{flows: 60, seconds: 10, seed: 1}}
  labels: {{kind: attacks, scenario: anomaly, seed: 0}}
  features:
    - {{name: ip_len, kind: header, field: ipv4.total_len, width: 16}}
    - {{name: proto, kind: header, field: ipv4.protocol, width: 8}}
    - {{name: pkts, kind: pkt_count, width: 8}}
    - {{name: bytes, kind: byte_count, width: 16}}
    - {{name: iat, kind: iat, width: 16}}
    - {{name: lh, kind: len_hist, bins: 3, bin_shift: 9, width: 8}}
  flow: {{slots: 256}}
  select_features: {select}
model:
  name: m
  algorithms: [dt, gnb]
platform:
  target: {target}
search: {{trials: 4, seed: 0}}
"""


def compile_traffic(tmp_path, target="tofino", select="false"):
    spec = write_spec(tmp_path / "t.yaml", TRAFFIC_SPEC.format(target=target, select=select))
    out = tmp_path / "out"
    result = compile_plan(plan_from_yaml(spec), CompileOptions(out, progress=False))
    return result, out


@pytest.mark.parametrize("target", ["tofino", "bmv2"])
def test_traffic_compile_verifies_the_whole_data_plane(tmp_path, target) -> None:
    result, out = compile_traffic(tmp_path, target)
    report = result.report
    sim = report["packet_simulation"]
    assert sim["agreement"] == 1.0 and sim["classified"] > 0
    assert report["traffic"]["labels"]["syn_flood"] > 0
    p4 = (out / "p4/hmn_anomaly_test.p4").read_text()
    register = "Register<" if target == "tofino" else "register<"
    assert register in p4 and "r_sig" in p4
    stages = report["resources"]["stages"]
    assert any(op.startswith("register") for s in stages for op in s["ops"])
    quantised = json.loads((out / "model/quantised.json").read_text())
    assert quantised["traffic"]["config"]["unit_ns"] == (1024 if target == "tofino" else 1000)


def test_simulate_cli_on_a_new_capture(tmp_path) -> None:
    _, out = compile_traffic(tmp_path)
    pcap, labels = tmp_path / "s.pcap", tmp_path / "s.csv"
    made = runner.invoke(app, ["scenario", "anomaly", "--pcap", str(pcap), "--labels",
                               str(labels), "--flows", "40", "--seconds", "8", "--seed", "9"])
    assert made.exit_code == 0, made.output
    report_file = tmp_path / "sim.json"
    result = runner.invoke(app, ["simulate", str(out), "--pcap", str(pcap), "--labels",
                                 str(labels), "--json", str(report_file)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_file.read_text())
    assert report["agreement"] == 1.0 and report["labelled"] == report["classified"] > 0
    assert 0.0 <= report["f1_macro"] <= 1.0
    assert sum(report["counts"].values()) == report["classified"]


def test_feature_selection_emits_only_chosen_features(tmp_path) -> None:
    result, out = compile_traffic(tmp_path, select="true")
    chosen = [f["name"] for f in result.report["traffic"]["features"]]
    params = result.params
    n_used = sum(bool(v) for k, v in params.items() if k.startswith("use_feature_"))
    assert len(chosen) == n_used >= 1
    p4 = (out / "p4/hmn_anomaly_test.p4").read_text()
    if "pkts" not in chosen and not params.get("flow_decide"):  # a decision counts packets
        assert "r_count" not in p4
    if params.get("flow_decide"):
        assert "meta.flow_count = " in p4
    assert result.report["packet_simulation"]["agreement"] == 1.0


def test_splits_never_share_a_flow_or_a_file() -> None:
    table = scenario_anomaly(synthetic_background(np.random.default_rng(2), 80, 10_000_000), 0)
    rows = np.arange(len(table))
    groups = flow_groups(table)
    for seed in range(5):
        train, test = split_rows(table, rows, "flow", 0.3, seed)
        assert set(groups[train]).isdisjoint(groups[test])
        assert len(train) + len(test) == len(rows)
    files = table["file_id"].to_numpy()
    train, test = split_rows(table, rows, "file", 0.5, 0)
    assert set(files[train]).isdisjoint(files[test])


def test_flow_groups_are_bidirectional() -> None:
    table = synthetic_background(np.random.default_rng(0), 5, 1_000_000)
    groups = flow_groups(table)
    tcp = table[table["has_tcp"]]
    first = tcp.iloc[0]
    reverse = tcp[(tcp["ip_src"] == first["ip_dst"]) & (tcp["src_port"] == first["dst_port"])]
    assert len(reverse) and groups[reverse.index[0]] == groups[tcp.index[0]]


def test_traffic_spec_errors_have_lines(tmp_path) -> None:
    text = TRAFFIC_SPEC.format(target="tofino", select="false").replace(
        "kind: pkt_count", "kind: pkt_counter")
    spec = write_spec(tmp_path / "t.yaml", text)
    with pytest.raises(SpecError) as exc:
        plan_from_yaml(spec)
    assert exc.value.field == "traffic.features[2]" and "unknown feature kind" in str(exc.value)
    assert exc.value.line == next(i for i, line in enumerate(text.splitlines(), 1)
                                  if "pkt_counter" in line)
    both = text.replace("model:", "data: {path: x.csv, label: y, features: "
                                  "[{name: a, width: 8}]}\nmodel:")
    with pytest.raises(SpecError, match="exactly one of 'data'"):
        plan_from_yaml(write_spec(tmp_path / "b.yaml", both))
    slots = TRAFFIC_SPEC.format(target="tofino", select="false").replace("slots: 256",
                                                                          "slots: 100")
    with pytest.raises(SpecError, match="power of two") as exc:
        plan_from_yaml(write_spec(tmp_path / "s.yaml", slots))
    assert exc.value.field == "traffic.flow"
