"""The vendor-toolchain hook: readers on the real compilers' outputs, and the hook end to end with
fake compilers (small scripts that answer as p4c-barefoot / p4c-bm2-ss answered on the fixtures).
"""

from __future__ import annotations

import json
import os
import shlex
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from homunculus.cli import app
from homunculus.targets.p4.toolchain import (
    ToolchainPathError,
    explicit_tool,
    find_tool,
    parse_resources,
    read_resources,
    summarise_log,
    tool_arch,
)

from conftest import spec_text, write_spec

FIXTURES = Path(__file__).parent / "fixtures" / "real-compilers"
TNA = FIXTURES / "tna"
runner = CliRunner()


# ----------------------------------------------------------------------------- readers


def test_resources_of_the_accepted_dt_program() -> None:
    res = read_resources(TNA / "iot-dt-tofino" / "resources.json")
    assert res.stages_used == 7 and res.chip_stages == 12 and res.compiler_version == "9.13.4"
    by_stage = {s.stage: s for s in res.stages}
    assert sorted(by_stage) == list(range(7))
    # as the fixture README says: encoders in stages 0-2, the tree in 3, the verdict in 4
    assert {t for t in by_stage[1].tables} == {f"MyIngress.enc_{f}" for f in
                                              ("dst_port", "proto", "ttl", "ip_len")}
    assert by_stage[2].tables == ("MyIngress.enc_src_port",)
    assert by_stage[3].tables == ("MyIngress.tree0",)
    assert by_stage[4].tables == ("MyIngress.verdict",)
    assert [(s.sram_blocks, s.tcam_blocks) for s in res.stages] == [
        (3, 2), (4, 4), (1, 1), (1, 4), (1, 0), (0, 0), (1, 0)]
    assert (res.sram_blocks, res.tcam_blocks, res.tables) == (11, 11, 14)


def test_resources_of_a_rejected_program_are_empty() -> None:
    res = read_resources(TNA / "iot-rf-tofino" / "resources.json")
    assert res.stages == () and res.stages_used == 0 and res.chip_stages == 12
    assert (res.sram_blocks, res.tcam_blocks) == (0, 0)


def test_malformed_resources_name_the_file(tmp_path) -> None:
    bad = tmp_path / "resources.json"
    bad.write_text(json.dumps({"resources": {"mau": {"nStages": 12}}}))
    with pytest.raises(ValueError, match=f"{bad}: .*mau_stages"):
        read_resources(bad)
    with pytest.raises(ValueError, match=r"mau_stages\[0\] has no stage_number"):
        parse_resources({"resources": {"mau": {"mau_stages": [{"rams": {}}]}}})


def test_log_summaries() -> None:
    accepted = summarise_log((TNA / "iot-dt-tofino" / "p4c-barefoot.log").read_text())
    assert (accepted.errors, accepted.warnings) == (0, 2)
    rejected = summarise_log((TNA / "iot-rf-tofino" / "p4c-barefoot.log").read_text())
    assert (rejected.errors, rejected.warnings) == (9, 2)
    assert rejected.excerpt.startswith("program.p4(878): [--Werror=unsupported] error: add: "
                                       "action spanning multiple stages")
    phv = summarise_log((TNA / "botnet-tofino" / "p4c-barefoot.log").read_text())
    assert (phv.errors, phv.warnings) == (3, 2)
    assert phv.excerpt.startswith("error: Unable to slice")
    assert "PHV allocation was not successful" in phv.excerpt
    # without the compiler's summary line, error and warning lines are counted
    plain = summarise_log("warning: a\nx.p4(3): error: b\n  detail\nerror: c\n")
    assert (plain.errors, plain.warnings) == (2, 1) and plain.excerpt.startswith("x.p4(3)")


# ----------------------------------------------------------------------------- fake compilers


def make_tool(directory: Path, name: str, body: str) -> Path:
    """An executable shell script called ``name`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


ARGS = """echo "$@" >> "$(dirname "$0")/calls.txt"
if [ "$1" = "--version" ]; then echo "{name} 9.13.4 (test double)"; exit 0; fi
out=""; prev=""; prog=""
for a in "$@"; do [ "$prev" = "-o" ] && out="$a"; prev="$a"; prog="$a"; done
[ -f "$prog" ] || {{ echo "error: no program $prog"; exit 3; }}
"""


def fake_barefoot(directory: Path, fixture: str, exit_code: int, guard: str = "") -> Path:
    """Answers like p4c-barefoot did on ``fixture``: its resources.json into BUILD/pipe/logs,
    its log on stdout, its exit code. ``guard``: shell run first (may exit on its own)."""
    src = TNA / fixture
    body = ARGS.format(name="p4c-barefoot") + guard + f"""
mkdir -p "$out/pipe/logs"
cp {shlex.quote(str(src / "resources.json"))} "$out/pipe/logs/resources.json"
grep -v '^exit ' {shlex.quote(str(src / "p4c-barefoot.log"))}
exit {exit_code}
"""
    return make_tool(directory, "p4c-barefoot", body)


def fake_bm2(directory: Path) -> Path:
    body = ARGS.format(name="p4c-bm2-ss") + """grep -q "v1model.p4" "$prog" || exit 4
echo '{"program": "compiled"}' > "$out"
exit 0
"""
    return make_tool(directory, "p4c-bm2-ss", body)


@pytest.fixture
def bare_path(tmp_path, monkeypatch) -> Path:
    """PATH without any P4 compiler: an empty directory first, then the system's."""
    empty = tmp_path / "nobin"
    empty.mkdir()
    monkeypatch.setenv("PATH", f"{empty}:/usr/bin:/bin")
    return empty


def compile_cli(spec: Path, out: Path, *extra: str):
    return runner.invoke(app, ["compile", str(spec), "-o", str(out), "--no-progress",
                               "--trials", "2", *extra])


def test_finding_and_checking_compilers(tmp_path) -> None:
    bin_dir = tmp_path / "bin"
    barefoot = fake_barefoot(bin_dir, "iot-dt-tofino", 0)
    assert find_tool("tna", search_path=str(bin_dir)).path == barefoot
    make_tool(bin_dir, "bf-p4c", "exit 0\n")
    assert find_tool("tna", search_path=str(bin_dir)).name == "bf-p4c"  # preferred
    assert find_tool("v1model", search_path=str(bin_dir)) is None
    assert tool_arch(Path("p4c-bm2-ss")) == "v1model" and tool_arch(Path("my-p4c")) is None
    with pytest.raises(ToolchainPathError, match="no such file"):
        explicit_tool("missing/p4c-barefoot", "tna", tmp_path)
    (tmp_path / "plain").write_text("")
    with pytest.raises(ToolchainPathError, match="not an executable file"):
        explicit_tool(str(tmp_path / "plain"), "tna", tmp_path)
    with pytest.raises(ToolchainPathError, match="compiles for tofino .* target is bmv2"):
        explicit_tool("bin/p4c-barefoot", "v1model", tmp_path)
    assert explicit_tool("bin/p4c-barefoot", "tna", tmp_path).path == barefoot
    wrapper = make_tool(bin_dir, "site-p4c", "exit 0\n")  # unknown names are taken as given
    assert explicit_tool(str(wrapper), "v1model", tmp_path).arch == "v1model"


def test_without_a_compiler_the_report_says_estimated(tmp_path, example_csv, bare_path) -> None:
    spec = write_spec(tmp_path / "s.yaml", spec_text(example_csv, algorithms="[dt]"))
    result = compile_cli(spec, tmp_path / "out")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["toolchain"]["ran"] is False
    assert "no P4 compiler for tofino on PATH" in report["toolchain"]["reason"]
    assert report["resources"]["basis"] == "estimated" and report["resources"]["real"] is None
    assert "estimate" in report["resources"]["note"]
    assert json.loads((tmp_path / "out/resources.json").read_text())["basis"] == "estimated"
    html = (tmp_path / "out/report.html").read_text()
    assert "Resources (estimated)" in html and "No P4 compiler ran" in html
    assert "no P4 compiler ran" in " ".join(result.output.split())
    assert not (tmp_path / "out/toolchain").exists()


def test_an_accepting_compiler_on_path_gives_real_figures(tmp_path, example_csv,
                                                          monkeypatch) -> None:
    bin_dir = tmp_path / "bin"
    fake_barefoot(bin_dir, "iot-dt-tofino", 0)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    spec = write_spec(tmp_path / "s.yaml", spec_text(example_csv, algorithms="[dt]"))
    out = tmp_path / "out"
    result = compile_cli(spec, out)
    assert result.exit_code == 0, result.output
    tc = json.loads((out / "report.json").read_text())["toolchain"]
    assert tc["ran"] and tc["accepted"] and tc["tool"] == "p4c-barefoot"
    assert tc["version"] == "p4c-barefoot 9.13.4 (test double)"
    assert tc["command"][1:] == ["--target", "tofino", "--arch", "tna", "-g", "-o", "BUILD",
                                 "p4/hmn_test_spec.p4"]
    assert (tc["errors"], tc["warnings"]) == (0, 2)
    real = tc["resources"]
    assert (real["stages"], real["sram_blocks"], real["tcam_blocks"]) == (7, 11, 11)
    assert real["sram_kbit"] == 11 * 128 and real["per_stage"][3]["tables"] == ["MyIngress.tree0"]
    report = json.loads((out / "report.json").read_text())
    assert report["resources"]["basis"] == "estimated"
    assert report["resources"]["real"]["stages"] == 7
    assert tc["estimate"]["stages"] == report["resources"]["totals"]["stages"]
    assert (out / "toolchain/p4c-barefoot.log").read_text().startswith("warning: Parser state")
    assert read_resources(out / "toolchain/resources.json").stages_used == 7
    html = (out / "report.html").read_text()
    assert "Estimated vs real" in html and "MyIngress.enc_src_port" in html
    assert "<strong>p4c-barefoot 9.13.4 (test double)</strong>" in html
    assert "No P4 compiler ran" not in html
    assert "real: 7 stages" in " ".join(result.output.split())


def test_a_rejecting_compiler_fails_the_compile_and_leaves_out_alone(tmp_path, example_csv,
                                                                     bare_path) -> None:
    rejecting = fake_barefoot(tmp_path / "bin", "iot-rf-tofino", 1)
    spec = write_spec(tmp_path / "s.yaml", spec_text(example_csv, algorithms="[dt]"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("the previous compile's report\n")
    result = compile_cli(spec, out, "--p4c", str(rejecting))
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "p4c-barefoot rejected the generated program p4/hmn_test_spec.p4 (exit 1; 9 error(s)" \
        in text
    assert "action spanning multiple stages" in text
    assert (out / "report.json").read_text() == "the previous compile's report\n"
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]  # not even the study
    assert not list(tmp_path.glob(".out.*"))


def test_bmv2_compiler_from_the_spec_field(tmp_path, example_csv, bare_path) -> None:
    fake_bm2(tmp_path / "tools")
    text = spec_text(example_csv, algorithms="[dt]", target="bmv2").replace(
        "  target: bmv2\n", "  target: bmv2\n  toolchain: tools/p4c-bm2-ss\n")
    spec = write_spec(tmp_path / "s.yaml", text)
    out = tmp_path / "out"
    result = compile_cli(spec, out)
    assert result.exit_code == 0, result.output
    tc = json.loads((out / "report.json").read_text())["toolchain"]
    assert tc["accepted"] and tc["resources"] is None
    assert tc["command"][1:] == ["--std", "p4-16", "-o", "BUILD/hmn_test_spec.json",
                                 "p4/hmn_test_spec.p4"]
    assert json.loads((out / "toolchain/hmn_test_spec.json").read_text()) == {
        "program": "compiled"}
    assert "acceptance only" in (out / "report.html").read_text()


def test_bad_toolchain_settings_are_spec_errors(tmp_path, example_csv, bare_path) -> None:
    text = spec_text(example_csv, algorithms="[dt]").replace(
        "  target: tofino\n", "  target: tofino\n  toolchain: nowhere/bf-p4c\n")
    spec = write_spec(tmp_path / "s.yaml", text)
    result = compile_cli(spec, tmp_path / "out")
    assert result.exit_code == 2
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "toolchain:" in ln)
    flat = " ".join(result.output.split())
    assert f"s.yaml:{line}, field 'platform.toolchain': no such file" in flat
    bm2 = fake_bm2(tmp_path / "bin")
    plain = write_spec(tmp_path / "p.yaml", spec_text(example_csv, algorithms="[dt]"))
    result = compile_cli(plain, tmp_path / "out", "--p4c", str(bm2))
    assert result.exit_code == 2
    assert "field '--p4c': p4c-bm2-ss compiles for bmv2" in " ".join(result.output.split())
    result = compile_cli(plain, tmp_path / "out", "--toolchain-feasibility")
    assert result.exit_code == 2
    assert "field '--toolchain-feasibility': --toolchain-feasibility needs a P4 compiler: no P4 " \
        "compiler for tofino on PATH" in " ".join(result.output.split())
    xdp = write_spec(tmp_path / "x.yaml", spec_text(example_csv, algorithms="[dt]",
                                                   target="xdp").replace(
        "  target: xdp\n", "  target: xdp\n  toolchain: bf-p4c\n"))
    result = compile_cli(xdp, tmp_path / "out")
    assert result.exit_code == 2 and "toolchain applies to tofino and bmv2" in result.output
    assert not (tmp_path / "out").exists()


def test_a_compiler_that_hangs_is_stopped(tmp_path, example_csv, bare_path) -> None:
    # the compiler's helper process would keep the pipe open: the whole group must be ended
    hanging = make_tool(tmp_path / "bin", "p4c-barefoot", ARGS.format(name="p4c-barefoot")
                        + "sleep 60\necho never\n")
    spec = write_spec(tmp_path / "s.yaml", spec_text(example_csv, algorithms="[dt]"))
    result = compile_cli(spec, tmp_path / "out", "--p4c", str(hanging), "--p4c-timeout", "1")
    assert result.exit_code == 2
    assert "did not finish compiling p4/hmn_test_spec.p4 within 1 s" in " ".join(
        result.output.split())


def test_the_compiler_as_feasibility_oracle(tmp_path, example_csv, bare_path) -> None:
    # rejects every program with a decision-tree table, accepts the rest (the dt fixture's report)
    guard = """grep -q "table tree0" "$prog" && { grep -v '^exit ' """ + shlex.quote(
        str(TNA / "iot-rf-tofino" / "p4c-barefoot.log")) + "; exit 1; }\n"
    judge = fake_barefoot(tmp_path / "bin", "iot-dt-tofino", 0, guard)
    text = spec_text(example_csv, algorithms="[dt, gnb]").replace("  seed: 0", "  seed: 0\n"
                                                                  "  sampler: random")
    spec = write_spec(tmp_path / "s.yaml", text)
    out = tmp_path / "out"
    result = runner.invoke(app, ["compile", str(spec), "-o", str(out), "--no-progress",
                                 "--trials", "4", "--p4c", str(judge), "--toolchain-feasibility"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["family"] == "gnb"
    import optuna

    study = optuna.load_study(study_name="study_test_spec", storage=f"sqlite:///{out}/study.db")
    families = {t.user_attrs["family"] for t in study.trials}
    assert families == {"dt", "gnb"}, "the seeded search tries both families"
    for t in study.trials:
        verdict = t.user_attrs["toolchain"]
        if t.user_attrs["family"] == "dt":
            assert not t.user_attrs["feasible"] and t.user_attrs["binding"] == "toolchain"
            assert "action spanning multiple stages" in verdict["reason"]
            assert t.constraints["toolchain"] == 1.0
        else:
            assert verdict["feasible"] and verdict["stages"] == 7 and t.user_attrs["feasible"]
            assert t.constraints["toolchain"] == 0.0
    calls = (tmp_path / "bin/calls.txt").read_text().splitlines()
    assert sum("--arch tna" in c for c in calls) == len(study.trials) + 1  # + the final compile


def test_real_stages_above_the_limit(tmp_path, example_csv, bare_path) -> None:
    seven = fake_barefoot(tmp_path / "bin", "iot-dt-tofino", 0)  # always 7 real stages
    text = spec_text(example_csv, algorithms="[dt]").replace("{stages: 12}", "{stages: 6}")
    spec = write_spec(tmp_path / "s.yaml", text)
    result = compile_cli(spec, tmp_path / "out", "--p4c", str(seven))
    assert result.exit_code == 2  # the estimate fits 6 stages, the compiler's count does not
    flat = " ".join(result.output.split())
    assert "p4c-barefoot placed the program in 7 stages, above the limit of 6" in flat
    assert "--toolchain-feasibility" in flat and not (tmp_path / "out/report.json").exists()
    result = compile_cli(spec, tmp_path / "out", "--p4c", str(seven), "--toolchain-feasibility")
    assert result.exit_code == 2
    assert "the P4 compiler turned down 2 of them (first: trial 0, dt: p4c-barefoot placed the " \
        "program in 7 stages, above the limit of 6)" in " ".join(result.output.split())


SCRIPT = '''
import numpy as np
from homunculus.alchemy import DataLoader, Feature, Model, Platforms, generate


@DataLoader(features=[Feature("a", 8, field="ipv4.ttl"), Feature("b", 16)])
def load():
    rng = np.random.default_rng(0)
    x = np.stack([rng.integers(0, 256, 300), rng.integers(0, 65536, 300)], 1)
    y = np.where(x[:, 0] > 128, "attack", "benign")
    return x[:200], y[:200], x[200:], y[200:]


switch = Platforms.BMv2(toolchain={tool!r})
switch.schedule(Model("toy", data=load, algorithms=["dt"]))
generate(switch, "unused", trials=2)
'''


def test_python_frontend_toolchain_is_relative_to_the_script(tmp_path, bare_path) -> None:
    fake_bm2(tmp_path / "tools")
    script = tmp_path / "spec.py"
    script.write_text(SCRIPT.format(tool="tools/p4c-bm2-ss"))
    result = runner.invoke(app, ["compile", str(script), "-o", str(tmp_path / "out"),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    tc = json.loads((tmp_path / "out/report.json").read_text())["toolchain"]
    assert tc["accepted"] and tc["path"] == str(tmp_path / "tools/p4c-bm2-ss")
    script.write_text(SCRIPT.format(tool="tools/p4c-barefoot"))
    result = runner.invoke(app, ["compile", str(script), "-o", str(tmp_path / "out2"),
                                 "--no-progress"])
    assert result.exit_code == 2
    line = SCRIPT.splitlines().index("switch = Platforms.BMv2(toolchain={tool!r})") + 1
    assert f"spec.py:{line}, field 'platform.toolchain': no such file" in " ".join(
        result.output.split())


def test_an_unreadable_resource_report_is_an_error(tmp_path, example_csv, bare_path) -> None:
    garbled = make_tool(tmp_path / "bin", "bf-p4c", ARGS.format(name="bf-p4c") + """
mkdir -p "$out/pipe/logs"; echo '{"resources": {}}' > "$out/pipe/logs/resources.json"
exit 0
""")
    spec = write_spec(tmp_path / "s.yaml", spec_text(example_csv, algorithms="[dt]"))
    result = compile_cli(spec, tmp_path / "out", "--p4c", str(garbled))
    assert result.exit_code == 2
    assert "bf-p4c wrote a resource report Homunculus cannot read" in " ".join(
        result.output.split())
    assert not (tmp_path / "out/report.json").exists()
