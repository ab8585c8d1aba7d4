"""The C and XDP targets through the whole compiler: search (MLP allowed), emission, and
verification by the compiled artefact itself (the C library via ctypes; the XDP program in the
kernel via BPF_PROG_TEST_RUN)."""

from __future__ import annotations

import json

import pytest
from test_traffic import TRAFFIC_SPEC

from homunculus.alchemy import Platforms
from homunculus.compile import CompileOptions, compile_plan
from homunculus.errors import InfeasibleError
from homunculus.frontend.yaml_spec import plan_from_yaml

from conftest import spec_text, write_spec


def test_c_target_compiles_tables_and_mlp(tmp_path, example_csv) -> None:
    text = spec_text(example_csv, algorithms="[dt, mlp]", target="c", trials=6).replace(
        "resources: {stages: 12}", "resources: {entries: 2000}")
    result = compile_plan(plan_from_yaml(write_spec(tmp_path / "s.yaml", text)),
                          CompileOptions(tmp_path / "out", progress=False))
    assert result.metrics["agreement"] == 1.0
    families = {t["family"] for t in result.report["trials"]}
    assert "mlp" in families, "the MLP is a candidate on the C target"
    lib = list((tmp_path / "out" / "c").glob("libhmn_*.so"))
    assert len(lib) == 1 and (tmp_path / "out" / "c" / "example.c").is_file()
    # the report speaks the C target's language: no stages, TCAM or PHV
    totals = result.report["resources"]["totals"]
    assert set(totals) == {"tables", "entries", "sram_kbit", "latency_ns", "throughput_gpps"}
    html = (tmp_path / "out" / "report.html").read_text()
    assert "ns per classification (estimate)" in html and "Per stage" not in html


def test_mlp_compiles_for_c_when_it_is_the_only_family(tmp_path, example_csv) -> None:
    text = spec_text(example_csv, algorithms="[mlp]", target="c", trials=2).replace(
        "resources: {stages: 12}", "resources: {}")
    result = compile_plan(plan_from_yaml(write_spec(tmp_path / "s.yaml", text)),
                          CompileOptions(tmp_path / "out", progress=False))
    assert result.family == "mlp" and result.metrics["agreement"] == 1.0
    model = json.loads((tmp_path / "out" / "model" / "quantised.json").read_text())
    assert model["model"]["kind"] == "mlp"


def test_xdp_traffic_compile_is_verified_in_the_kernel(tmp_path) -> None:
    text = TRAFFIC_SPEC.format(target="xdp", select="false")
    result = compile_plan(plan_from_yaml(write_spec(tmp_path / "t.yaml", text)),
                          CompileOptions(tmp_path / "out", progress=False))
    assert result.metrics["agreement"] == 1.0
    sim = result.report["packet_simulation"]
    assert sim["agreement"] == 1.0 and sim["classified"] > 100
    assert (tmp_path / "out" / "xdp" / "snapshot.json").is_file()
    assert list((tmp_path / "out" / "xdp").glob("*.bpf.o"))
    totals = result.report["resources"]["totals"]
    assert {"latency_ns", "instructions", "sram_kbit"} <= set(totals) and "stages" not in totals
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Verifier instructions (estimate)" in html and "Map memory (kbit)" in html


def test_compile_summary_speaks_each_targets_language() -> None:
    from homunculus.report.summary import resource_line

    totals = {"stages": 3, "tables": 4, "entries": 1500, "sram_kbit": 80.0, "tcam_kbit": 12.0,
              "latency_ns": 123.4, "instructions": 4321, "throughput_gpps": 0.008}
    xdp = resource_line("xdp", totals, "latency_ns")
    assert "~123 ns/packet" in xdp and "4,321 verifier instructions" in xdp
    assert "10.0 KiB of maps" in xdp and "stages" not in xdp and "TCAM" not in xdp
    c = resource_line("c", totals, None)
    assert "~123 ns per classification" in c and "10.0 KiB of parameters" in c
    assert "3 stages" in resource_line("tofino", totals, "stages")


def test_platforms_for_kernel_targets_exist() -> None:
    assert Platforms.XDP().target == "xdp" and Platforms.C().target == "c"


def test_xdp_instruction_limit_is_a_constraint(tmp_path, example_csv) -> None:
    text = spec_text(example_csv, algorithms="[rf]", target="xdp", trials=3).replace(
        "resources: {stages: 12}", "resources: {instructions: 50}")
    with pytest.raises(InfeasibleError, match="instructions"):
        compile_plan(plan_from_yaml(write_spec(tmp_path / "s.yaml", text)),
                     CompileOptions(tmp_path / "out", progress=False))


def test_cpu_profiles_are_listed_and_checked() -> None:
    from typer.testing import CliRunner

    from homunculus.cli import app
    from homunculus.targets.registry import make_target

    text = CliRunner().invoke(app, ["targets"]).output
    assert "headroom" in text and "max_trees" in text and "tree_code" in text
    target, _ = make_target("xdp", {"headroom": 3, "max_depth": 12})
    assert target.profile.headroom == 3 and target.profile.max_depth == 12
    for bad, message in (({"headroom": 0.5}, "headroom must be a number >= 1"),
                         ({"max_trees": 0}, "max_trees must be a positive integer"),
                         ({"bogus": 1}, "unknown profile field")):
        with pytest.raises(KeyError, match=message):
            make_target("xdp", bad)
    with pytest.raises(KeyError, match="tree_code must be"):
        make_target("c", {"tree_code": "jit"})


def test_xdp_explicit_capacity_skips_bigger_models(tmp_path, example_csv) -> None:
    """A model beyond an explicit XDP capacity (max_trees) is skipped (a pruned trial), not a
    failed compile; the chosen one fits."""
    text = spec_text(example_csv, algorithms="[rf]", target="xdp", trials=8).replace(
        "resources: {stages: 12}", "resources: {}").replace(
        "  target: xdp\n", "  target: xdp\n  profile: {max_trees: 12}\n")
    result = compile_plan(plan_from_yaml(write_spec(tmp_path / "s.yaml", text)),
                          CompileOptions(tmp_path / "out", progress=False))
    states = [t["state"] for t in result.report["trials"]]
    assert "PRUNED" in states and "COMPLETE" in states
    snap = json.loads((tmp_path / "out" / "xdp" / "snapshot.json").read_text())
    assert snap["capacity"]["trees"] == 12 and result.params["rf_n_estimators"] <= 12
