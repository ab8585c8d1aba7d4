"""An MLP split by layers over a chain of hosts (C, XDP): parts, partitioner, real programs
chained through the carry header (gcc-built libraries, BPF_PROG_TEST_RUN), frontends."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_split import header_dataset, ipv4_frame

from homunculus.ir.dense import QMLP, DenseLayer, activation_of
from homunculus.ir.pipeline import VerdictKind, VerdictPlan
from homunculus.models.mlp import MLPFamily
from homunculus.passes.lower_cpu import lower_cpu
from homunculus.schedule.split import Device
from homunculus.schedule.split_mlp import (
    carry_header,
    cut_points,
    part_model,
    partition_mlp,
    reference_runner,
    run_parts,
)
from homunculus.targets.base import Limits
from homunculus.targets.c.target import CTarget
from homunculus.targets.xdp.target import XdpTarget

VERDICT = VerdictPlan(VerdictKind.DSCP, dscp={1: 10, 2: 46})
FAMILY = MLPFamily()


def mlp_params(activation: str) -> dict:
    return FAMILY.default_params() | {"mlp_layers": 3, "mlp_activation": activation,
                                      "mlp_width_0": 32, "mlp_width_1": 16, "mlp_width_2": 8,
                                      "mlp_epochs": 4}


@pytest.fixture(scope="module")
def ds():
    return header_dataset()


@pytest.fixture(scope="module", params=["relu", "tanh"])
def trained(request, ds):
    """A 3-hidden-layer MLP (32, 16, 8) and its whole CPU program."""
    model = FAMILY.train(mlp_params(request.param), ds.x_train, ds.y_train, ds.n_classes,
                         ds.widths, 0)
    whole = lower_cpu(model.quantised, ds.features, ds.class_labels, VERDICT,
                      model.winner_to_class)
    return model, whole


def hosts(target, n: int, **limits) -> list[Device]:
    return [Device(f"h{i}", target, Limits(**limits)) for i in range(n)]


def test_every_cut_chains_to_the_whole_networks_integers() -> None:
    """Parts carry exactly the network's int8 activations; every way to cut a network with
    negative activations ("none": down to -128) chains to its scores."""
    rng = np.random.default_rng(0)

    def layer(n_out, n_in, activation="none"):
        return DenseLayer(tuple(tuple(int(v) for v in rng.integers(-128, 128, n_in))
                                for _ in range(n_out)),
                          tuple(int(v) for v in rng.integers(-5000, 5000, n_out)),
                          int(rng.integers(1, 200)), 12, activation)

    mlp = QMLP((0, 1, 2), (layer(6, 3), layer(5, 6, "relu"), layer(4, 5), layer(3, 4)))
    x = rng.integers(0, 1 << 10, (400, 3))
    assert (activation_of(mlp, 0, x) < 0).any() and activation_of(mlp, 0, x).min() == -128
    for k in range(1, 5):
        for bounds in cut_points(4, k):
            a = x
            for first, stop in itertools.pairwise(bounds):
                part = part_model(mlp, first, stop)
                a = part.scores(a)
                if part.carries_out:
                    assert (a == activation_of(mlp, stop - 1, x)).all()
                    a = a & 0xFF  # as the header carries them
            assert (a == mlp.scores(x)).all()


def test_the_partitioner_minimises_devices_then_header_bytes(trained, ds) -> None:
    model, whole = trained
    alone = XdpTarget().estimate(whole).latency_ns
    one = partition_mlp(whole, hosts(XdpTarget(), 3))
    assert one.devices == 1 and one.header_bytes == 0  # no limit: one device
    limit = alone * 0.7
    split = partition_mlp(whole, hosts(XdpTarget(), 3, latency_ns=limit))
    assert split.feasible and split.devices == 2
    assert all(p.usage.latency_ns <= limit for p in split.parts)
    assert [(p.first, p.stop) for p in split.parts][0][0] == 0
    assert split.parts[-1].stop == 4 and split.carry_bytes == (split.parts[0].carries + 2,)
    # brute force: no two-device split that fits carries fewer bytes
    for bounds in cut_points(4, 2):
        other = partition_mlp(whole, hosts(XdpTarget(), 3, latency_ns=limit),
                              cuts=bounds[1:-1])
        if other.feasible:
            assert other.header_bytes >= split.header_bytes
    result = run_parts(split, ds.x_test, reference_runner)
    assert (result["class_id"] == model.predict_quantised(ds.x_test)).all()


def test_a_chain_too_small_or_an_empty_cut_is_refused(trained) -> None:
    _, whole = trained
    split = partition_mlp(whole, hosts(XdpTarget(), 4, latency_ns=20))
    assert not split.feasible and "latency_ns" in split.reason and "device 1" in split.reason
    with pytest.raises(ValueError, match="without layers"):
        partition_mlp(whole, hosts(CTarget(), 3), cuts=(2, 2))
    with pytest.raises(ValueError, match="need 3 devices"):
        partition_mlp(whole, hosts(CTarget(), 2), cuts=(1, 2))


def test_a_c_chain_runs_the_gcc_built_parts(trained, ds, tmp_path) -> None:
    """Three C devices (one hidden layer each, the last with the output layer): each library
    is built with gcc; hmn_carry_out's activations feed the next library."""
    from homunculus.targets.c.twin import CLibrary

    model, whole = trained
    split = partition_mlp(whole, hosts(CTarget(), 3), cuts=(1, 2))
    libs = {}
    for part in split.parts:
        paths = CTarget().emit(part.program, tmp_path / str(part.device), f"p{part.device}")
        libs[part.device] = CLibrary(paths["c_library"])
        header = paths["c_header"].read_text()
        assert ("hmn_carry_out" in header) == bool(part.carries)

    def runner(part, inputs):
        if part.carries:
            got = libs[part.device].carry_out(inputs, part.carries)
            assert (got == part.model.scores(inputs)).all()
            return got
        return libs[part.device].classify_verdict(inputs).fields

    got = run_parts(split, ds.x_test, runner)
    expected = run_parts(split, ds.x_test, reference_runner)
    assert (got["class_id"] == model.predict_quantised(ds.x_test)).all()
    assert (got["verdict_dscp"] == expected["verdict_dscp"]).all()


def test_an_xdp_chain_runs_in_the_kernel_on_vectors_and_frames(trained, ds, tmp_path) -> None:
    """Three XDP devices in the kernel: on vectors (hmn_xdp_vec returns a part's activations)
    and on frames: the first inserts the carry header, the middle one replaces it, the last
    strips it and classifies."""
    from homunculus.targets.xdp.loader import prog_test_run
    from homunculus.targets.xdp.runner import (
        MAIN_PROG,
        load_built,
        run_carry_vectors,
        run_classified,
        run_vectors,
    )

    model, whole = trained
    split = partition_mlp(whole, hosts(XdpTarget(), 3), cuts=(2, 3))
    objs = {}
    for part in split.parts:
        XdpTarget().emit(part.program, tmp_path / str(part.device), f"p{part.device}")
        objs[part.device] = load_built(tmp_path / str(part.device))[0]
    expected = model.predict_quantised(ds.x_test)
    try:
        def runner(part, inputs):
            if part.carries:
                got = run_carry_vectors(objs[part.device], part.program, inputs)
                assert (got == part.model.scores(inputs)).all()
                return got
            return run_vectors(objs[part.device], part.program, inputs)[0].fields

        got = run_parts(split, ds.x_test, runner)
        assert (got["class_id"] == expected).all()
        frames = [ipv4_frame(row, b"") for row in ds.x_test]
        reference = run_parts(split, ds.x_test, reference_runner)
        a = ds.x_test
        for part in split.parts[:-1]:
            runs = [prog_test_run(objs[part.device].prog_fd(MAIN_PROG), f) for f in frames]
            a = part.model.scores(a) & 0xFF
            for run, row in zip(runs, a, strict=True):
                out = bytes(run.data)
                assert run.retval == 2  # XDP_PASS: on to the next device
                assert out[12:14] == b"\x88\xb5" and out[14:14 + len(row) + 2] == carry_header(
                    row, 0x0800)  # the activations, then IPv4's EtherType
            frames = [bytes(r.data) for r in runs]
        env, classified, runs = run_classified(objs[split.parts[-1].device],
                                               split.parts[-1].program,
                                               frames + [ipv4_frame(ds.x_test[0], b"")])
        assert classified[:-1].all() and not classified[-1]  # a frame without the header
        assert (env[:-1, 0] == expected).all()
        assert (env[:-1, 4] == reference["verdict_dscp"]).all()
        assert bytes(runs[0].data)[12:14] == b"\x08\x00"  # the header left, EtherType back
    finally:
        for obj in objs.values():
            obj.close()


def test_a_mixed_chain_xdp_then_c(trained, ds, tmp_path) -> None:
    from homunculus.targets.c.twin import CLibrary
    from homunculus.targets.xdp.runner import load_built, run_carry_vectors

    model, whole = trained
    devices = [Device("nic", XdpTarget(), Limits()), Device("srv", CTarget(), Limits())]
    split = partition_mlp(whole, devices, cuts=(1,))
    first, last = split.parts
    XdpTarget().emit(first.program, tmp_path / "0", "p0")
    lib = CLibrary(CTarget().emit(last.program, tmp_path / "1", "p1")["c_library"])
    obj, _ = load_built(tmp_path / "0")
    with obj:
        act = run_carry_vectors(obj, first.program, ds.x_test)
    got = lib.classify_verdict(act & 0xFF)
    assert (got.class_index == model.predict_quantised(ds.x_test)).all()


# ----------------------------------------------------------------------------- frontends


MLP_CHAIN_SPEC = """\
name: split-mlp-test
data:
  path: {data}
  label: device
  features:
    - {{name: ip_len, width: 16, field: ipv4.total_len}}
    - {{name: ttl, width: 8, field: ipv4.ttl}}
    - {{name: proto, width: 8, field: ipv4.protocol}}
model:
  name: m
  algorithms: [mlp]
platforms:
  - {{name: nic, target: xdp{nic}}}
  - {{name: srv, target: c}}
{extra}search: {{trials: 2, seed: 0, cv_folds: 2}}
"""


def compile_spec(tmp_path, text: str):
    from typer.testing import CliRunner

    from homunculus.cli import app

    spec = tmp_path / "s.yaml"
    spec.write_text(text)
    out = tmp_path / "out"
    return CliRunner().invoke(app, ["compile", str(spec), "-o", str(out), "--no-progress"]), out


def test_a_yaml_mlp_chain_of_hosts_compiles(tmp_path, example_csv) -> None:
    """XDP then C, cut after the first layer: each host's program is built, the chain of built
    programs agrees 100% with the quantised model, the report gives layers and header bytes."""
    import json

    result, out = compile_spec(tmp_path, MLP_CHAIN_SPEC.format(data=example_csv, nic="",
                                                               extra="cuts: [1]\n"))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["split"] == "layers" and report["metrics"]["agreement"] == 1.0
    assert report["devices_used"] == 2 and [d["target"] for d in report["devices"]] == ["xdp",
                                                                                         "c"]
    first, last = report["devices"]
    assert first["layers"] == [0, 0] and last["layers"][0] == 1
    width = report["params"]["mlp_width_0"]
    assert first["carry_out"] == last["carry_in"] == width
    assert report["header_bytes"] == report["carry_bytes"][0] == width + 2
    assert "split by layers over 2 of 2 host(s)" in result.output
    assert (out / first["directory"] / "xdp" / "snapshot.json").is_file()
    assert "bpf_xdp_adjust_head" in next((out / first["directory"] / "xdp").glob(
        "*.bpf.c")).read_text()
    assert "hmn_carry_out" not in next((out / last["directory"] / "c").glob("*.h")).read_text()
    assert next((out / last["directory"] / "c").glob("libhmn_*.so")).is_file()
    assert (out / "chain.json").is_file() and (out / "report.html").is_file()


@pytest.mark.parametrize(("nic", "extra", "field", "message"), [
    ("", "cuts: [1, 1]\n", "cuts", "without layers"),
    ("", "cuts: [1, 2, 3]\n", "cuts", "need 4 devices"),
    (", constraints: {performance: {latency_ns: 5}}", "", "platforms",
     "does not fit the chain even split"),
])
def test_a_bad_mlp_chain_is_refused(tmp_path, example_csv, nic, extra, field,
                                    message) -> None:
    result, out = compile_spec(tmp_path, MLP_CHAIN_SPEC.format(data=example_csv, nic=nic,
                                                               extra=extra))
    assert result.exit_code == 2, result.output
    assert message in result.output and field in result.output
    assert not out.exists()


def test_a_host_chain_splits_mlps_only(tmp_path, example_csv) -> None:
    text = MLP_CHAIN_SPEC.format(data=example_csv, nic="", extra="").replace(
        "algorithms: [mlp]", "algorithms: [rf]")
    result, out = compile_spec(tmp_path, text)
    assert result.exit_code == 2 and "algorithms: [mlp]" in result.output
    switch_first = MLP_CHAIN_SPEC.format(data=example_csv, nic="", extra="cuts: [1]\n").replace(
        "target: xdp", "target: tofino").replace("algorithms: [mlp]", "algorithms: [gnb]")
    result, out = compile_spec(tmp_path, switch_first)
    assert result.exit_code == 2 and "cuts" in result.output and "chain of hosts" in result.output


def test_a_python_mlp_chain_of_hosts_compiles(tmp_path, ds) -> None:
    from homunculus.alchemy import DataLoader, Feature, Model, Platforms, generate

    @DataLoader(features=[Feature("ttl", 8, field="ipv4.ttl"),
                          Feature("len", 16, field="ipv4.total_len"),
                          Feature("proto", 8, field="ipv4.protocol")])
    def load():
        return (ds.x_train, [ds.class_labels[i] for i in ds.y_train], ds.x_test,
                [ds.class_labels[i] for i in ds.y_test])

    model = Model("m", data=load, algorithms=["mlp"])
    chained = Platforms.chain(Platforms.XDP(), Platforms.XDP(), cuts=[1]).schedule(model)
    result = generate(chained, tmp_path / "out", trials=1, progress=False)
    assert result.report["split"] == "layers" and result.metrics["agreement"] == 1.0
    assert result.report["devices_used"] == 2


def test_the_last_xdp_part_deploys_counts_and_refuses_a_whole_models_push(trained, ds,
                                                                           tmp_path) -> None:
    """`homunculus deploy` of the last part on a live veth: frames carrying the previous part's
    activations in the carry header are counted per class as the quantised model classifies
    them; a push of the same part is allowed, a push of the whole model's compile refused (a
    different interface: it reads features, not activations)."""
    import contextlib
    import os

    from test_xdp_live import cli, send, veth_link, wait_stats

    from homunculus import deploy as deploy_mod

    model, whole = trained
    split = partition_mlp(whole, hosts(XdpTarget(), 2), cuts=(2,))
    first, last = split.parts
    XdpTarget().emit(last.program, tmp_path / "last", "last")
    XdpTarget().emit(whole, tmp_path / "whole", "whole")
    rows = ds.x_test[:200]
    act = first.model.scores(rows)
    want = np.bincount(model.predict_quantised(rows), minlength=len(ds.class_labels)).tolist()
    name = f"hmn_test_m{os.getpid()}"
    try:
        with veth_link("m") as link:
            code, text = cli("deploy", str(tmp_path / "last"), "--iface", link.receiver,
                             "--netns", link.rx, "--name", name)
            assert code == 0, text
            head = link.mac(link.rx, link.receiver) + link.mac(link.tx, link.sender)
            send(link, [head + ipv4_frame(row, carry_header(a, 0x0800))[12:]
                        for row, a in zip(rows, act, strict=True)])
            stats = wait_stats(name, len(rows))
            assert list(stats["counts"]) == list(ds.class_labels)
            assert list(stats["counts"].values()) == want
            assert cli("push", str(tmp_path / "last"), "--name", name)[0] == 0
            code, text = cli("push", str(tmp_path / "whole"), "--name", name)
            assert code == 2, text
            assert cli("undeploy", name)[0] == 0
    finally:
        with contextlib.suppress(Exception):
            deploy_mod.undeploy(name)


@pytest.mark.parametrize("last", ["xdp", "c"])
def test_flow_features_split_and_agree_on_every_packet(tmp_path, last) -> None:
    """An MLP over flow features: the first XDP part keeps the flow registers and inserts the
    carry header on the packets it classifies; the last part (XDP in the kernel, or the C
    library fed the header's bytes) classifies every packet as the quantised model does on the
    reference features of the same packets, flow state per capture."""
    from test_xdp_live import FLOW, flow_defs, flow_mlp

    from homunculus.data.attacks import scenario_anomaly, synthetic_background
    from homunculus.schedule.chain_mlp import device_dir, verify_chain_packets

    table = scenario_anomaly(synthetic_background(0, 20, 10_000_000), 1)
    table = table.sort_values("ts_us", kind="stable").iloc[::3].reset_index(drop=True)
    whole = flow_mlp(table, 0, frozenset({0}))
    assert whole.flow is not None and FLOW.slots and len(flow_defs()) == len(whole.features)
    target = {"xdp": XdpTarget(), "c": CTarget()}[last]
    devices = [Device("nic", XdpTarget(), Limits()), Device("end", target, Limits())]
    split = partition_mlp(whole, devices, cuts=(1,))
    assert split.parts[0].program.flow is not None and split.parts[1].program.flow is None
    for part in split.parts:
        devices[part.device].target.emit(part.program,
                                         device_dir(tmp_path, part.device, devices[part.device]
                                                    .name), f"p{part.device}")
    report = verify_chain_packets(tmp_path, split, devices, whole, table)
    assert report["classified"] > 100 and report["agreement"] == 1.0
    with pytest.raises(Exception, match="disagrees|classifies"):  # a wrong chain is caught
        broken = partition_mlp(whole, devices, cuts=(1,))
        other = flow_mlp(table, 1, frozenset({0}))
        verify_chain_packets(tmp_path, broken, devices, other, table)
    assert not partition_mlp(whole, [Device("c", CTarget(), Limits()),
                                     Device("x", XdpTarget(), Limits())]).feasible


def test_a_traffic_spec_splits_over_xdp_hosts_and_agrees_on_packets(tmp_path) -> None:
    """A YAML traffic spec (flow features) over two XDP hosts, cut after the first layer: the
    compile verifies the chain on the test rows and on every packet of the capture."""
    import json

    from test_traffic import TRAFFIC_SPEC

    text = TRAFFIC_SPEC.format(target="xdp", select="false").replace(
        "platform:\n  target: xdp\n",
        "platforms:\n  - {name: a, target: xdp}\n  - {name: b, target: xdp}\ncuts: [1]\n"
    ).replace("algorithms: [dt, gnb]", "algorithms: [mlp]").replace("trials: 4", "trials: 1")
    result, out = compile_spec(tmp_path, text)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["agreement"] == 1.0 and report["devices_used"] == 2
    sim = report["packet_simulation"]
    assert sim["agreement"] == 1.0 and sim["classified"] > 100
    assert "through the chain agree 100%" in result.output
    bad = text.replace("target: xdp}\n  - {name: b", "target: c}\n  - {name: b")
    (tmp_path / "bad").mkdir()
    result, _ = compile_spec(tmp_path / "bad", bad)
    assert result.exit_code == 2 and "XDP first device" in result.output
