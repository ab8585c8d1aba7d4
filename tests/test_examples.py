"""The bundled example specs stay runnable (with a tiny budget) and verified."""

from __future__ import annotations

import contextlib
import json
import os

import pytest

from homunculus.compile import CompileOptions, compile_plan
from homunculus.frontend.yaml_spec import plan_from_yaml

from conftest import ROOT


@pytest.mark.parametrize("spec,trials", [("iot/spec.yaml", 3), ("anomaly/spec.yaml", 3),
                                         ("botnet/spec.yaml", 10), ("traffic/spec.yaml", 3),
                                         ("split/host_traffic.yaml", 2)])
def test_example_compiles_and_verifies(tmp_path, spec, trials) -> None:
    from homunculus.schedule.driver import compile_any

    plan = plan_from_yaml(ROOT / "examples" / spec)
    result = compile_any(plan, CompileOptions(tmp_path / "out", trials=trials, progress=False))
    assert result.metrics["agreement"] == 1.0
    sim = result.report.get("packet_simulation")
    if sim is not None:
        assert sim["agreement"] == 1.0


def test_c_example_builds_and_classifies(tmp_path) -> None:
    """examples/c: the spec compiles, its Makefile builds classify.c against the library, and
    classify prints the quantised model's class and verdict for every row."""
    import subprocess

    import pandas as pd

    from homunculus.ir.serialize import compiled_from_json

    out = tmp_path / "out"
    result = compile_plan(plan_from_yaml(ROOT / "examples" / "c" / "spec.yaml"),
                          CompileOptions(out, trials=2, progress=False))
    assert result.metrics["agreement"] == 1.0
    make = subprocess.run(["make", "-C", str(ROOT / "examples" / "c"), f"OUT={out}"],
                          capture_output=True, text=True, check=False)
    assert make.returncode == 0, make.stdout + make.stderr
    x = pd.read_csv(ROOT / "examples" / "iot" / "iot_features.csv").head(400).drop(
        columns="device").to_numpy()
    rows = "\n".join(",".join(map(str, row)) for row in x) + "\n"
    run = subprocess.run([str(out / "classify")], input=rows, capture_output=True, text=True,
                         check=True)
    program = compiled_from_json(json.loads((out / "pipeline.json").read_text()))
    expected = program.results(x)
    lines = run.stdout.splitlines()
    assert [int(line.split()[0]) for line in lines] == expected["class_id"].tolist()
    assert [f"mark={m}" in line for line, m in zip(lines, expected["verdict_mark"],
                                                    strict=True)] == [True] * len(lines)
    bad = subprocess.run([str(out / "classify")], input="1,2\n", capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 2 and "line 1: expected 7 features, found 2" in bad.stderr


def test_xdp_example_deploys_pushes_and_undeploys(tmp_path) -> None:
    """examples/xdp: the README's commands on a veth pair in namespaces of the test's own: a
    second compile is pushed when it fits the first's capacity, else refused (exit 2) with the
    first model still active."""
    from test_xdp_live import cli, veth_link

    from homunculus import deploy as deploy_mod

    spec = ROOT / "examples" / "xdp" / "spec.yaml"
    outs = [tmp_path / f"out{seed}" for seed in (0, 1)]
    for seed, out in enumerate(outs):
        result = compile_plan(plan_from_yaml(spec), CompileOptions(out, trials=2, seed=seed,
                                                                   progress=False))
        assert result.metrics["agreement"] == 1.0
        assert result.report["packet_simulation"]["agreement"] == 1.0
    name = f"hmn_example_{os.getpid()}"
    try:
        with veth_link("x") as link:
            code, text = cli("deploy", str(outs[0]), "--iface", link.receiver, "--netns",
                             link.rx, "--name", name)
            assert code == 0, text
            code, text = cli("push", str(outs[1]), "--name", name)
            stats = json.loads(cli("stats", name, "--json")[1])
            if code == 0:
                assert stats["active_slot"] == 1
            else:
                assert code == 2 and ("does not fit" in text or "differ" in text), text
                assert stats["active_slot"] == 0
            assert cli("undeploy", name)[0] == 0
    finally:
        with contextlib.suppress(Exception):
            deploy_mod.undeploy(name)
