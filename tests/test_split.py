"""One model split over a chain of switches: partition, carry header, chained twins, frontends."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from typer.testing import CliRunner

from homunculus.alchemy import DataLoader, Feature, Model, Platforms, generate
from homunculus.cli import app
from homunculus.data.attacks import scenario_anomaly, synthetic_background
from homunculus.data.dataset import FeatureDecl, make_dataset
from homunculus.data.traffic import build_traffic_dataset
from homunculus.errors import SpecError
from homunculus.features.library import FeatureDef, FlowConfig
from homunculus.features.reference import reference_features
from homunculus.frontend.yaml_spec import plan_from_yaml
from homunculus.ir.flow import lower_flow_features
from homunculus.ir.pipeline import VerdictKind, VerdictPlan
from homunculus.models.base import get_family
from homunculus.passes.lower import TreeCodes, lower
from homunculus.schedule.host import host_program, partial_scores
from homunculus.schedule.split import (
    ChainTarget,
    Device,
    compact_codes,
    partition,
    run_split,
    run_split_packets,
    run_switches,
)
from homunculus.targets.base import Limits
from homunculus.targets.c.target import CTarget
from homunculus.targets.c.twin import CLibrary
from homunculus.targets.p4 import emit_p4, runtime_entries
from homunculus.targets.p4.check import check_program
from homunculus.targets.p4.codegen import carry_layout
from homunculus.targets.p4.profiles import BMV2, TOFINO
from homunculus.targets.p4.rules import check_rules
from homunculus.targets.p4.target import SwitchTarget
from homunculus.targets.p4.twin import simulate

runner = CliRunner()
VERDICT = VerdictPlan(VerdictKind.DSCP, dscp={1: 10, 2: 46})


def dataset(n: int = 1500, seed: int = 0):
    rng = np.random.default_rng(seed)
    feats = [FeatureDecl("ttl", 8, "ipv4.ttl"), FeatureDecl("len", 16, "ipv4.total_len"),
             FeatureDecl("proto", 8, "ipv4.protocol"), FeatureDecl("x", 5)]
    x = np.stack([rng.integers(0, 256, n), rng.integers(0, 1 << 16, n),
                  rng.integers(0, 256, n), rng.integers(0, 32, n)], axis=1)
    y = (x[:, 0] // 40 + x[:, 3] + (x[:, 1] > 30000)) % 4
    labels = [f"c{v}" for v in y]
    cut = 2 * n // 3
    return make_dataset(feats, x[:cut], labels[:cut], x[cut:], labels[cut:], "t")


def trained(family: str, params: dict | None = None, ds=None,
            codes: TreeCodes = TreeCodes.SHARED):
    ds = ds or dataset()
    fam = get_family(family)
    model = fam.train(params or fam.default_params(), ds.x_train, ds.y_train, ds.n_classes,
                      ds.widths, 0)
    return ds, model, lower(model.quantised, ds.features, ds.class_labels, VERDICT,
                            model.winner_to_class, tree_codes=codes)


def chain(n: int, stages: int, profile=TOFINO) -> list[Device]:
    limits = profile.default_limits().merged({"stages": stages} if stages else {})
    return [Device(f"sw{i}", SwitchTarget(profile), limits) for i in range(n)]


FOREST = {"rf_n_estimators": 16, "rf_max_depth": 7, "rf_min_samples_leaf": 1,
          "rf_max_features": 0.7, "rf_leaf_bits": 4}


def check_devices(split, archs=("tna", "v1model")) -> None:
    """Every device's program: both architectures, the Tofino rules, entries that fit; and
    each link's carry header laid out the same on both sides."""
    for prog in split.programs:
        for arch in archs:
            text = emit_p4(prog, arch, program_name="dev")
            check_rules(text, arch)
            check_program(text, runtime_entries(prog, program_name="dev", arch=arch),
                          flow=prog.flow)
    for a, b in zip(split.programs, split.programs[1:], strict=False):
        out, into = carry_layout(a.carry_out), carry_layout(b.carry_in)
        assert [f["width"] for f in out["fields"]] == [f["width"] for f in into["fields"]]
        assert out["bytes"] == into["bytes"]


@pytest.mark.parametrize(("family", "params", "stages", "devices"), [
    ("rf", FOREST, 12, 3), ("xgb", None, 12, 3), ("gnb", None, 5, 2), ("svm", None, 5, 2)])
def test_a_model_split_over_a_chain_agrees_with_the_model(family, params, stages,
                                                          devices) -> None:
    ds, model, pipeline = trained(family, params)
    whole = SwitchTarget(TOFINO).estimate(SwitchTarget(TOFINO).prepare(pipeline))
    assert whole.stages > stages  # too large for one device
    split = partition(pipeline, chain(devices, stages))
    assert split.feasible and 2 <= split.devices <= devices
    assert all(u.stages <= stages for u in split.usages)
    check_devices(split)
    result = run_split(split, ds.x_test, lambda p, d, x, c: simulate(p, x, carried=c))
    assert (result.class_index == model.predict_quantised(ds.x_test)).all()
    first, last = split.programs[0], split.programs[-1]
    assert first.carry_out and not first.carry_in and last.carry_in and not last.carry_out
    text = emit_p4(first, "tna", program_name="d")
    assert "hmn_carry_out();" in text and "16w0x88B5" in text
    text = emit_p4(last, "tna", program_name="d")
    assert "state parse_hmn_cin" in text and "hmn_carry_strip();" in text
    assert "hdr.hmn_cin.isValid()" in text


def test_a_forest_with_a_code_per_tree_splits_and_agrees() -> None:
    """Trees with their own codes (several trees a stage): a device holding some of them gets
    one code per feature again, over the thresholds its trees test, merged where two trees
    test the same threshold."""
    ds, model, pipeline = trained("rf", FOREST, codes=TreeCodes.PER_TREE)
    assert any("__t1" in o.name for e in pipeline.encoders for o in e.outputs)
    whole = SwitchTarget(TOFINO).estimate(SwitchTarget(TOFINO).prepare(pipeline))
    assert whole.stages > 7
    split = partition(pipeline, chain(4, 7))
    assert split.feasible and split.devices >= 2
    check_devices(split)
    result = run_split(split, ds.x_test, lambda p, d, x, c: simulate(p, x, carried=c))
    assert (result.class_index == model.predict_quantised(ds.x_test)).all()


@pytest.mark.parametrize(("family", "params", "stages"), [
    ("rf", FOREST, 12), ("xgb", None, 12), ("gnb", None, 5)])
def test_a_c_host_ends_a_chain_from_the_carried_scores(tmp_path, family, params,
                                                       stages) -> None:
    """One switch, then a C host: the switch's twin carries partial scores, the host's gcc-built
    library (hmn_classify_carried) finishes; the chain equals the quantised model."""
    ds, model, pipeline = trained(family, params)
    split = partition(pipeline, [*chain(1, stages), Device("host", CTarget(), Limits())])
    assert split.feasible and split.devices == 2 and len(split.programs) == 1
    assert split.host_tables and split.host_carry_in
    assert set(split.tables[0]).isdisjoint(split.host_tables)
    check_devices(split)
    switch, carried = run_switches(split, ds.x_test,
                                   lambda p, d, x, c: simulate(p, x, carried=c))
    assert switch.class_index.max() == 0  # the switch only forwards
    program = host_program(split, pipeline, model.quantised, ds.features, VERDICT,
                           model.winner_to_class)
    partial = partial_scores(carried, program, len(ds.x_test))
    assert (partial[:, list(program.carry_in)] > 0).any()
    paths = CTarget().emit(program, tmp_path, "host")
    header = paths["c_header"].read_text()
    assert "hmn_classify_carried" in header and "0x88B5" in header
    got = CLibrary(paths["c_library"]).classify_carried(ds.x_test, partial)
    expected = model.predict_quantised(ds.x_test)
    assert (got.class_index == expected).all()
    assert (got.fields["verdict_dscp"] == program.results(ds.x_test, partial)["verdict_dscp"]
            ).all()
    alone = CLibrary(paths["c_library"]).classify_verdict(ds.x_test)  # no carried scores
    assert (alone.class_index != expected).any()


def test_a_chain_too_short_is_infeasible_and_says_how_many_devices_it_needs() -> None:
    _, _, pipeline = trained("rf", FOREST)
    split = partition(pipeline, chain(1, 12), spare=4)
    assert not split.feasible and split.needed >= 2
    target = ChainTarget(tuple(chain(1, 12)))
    assert target.estimate(pipeline).stages > target.limits().stages


def test_a_bmv2_chain_too_short_exceeds_the_chains_stages() -> None:
    """BMv2 has no stage budget: the chain's stages still bound it, so the search sees a model
    that needs more devices than the chain has as infeasible."""
    _, _, pipeline = trained("rf", FOREST)
    alone = partition(pipeline, [Device("bm", SwitchTarget(BMV2), BMV2.default_limits())])
    limits = BMV2.default_limits().merged({"entries": int(alone.usages[0].entries * 0.3)})
    target = ChainTarget(tuple(Device(f"bm{i}", SwitchTarget(BMV2), limits) for i in range(2)))
    assert not target.split(pipeline).feasible
    assert target.estimate(pipeline).stages > target.limits().stages
    assert "device" in target.why_not() and "entries" in target.why_not()


def test_boosted_trees_carry_only_the_columns_summed_so_far() -> None:
    _, _, pipeline = trained("xgb")
    split = partition(pipeline, chain(3, 12))
    assert split.order in ("lowered", "by column")
    again = {o: partition(pipeline, chain(3, 12)) for o in ("x",)}["x"]
    assert again.header_bytes == split.header_bytes
    for prog in split.programs[:-1]:
        assert len(prog.carry_out) <= 4


def test_code_compaction_keeps_a_trees_decisions() -> None:
    ds, model, pipeline = trained("rf", FOREST)
    tree = pipeline.lookups[3]
    encoders, (narrow,) = compact_codes(list(pipeline.encoders), [tree])
    assert narrow.key_width < tree.key_width
    assert sum(len(e.entries) for e in encoders) < sum(len(e.entries)
                                                      for e in pipeline.encoders)
    from dataclasses import replace

    from homunculus.targets.p4.twin import run_table

    def outputs(encs, table):
        env = {f.field.name: ds.x_test[:, j] for j, f in enumerate(pipeline.features)}
        for e in encs:
            run_table(e, env, len(ds.x_test))
        run_table(replace(table, role=table.role), env, len(ds.x_test))
        return [env[o.name] for o in table.outputs]

    for a, b in zip(outputs(pipeline.encoders, tree), outputs(encoders, narrow), strict=True):
        assert (a == b).all()


def test_bmv2_chain_splits_on_entries() -> None:
    ds, model, pipeline = trained("rf", FOREST)
    alone = partition(pipeline, [Device("bm", SwitchTarget(BMV2), BMV2.default_limits())])
    assert alone.devices == 1
    cap = int(alone.usages[0].entries * 0.6)
    limits = BMV2.default_limits().merged({"entries": cap})
    devices = [Device(f"bm{i}", SwitchTarget(BMV2), limits) for i in range(4)]
    split = partition(pipeline, devices)
    assert split.feasible and split.devices >= 2
    assert all(u.entries <= cap for u in split.usages)
    result = run_split(split, ds.x_test, lambda p, d, x, c: simulate(p, x, carried=c))
    assert (result.class_index == model.predict_quantised(ds.x_test)).all()


def test_flow_features_split_and_agree_on_packets() -> None:
    rng = np.random.default_rng(0)
    table = scenario_anomaly(synthetic_background(rng, 60, 20_000_000), 0)
    defs = [FeatureDef("len", "header", 16, field="ipv4.total_len"),
            FeatureDef("ttl", "header", 8, field="ipv4.ttl"),
            FeatureDef("pkts", "pkt_count", 8), FeatureDef("bytes", "byte_count", 16),
            FeatureDef("iat", "iat", 16), FeatureDef("max", "max_len", 16)]
    config = FlowConfig(1024, 0, 1024)
    ds = build_traffic_dataset(table, defs, config, split="flow", test_fraction=0.3, seed=0,
                               source="synthetic")
    fam = get_family("rf")
    model = fam.train(FOREST, ds.x_train, ds.y_train, ds.n_classes, ds.widths, 0)
    pipeline = lower(model.quantised, ds.features, ds.class_labels, VERDICT,
                     model.winner_to_class)
    from dataclasses import replace

    pipeline = replace(pipeline, flow=lower_flow_features(defs, config))
    # the flow block alone takes about seven stages: devices of 16 (a Tofino 2 has 20)
    split = partition(pipeline, chain(3, 16, TOFINO.with_overrides({"stages": 16})))
    assert split.feasible and split.devices >= 2
    check_devices(split, ("tna",))
    registers = [{r.name for r in p.flow.registers} for p in split.programs if p.flow]
    assert registers and all("r_sig" in r for r in registers)
    result, classified = run_split_packets(split, table)
    values, _ = reference_features(table, defs, config)
    assert (result.class_index == model.predict_quantised(values[classified])).all()
    assert classified.sum() > 100


# ----------------------------------------------------------------------------- frontends


CHAIN_SPEC = """\
name: split-test
data:
  path: {data}
  label: device
  features:
    - {{name: ip_len, width: 16, field: ipv4.total_len}}
    - {{name: ttl, width: 8, field: ipv4.ttl}}
    - {{name: proto, width: 8, field: ipv4.protocol}}
model:
  name: m
  algorithms: [gnb]
platforms:
  - {{name: sw1, target: tofino, constraints: {{resources: {{stages: 4}}}}}}
  - {{name: sw2, target: tofino, constraints: {{resources: {{stages: 4}}}}}}
{chain}search: {{trials: 3, seed: 0, cv_folds: 2}}
"""


def test_a_yaml_chain_compiles(tmp_path, example_csv) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(CHAIN_SPEC.format(data=example_csv, chain="chain: [sw2, sw1]\n"))
    out = tmp_path / "out"
    result = runner.invoke(app, ["compile", str(spec), "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "chain" and report["chain"] == ["sw2", "sw1"]
    assert report["metrics"]["agreement"] == 1.0 and report["devices_used"] == 2
    assert report["header_bytes"] > 0 and "split over 2 of 2" in result.output
    doc = json.loads((out / "chain.json").read_text())
    assert len(doc["devices"]) == report["devices_used"] >= 1
    for d in doc["devices"]:
        assert (out / d["directory"] / "runtime" / "entries.json").is_file()
        text = next((out / d["directory"] / "p4").glob("*.p4")).read_text()
        check_rules(text, "tna")
    assert (out / "model" / "quantised.json").is_file() and (out / "report.html").is_file()


@pytest.mark.parametrize("host", ["c", "xdp"])
def test_a_yaml_chain_ending_on_a_host_compiles(tmp_path, example_csv, host) -> None:
    text = CHAIN_SPEC.format(data=example_csv, chain="")
    lines = text.splitlines(keepends=True)
    spec = tmp_path / "s.yaml"
    spec.write_text("".join(f"  - {{name: sw2, target: {host}}}\n" if "name: sw2" in line
                            else line for line in lines))
    out = tmp_path / "out"
    result = runner.invoke(app, ["compile", str(spec), "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["agreement"] == 1.0 and report["devices_used"] == 2
    device = report["devices"][-1]
    assert device["target"] == host and device["carry_in"]["bytes"] == report["carry_bytes"][-1]
    assert f"({host} host)" in result.output
    built = out / device["directory"]
    if host == "c":
        assert device["carry_in"]["entry_point"] == "hmn_classify_carried"
        assert "hmn_classify_carried" in next((built / "c").glob("*.h")).read_text()
        assert next((built / "c").glob("libhmn_*.so")).is_file()
    else:
        assert "bpf_xdp_adjust_head" in next((built / "xdp").glob("*.bpf.c")).read_text()
        assert (built / "xdp" / "snapshot.json").is_file()
    assert device["usage"]["latency_ns"] > 0
    bad = "".join(line.replace(f"target: {host}}}", f"target: {host}, constraints: "
                               "{performance: {latency_ns: 2}}}") for line in
                  spec.read_text().splitlines(keepends=True))
    spec.write_text(bad)
    result = runner.invoke(app, ["compile", str(spec), "-o", str(tmp_path / "o2"),
                                 "--no-progress"])
    assert result.exit_code == 2, result.output
    assert f"device 2 (sw2, {host} host)" in result.output
    assert "latency_ns" in result.output and "limit 2 ns" in result.output
    assert not (tmp_path / "o2").exists()
    roomy = bad.replace("latency_ns: 2}", "latency_ns: 100000}")
    spec.write_text(roomy)
    result = runner.invoke(app, ["compile", str(spec), "-o", str(tmp_path / "o3"),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o3" / "report.json").read_text())
    if report["devices_used"] == 2:  # the host's usage against its limit
        checked = report["devices"][-1]["within_limits"]["latency_ns"]
        assert checked["ok"] and checked["limit"] == 100000 and "of 100000" in result.output


def test_a_chain_refuses_the_users_directory(tmp_path, example_csv, monkeypatch) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(CHAIN_SPEC.format(data=example_csv, chain=""))
    (tmp_path / "notes.txt").write_text("mine\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["compile", "s.yaml", "-o", ".", "--no-progress"])
    assert result.exit_code == 2 and "error:" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_python_chain_compiles(tmp_path) -> None:
    ds = dataset(600)

    @DataLoader(features=[Feature("ttl", 8, field="ipv4.ttl"),
                          Feature("len", 16, field="ipv4.total_len"),
                          Feature("proto", 8, field="ipv4.protocol"), Feature("x", 5)])
    def load():
        labels = [ds.class_labels[i] for i in ds.y_train], [ds.class_labels[i]
                                                              for i in ds.y_test]
        return ds.x_train, labels[0], ds.x_test, labels[1]

    model = Model("m", data=load, algorithms=["gnb"])
    a, b = Platforms.BMv2(), Platforms.BMv2()
    a.constrain(resources={"entries": 150})
    b.constrain(resources={"entries": 150})
    chained = Platforms.chain(a, b).schedule(model)
    result = generate(chained, tmp_path / "out", trials=2, progress=False)
    assert result.report["kind"] == "chain" and result.metrics["agreement"] == 1.0
    assert result.report["devices_used"] == 2
    with pytest.raises(SpecError, match="not a platform") as exc:
        Platforms.chain(a, "tofino")
    assert exc.value.field == "chain[1]" and exc.value.line is not None
    with pytest.raises(SpecError, match="can only end a chain"):
        Platforms.chain(Platforms.C(), a)
    assert Platforms.chain(a, Platforms.C()).platforms[-1].target == "c"  # a host ends it


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(("chain_line", "field", "message"), [
    ("chain: [sw1, sw9]\n", "chain[1]", "'sw9' is not a platform"),
    ("chain: [sw1, sw1]\n", "chain[1]", "twice in the chain"),
])
def test_a_chain_with_an_unknown_platform_is_rejected(tmp_path, example_csv, chain_line,
                                                      field, message) -> None:
    text = CHAIN_SPEC.format(data=example_csv, chain=chain_line)
    spec = tmp_path / "s.yaml"
    spec.write_text(text)
    with pytest.raises(SpecError) as exc:
        plan_from_yaml(spec)
    assert exc.value.field == field and message in str(exc.value)
    assert exc.value.line == line_of(text, "chain:") and exc.value.file == str(spec)
    result = runner.invoke(app, ["compile", str(spec), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and not (tmp_path / "o").exists()


def test_a_host_inside_a_chain_and_an_unknown_target_are_rejected(tmp_path,
                                                                  example_csv) -> None:
    text = CHAIN_SPEC.format(data=example_csv, chain="").replace(
        "{name: sw1, target: tofino", "{name: sw1, target: c")
    spec = tmp_path / "s.yaml"
    spec.write_text(text)
    with pytest.raises(SpecError, match="can only end a chain") as exc:
        plan_from_yaml(spec)
    assert exc.value.field == "platforms[0].target"
    text = CHAIN_SPEC.format(data=example_csv, chain="").replace("target: tofino}}}}",
                                                                 "target: tofinoo}}}}", 1)
    text = text.replace("{name: sw2, target: tofino", "{name: sw2, target: tofinoo")
    spec.write_text(text)
    with pytest.raises(SpecError) as exc:
        plan_from_yaml(spec)
    assert exc.value.field == "platforms[1].target"
    assert exc.value.line == line_of(text, "tofinoo")



def header_dataset(n: int = 900, seed: int = 1):
    """Features in IPv4 header fields only (a frame carries them all)."""
    rng = np.random.default_rng(seed)
    feats = [FeatureDecl("ttl", 8, "ipv4.ttl"), FeatureDecl("len", 16, "ipv4.total_len"),
             FeatureDecl("proto", 8, "ipv4.protocol")]
    x = np.stack([rng.integers(0, 256, n), rng.integers(20, 1 << 16, n),
                  rng.integers(0, 256, n)], axis=1)
    y = (x[:, 0] // 64 + (x[:, 1] > 30000) + x[:, 2] % 2) % 4
    labels = [f"c{v}" for v in y]
    cut = 2 * n // 3
    return make_dataset(feats, x[:cut], labels[:cut], x[cut:], labels[cut:], "h")


def ipv4_frame(row: np.ndarray, carry: bytes) -> bytes:
    """Ethernet, the carry header (its last two bytes: IPv4's EtherType; none if empty), an
    IPv4 header holding the row's ttl, total length and protocol."""
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, int(row[1]), 7, 0, int(row[0]), int(row[2]), 0,
                     0x0A000001, 0x0A000002)
    macs = b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01"
    return macs + (b"\x88\xb5" + carry if carry else b"\x08\x00") + ip


@pytest.mark.parametrize(("family", "params", "stages"), [
    ("rf", FOREST, 12), ("xgb", None, 12), ("gnb", None, 5)])
def test_an_xdp_host_ends_a_chain_in_the_kernel(tmp_path, family, params, stages) -> None:
    """One switch, then an XDP host (clang, BPF_PROG_TEST_RUN): on vectors carrying the partial
    scores and on frames carrying the carry header, which it parses and strips."""
    from homunculus.schedule.host import carry_header
    from homunculus.targets.xdp.runner import load_built, run_classified, run_vectors
    from homunculus.targets.xdp.target import XdpTarget

    ds, model, pipeline = trained(family, params, header_dataset())
    split = partition(pipeline, [*chain(1, stages), Device("host", XdpTarget(), Limits())])
    assert split.feasible and split.devices == 2 and split.host_tables
    _, carried = run_switches(split, ds.x_test, lambda p, d, x, c: simulate(p, x, carried=c))
    program = host_program(split, pipeline, model.quantised, ds.features, VERDICT,
                           model.winner_to_class)
    partial = partial_scores(carried, program, len(ds.x_test))
    expected = model.predict_quantised(ds.x_test)
    XdpTarget().emit(program, tmp_path, "host")
    assert "bpf_xdp_adjust_head" in next((tmp_path / "xdp").glob("*.bpf.c")).read_text()
    frames = [ipv4_frame(row, carry_header(p, program, 0x0800))
              for row, p in zip(ds.x_test, partial, strict=True)]
    plain = [ipv4_frame(row, b"") for row in ds.x_test[:5]]  # no carry header
    obj, _ = load_built(tmp_path)
    with obj:
        vectors, _ = run_vectors(obj, program, ds.x_test, partial)
        env, classified, runs = run_classified(obj, program, frames + plain)
    assert (vectors.class_index == expected).all()
    n = len(frames)
    assert classified[:n].all() and not classified[n:].any()  # only frames with the header
    assert (env[:n, 0] == expected).all()
    assert (env[:n, 4] == vectors.fields["verdict_dscp"]).all()
    for frame, run in zip(frames, runs[:n], strict=True):
        out = bytes(run.data)
        assert len(out) == len(frame) - len(carry_header(partial[0], program, 0x0800))
        assert out[:14] == frame[:12] + b"\x08\x00"  # the header left, IPv4's EtherType back


def host_chain_spec(stages: int, host: str = "xdp", host_extra: str = "") -> str:
    """The traffic spec of test_traffic over one Tofino limited to ``stages`` and a host."""
    from test_traffic import TRAFFIC_SPEC

    text = TRAFFIC_SPEC.format(target="tofino", select="false").replace(
        "algorithms: [dt, gnb]", "algorithms: [gnb]").replace(
        "platform:\n  target: tofino\n",
        f"platforms:\n  - {{name: sw, target: tofino, constraints: {{resources: {{stages: "
        f"{stages}}}}}}}\n  - {{name: srv, target: {host}{host_extra}}}\n")
    assert "platforms:" in text and "[gnb]" in text
    return text


@pytest.mark.parametrize("host", ["xdp", "c"])
def test_a_traffic_spec_over_a_switch_then_a_host_is_verified_on_every_packet(tmp_path,
                                                                             host) -> None:
    """Tofino (the flow registers, the flow features' tables), then the host's real program
    (XDP in the kernel, fed each packet's frame with the carry header; C on the header fields)
    from the carried partial scores: every packet of the capture agrees with the model."""
    spec = tmp_path / "t.yaml"
    spec.write_text(host_chain_spec(12, host))
    out = tmp_path / "o"
    result = runner.invoke(app, ["compile", str(spec), "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    sim = report["packet_simulation"]
    assert sim["host"] == "srv" and sim["agreement"] == 1.0
    assert sim["classified"] == sim["packets"] > 1000
    assert report["devices_used"] == 2 and report["metrics"]["agreement"] == 1.0
    assert report["table_order"].endswith("the host's tables last")
    switch, server = report["devices"]
    flows = {f["name"] for f in report["traffic"]["features"] if f["kind"] != "header"}
    assert server["tables"] and not any(t[4:] in flows for t in server["tables"])
    assert any(t[4:] in flows for t in switch["tables"])
    assert switch["within_limits"]["stages"] == {"used": switch["usage"]["stages"],
                                                 "limit": 12, "ok": True}
    assert (out / server["directory"] / host).is_dir()


@pytest.mark.parametrize("stages", [11, 9])
def test_a_traffic_spec_over_two_switches_then_a_host(tmp_path, stages) -> None:
    """Two Tofinos (each with the flow registers its tables read), then an XDP host: every
    packet through both twins and the host's program. With 9 stages the second switch takes
    no table: the chain never skips a device, and the error names it."""
    from conftest import ROOT

    text = (ROOT / "examples" / "split" / "host_traffic.yaml").read_text().replace(
        "  - {name: tor, target: tofino, constraints: {resources: {stages: 12}}}\n",
        "".join(f"  - {{name: tor{i}, target: tofino, constraints: {{resources: {{stages: "
                f"{stages}}}}}}}\n" for i in (1, 2))).replace("trials: 8", "trials: 2")
    assert "tor2" in text
    spec = tmp_path / "t.yaml"
    spec.write_text(text)
    out = tmp_path / "o"
    result = runner.invoke(app, ["compile", str(spec), "-o", str(out), "--no-progress"])
    if stages == 9:
        assert result.exit_code == 2 and "device 2 (tor2): stages" in result.output
        assert not out.exists()
        return
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["devices_used"] == 3 and len(report["carry_bytes"]) == 2
    assert report["packet_simulation"]["agreement"] == 1.0
    assert report["packet_simulation"]["classified"] > 1000
    assert "then srv's built program, agree 100%" in result.output


def test_a_traffic_spec_whose_host_would_read_a_flow_feature_is_refused(tmp_path) -> None:
    """With 11 stages the switch cannot take every table reading a flow feature: the host
    would need one, which the carry header does not bring; the error names them."""
    spec = tmp_path / "t.yaml"
    spec.write_text(host_chain_spec(11))
    result = runner.invoke(app, ["compile", str(spec), "-o", str(tmp_path / "o"),
                                 "--no-progress"])
    assert result.exit_code == 2
    assert "srv, xdp host" in result.output and "flow feature(s)" in result.output
    assert "'lh0'" in result.output
    assert not (tmp_path / "o").exists()


def test_an_xdp_hosts_latency_limit_forces_a_different_split(tmp_path) -> None:
    """Boosted trees over one Tofino and an XDP host. Unconstrained, the switch keeps the run
    carrying the fewest header bytes (one class column) and the host takes the rest; a limit
    of 70 % of that host's estimate gives the switch more tables (more columns carried); at
    25 % nothing fits, naming the host and its limit. The constrained split's host, built,
    agrees in the kernel. (Limits relative to the estimate: the cost model is recalibrated.)"""
    from homunculus.schedule.host import HostSource
    from homunculus.targets.xdp.runner import load_built, run_vectors
    from homunculus.targets.xdp.target import XdpTarget

    ds, model, pipeline = trained("xgb", None, header_dataset())
    source = HostSource(model.quantised, ds.features, VERDICT, model.winner_to_class)

    def split_with(limits):
        return partition(pipeline, [*chain(1, 12), Device("srv", XdpTarget(), limits)],
                         source=source)

    free = split_with(Limits())
    assert free.feasible and free.host_usage is not None
    bound, low = round(free.host_usage.latency_ns * 0.7), round(free.host_usage.latency_ns / 4)
    limited, tight = split_with(Limits(latency_ns=bound)), split_with(Limits(latency_ns=low))
    assert limited.feasible and not tight.feasible
    assert free.header_bytes < limited.header_bytes
    assert len(free.tables[0]) < len(limited.tables[0])
    assert free.host_usage.latency_ns > bound >= limited.host_usage.latency_ns
    assert "device 2 (srv, xdp host)" in tight.reason and "latency_ns" in tight.reason
    assert f"limit {low}" in tight.reason
    target = ChainTarget(tuple([*chain(1, 12), Device("srv", XdpTarget(),
                                                      Limits(latency_ns=low))]))
    assert target.estimate(pipeline).stages <= target.limits().stages  # the host not costed
    attached = target.attach_model(pipeline, model.quantised, ds, VERDICT,
                                   model.winner_to_class)
    assert target.estimate(attached).stages > target.limits().stages  # the search sees it
    _, carried = run_switches(limited, ds.x_test, lambda p, d, x, c: simulate(p, x, carried=c))
    program = limited.host_program
    XdpTarget().emit(program, tmp_path, "host")
    obj, _ = load_built(tmp_path)
    with obj:
        got, _ = run_vectors(obj, program, ds.x_test,
                             partial_scores(carried, program, len(ds.x_test)))
    assert (got.class_index == model.predict_quantised(ds.x_test)).all()


def test_a_yaml_xdp_hosts_latency_limit_forces_a_different_split(tmp_path,
                                                                 example_csv) -> None:
    """The same configuration (boosted trees, one trial: the defaults) over a 12-stage Tofino
    and an XDP host: unconstrained, the switch keeps one tree (one class column carried); a
    limit of 70 % of that host's estimate gives the switch more of the trees and the header
    more columns, the host's usage reported against its limit."""
    text = CHAIN_SPEC.format(data=example_csv, chain="").replace("[gnb]", "[xgb]").replace(
        "trials: 3", "trials: 1").replace("stages: 4}}}\n  - {name: sw2, target: tofino, "
                                          "constraints: {resources: {stages: 4}}}",
                                          "stages: 12}}}\n  - {name: srv, target: xdp}")
    assert "name: srv, target: xdp}" in text
    def compiled(i: int, host: str) -> dict:
        spec = tmp_path / f"s{i}.yaml"
        spec.write_text(text.replace("{name: srv, target: xdp}", host))
        out = tmp_path / f"o{i}"
        result = runner.invoke(app, ["compile", str(spec), "-o", str(out), "--no-progress"])
        assert result.exit_code == 0, result.output
        return json.loads((out / "report.json").read_text())

    free = compiled(0, "{name: srv, target: xdp}")
    bound = round(free["devices"][1]["usage"]["latency_ns"] * 0.7)
    limited = compiled(1, "{name: srv, target: xdp, constraints: {performance: "
                          f"{{latency_ns: {bound}}}}}}}")
    assert free["params"] == limited["params"] and free["family"] == "xgb"
    assert free["devices_used"] == limited["devices_used"] == 2
    assert len(free["devices"][0]["tables"]) < len(limited["devices"][0]["tables"])
    assert free["header_bytes"] < limited["header_bytes"]
    assert free["devices"][1]["usage"]["latency_ns"] > bound
    checked = limited["devices"][1]["within_limits"]["latency_ns"]
    assert checked["ok"] and checked["used"] <= checked["limit"] == bound
    assert limited["metrics"]["agreement"] == 1.0


def test_a_c_hosts_limits_are_checked_too() -> None:
    ds, model, pipeline = trained("rf", FOREST)
    from homunculus.schedule.host import HostSource

    source = HostSource(model.quantised, ds.features, VERDICT, model.winner_to_class)
    free = partition(pipeline, [*chain(1, 12), Device("cpu", CTarget(), Limits())],
                     source=source)
    assert free.feasible and free.host_usage is not None
    cap = free.host_usage.latency_ns / 2
    tight = partition(pipeline, [*chain(1, 12), Device("cpu", CTarget(),
                                                       Limits(latency_ns=cap))], source=source)
    assert not tight.feasible and "device 2 (cpu, c host)" in tight.reason


@pytest.mark.parametrize(("extra", "field"), [
    (", constraints: {performance: {latency_ns: -5}}", "latency_ns"),
    (", constraints: {resources: {instructions: many}}", "instructions"),
    (", constraints: {performance: {latncy_ns: 5}}", "latncy_ns"),
])
def test_a_hosts_bad_constraints_exit_2_naming_the_field(tmp_path, extra, field) -> None:
    spec = tmp_path / "t.yaml"
    spec.write_text(host_chain_spec(12, "xdp", extra))
    result = runner.invoke(app, ["compile", str(spec), "-o", str(tmp_path / "o"),
                                 "--no-progress"])
    assert result.exit_code == 2 and "platforms[1]" in result.output and field in result.output
    assert not (tmp_path / "o").exists()
