"""bmv2 run-time exactness: every simple_switch_CLI file parses with the CLI's grammar against the
declarations of its program, and installs exactly what runtime/entries.json installs.

Run on the real fixtures (every command of which bmv2 accepted) and on freshly generated programs
of every family that runs on a switch, with flow registers and with every verdict kind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_p4_codegen import PIPELINES
from test_p4_flow_codegen import flow_pipeline

from homunculus.compile import build_problem
from homunculus.frontend.yaml_spec import plan_from_yaml
from homunculus.models.base import get_family
from homunculus.search.problem import MERGE_PARAM, evaluate
from homunculus.targets.p4.cli_grammar import (
    CliError,
    check_cli,
    compare_with_runtime,
    declarations,
    parse_number,
    suffix_names,
    unconfigured_tables,
)
from homunculus.targets.p4.profiles import BMV2
from homunculus.targets.p4.target import SwitchTarget

from conftest import spec_text, write_spec

V1MODEL = Path(__file__).parent / "fixtures" / "real-compilers" / "v1model"
FIXTURES = sorted(p.name for p in V1MODEL.iterdir())
SWITCH_FAMILIES = ("dt", "rf", "xgb", "gnb", "cnb", "svm", "kmeans")


def check_files(p4: str, cli: str, runtime: dict | None = None) -> dict:
    decls = declarations(p4)
    states = check_cli(cli, decls)
    assert unconfigured_tables(states, decls) == []
    for name, state in states.items():
        assert state.default is not None, f"{name}: no default action set"
    if runtime is not None:
        compare_with_runtime(states, decls, runtime)
    return states


# ----------------------------------------------------------------------------- fixtures


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_cli_files_parse(name: str) -> None:
    folder = V1MODEL / name
    states = check_files((folder / "program.p4").read_text(),
                         (folder / "simple_switch_cli.txt").read_text())
    adds = (folder / "simple_switch_cli.txt").read_text().count("\ntable_add ")
    assert sum(len(s.entries) for s in states.values()) == adds > 0


def test_fixture_declarations() -> None:
    decls = declarations((V1MODEL / "iot-rf-bmv2" / "program.p4").read_text())
    verdict = decls.tables["MyIngress.verdict"]
    assert verdict.match_type == "exact" and not verdict.prioritised and verdict.size == 4
    assert [(k.expr, k.kind, k.width) for k in verdict.keys] == [("meta.winner", "exact", 3)]
    assert decls.actions["MyIngress.verdict_set"].params == (
        ("class_id", 3), ("verdict_port", 9), ("verdict_drop", 1), ("verdict_mark", 1),
        ("verdict_dscp", 6))
    assert decls.tables["MyIngress.tree0"].match_type == "ternary"
    assert decls.tables["MyIngress.enc_ip_len"].match_type == "range"


# ----------------------------------------------------------------------------- generated programs


@pytest.fixture(scope="module")
def bmv2_problems(tmp_path_factory) -> dict:
    import pandas as pd

    from conftest import EXAMPLE_DIR

    base = tmp_path_factory.mktemp("cli")
    csv = base / "iot.csv"
    pd.read_csv(EXAMPLE_DIR / "iot_features.csv").head(1200).to_csv(csv, index=False)
    problems = {}
    for verdict in ("dscp", "drop", "forward"):
        text = spec_text(csv, algorithms="[dt]", target="bmv2").replace(
            "  metric: f1_macro\n", "  metric: f1_macro\n  verdict: " + {
                "dscp": "{kind: dscp, dscp: {camera: 34, speaker: 26}}",
                "drop": "{kind: drop, drop: [camera]}",
                "forward": "{kind: forward, ports: {camera: 7, hub: 3}, default_port: 5}",
            }[verdict] + "\n")
        spec = write_spec(base / f"{verdict}.yaml", text)
        problems[verdict] = build_problem(plan_from_yaml(spec), 0)[0]
    return problems


def emitted(problem, family: str, out: Path, merge: bool = False) -> tuple[str, str, dict]:
    params = dict(get_family(family).default_params())
    if merge:
        params[MERGE_PARAM] = True
    ev = evaluate(problem, family, params)
    return emit_bmv2(ev.pipeline, out)


@pytest.mark.parametrize("family", SWITCH_FAMILIES)
def test_generated_cli_files_parse_and_match_entries(family, bmv2_problems, tmp_path) -> None:
    p4, cli, runtime = emitted(bmv2_problems["dscp"], family, tmp_path)
    states = check_files(p4, cli, runtime)
    assert sum(len(s.entries) for s in states.values()) == cli.count("table_add ")


@pytest.mark.parametrize("verdict", ["drop", "forward"])
def test_generated_cli_files_for_every_verdict(verdict, bmv2_problems, tmp_path) -> None:
    p4, cli, runtime = emitted(bmv2_problems[verdict], "gnb", tmp_path, merge=True)
    check_files(p4, cli, runtime)


def emit_bmv2(pipeline, out: Path) -> tuple[str, str, dict]:
    """What the bmv2 target writes for ``pipeline``: program, CLI file and entries.json."""
    SwitchTarget(BMV2).emit(pipeline, out, "hmn_cli")
    runtime = out / "runtime"
    return ((out / "p4/hmn_cli.p4").read_text(), (runtime / "simple_switch_cli.txt").read_text(),
            json.loads((runtime / "entries.json").read_text()))


# "port_only" is left out: the target never emits a verdict table without its default port
@pytest.mark.parametrize("name", sorted(set(PIPELINES) - {"port_only"}))
def test_hand_built_pipelines(name: str, tmp_path) -> None:
    check_files(*emit_bmv2(PIPELINES[name](), tmp_path))


def test_flow_register_pipeline(tmp_path) -> None:
    pipeline, _ = flow_pipeline("v1model", slots=64)
    check_files(*emit_bmv2(pipeline, tmp_path))


# ----------------------------------------------------------------------------- what it rejects

PROGRAM = """
#include <core.p4>
#include <v1model.p4>
typedef bit<9> port_t;
header ipv4_h { bit<4> version; bit<4> ihl; bit<8> diffserv; bit<8> ttl; bit<32> src_addr; }
struct headers_t { ipv4_h ipv4; }
struct metadata_t { bit<16> x; bit<3> cls; bit<1> flag; }
control MyIngress(inout headers_t hdr, inout metadata_t meta,
                  inout standard_metadata_t standard_metadata) {
    action verdict_set(port_t port) { standard_metadata.egress_spec = port; }
    action verdict_mark(port_t port, bit<6> dscp) { hdr.ipv4.diffserv[7:2] = dscp; }
    @name("verdict_drop_now") action verdict_drop() { mark_to_drop(standard_metadata); }
    table verdict {
        key = {
            meta.cls: exact;
            hdr.ipv4.ttl : exact @name("ttl");
            meta.x[15:15]: exact;
        }
        actions = { verdict_set; verdict_mark; verdict_drop; @defaultonly NoAction; }
        size = 3;
        default_action = NoAction();
    }
    table acl {
        key = { hdr.ipv4.src_addr: lpm; standard_metadata.ingress_port: exact; }
        actions = { verdict_set; @tableonly verdict_drop; }
    }
    table fixed {
        key = { meta.x: ternary; hdr.ipv4.isValid(): exact; }
        actions = { verdict_set; }
        const default_action = verdict_set(9w1);
    }
    apply { verdict.apply(); acl.apply(); fixed.apply(); }
}
control MyEgress(inout headers_t hdr, inout metadata_t meta,
                 inout standard_metadata_t standard_metadata) {
    action set_flag() { meta.flag = 1; }
    table acl { key = { meta.flag: exact; } actions = { set_flag; } }
    apply { acl.apply(); }
}
"""
GOOD = """\
table_set_default MyIngress.verdict NoAction
table_add verdict MyIngress.verdict_set 0x1 64 0x8000 => 3
table_add MyIngress.verdict verdict_mark 2 0x40 0x0 => 0x4 0x2e
table_add MyIngress.verdict verdict_drop_now 0x3 255 0x8000 =>
table_add MyIngress.acl verdict_set 10.0.0.0/8 0x5 => 7
table_set_default MyIngress.acl verdict_set 0x1
table_add MyIngress.fixed verdict_set 0x8000&&&0x8000 1 => 2 5
table_add MyIngress.fixed verdict_set 0x0&&&0x0 0 => 2 6
table_add MyEgress.acl set_flag 1 =>
table_set_default MyEgress.acl set_flag
"""


def test_general_declarations_and_a_good_file() -> None:
    decls = declarations(PROGRAM)
    verdict = decls.tables["MyIngress.verdict"]
    assert [(k.expr, k.width, k.mask, k.shift) for k in verdict.keys] == [
        ("meta.cls", 3, 7, 0), ("hdr.ipv4.ttl", 8, 0xFF, 0), ("meta.x[15:15]", 16, 0x8000, 15)]
    assert verdict.actions == ("MyIngress.verdict_set", "MyIngress.verdict_mark",
                               "MyIngress.verdict_drop_now", "NoAction")
    assert verdict.default_only == {"NoAction"} and verdict.size == 3
    assert decls.actions["MyIngress.verdict_mark"].params == (("port", 9), ("dscp", 6))
    acl = decls.tables["MyIngress.acl"]
    assert acl.match_type == "lpm" and acl.size == 1024 and acl.keys[1].width == 9
    fixed = decls.tables["MyIngress.fixed"]
    assert fixed.prioritised and fixed.const_default and fixed.keys[1].width == 1
    states = check_cli(GOOD, decls)
    assert [e.action for e in states["MyIngress.verdict"].entries] == [
        "MyIngress.verdict_set", "MyIngress.verdict_mark", "MyIngress.verdict_drop_now"]
    assert states["MyIngress.acl"].entries[0].keys == ((0x0A000000, 8), (5,))
    assert [e.priority for e in states["MyIngress.fixed"].entries] == [5, 6]
    assert unconfigured_tables(states, decls) == []


@pytest.mark.parametrize(("bad", "message"), [
    ("table_add MyIngress.nope verdict_set 1 2 0 => 3", "no table 'MyIngress.nope'"),
    ("table_add acl set_flag 1 =>", "no table 'acl'"),  # ambiguous: two controls have one
    ("table_add verdict set_flag 1 2 0 => ", "has no action 'set_flag'"),
    ("table_add verdict NoAction 1 2 0 =>", "@defaultonly"),
    ("table_set_default MyIngress.acl verdict_drop_now", "@tableonly"),
    ("table_set_default MyIngress.fixed verdict_set 1", "const default_action"),
    ("table_add verdict verdict_set 1 2 0x8000 => 3 4", "takes 1 parameter(s), got 2"),
    ("table_add verdict verdict_set 1 2 0x8000 3", "exactly one '=>'"),
    ("table_add verdict verdict_set 1 2 => 3", "has 3 key(s), got 2"),
    ("table_add verdict verdict_set 8 2 0x8000 => 3", "8 does not fit in bit<3>"),
    ("table_add verdict verdict_set 1 2 0x8000 => 512", "512 does not fit in bit<9>"),
    ("table_add verdict verdict_set 1 2 1 => 3", "sets bits outside meta.x[15:15]"),
    ("table_add verdict verdict_set 1 zz 0 => 3", "'zz' is not a number"),
    ("table_add verdict verdict_set 1 -1 0 => 3", "-1 does not fit"),
    ("table_add fixed verdict_set 0x1&&&0x0 1 => 2 7", "bits outside its mask"),
    ("table_add fixed verdict_set 0x1 1 => 2 7", "written value&&&mask"),
    ("table_add fixed verdict_set 0x1&&&0x1 1 => 2", "takes 1 parameter(s), got 0"),
    ("table_add fixed verdict_set 0x1&&&0x1 1 => 2 0x7", "decimal priority"),
    ("table_add fixed verdict_set 0x1&&&0x1 1 => 2 5", "priority 5 is taken by line 7"),
    ("table_add MyIngress.acl verdict_set 10.0.0.1/8 1 => 2", "bits beyond its /8 prefix"),
    ("table_add MyIngress.acl verdict_set 10.0.0.0/33 1 => 2", "lpm length 33"),
    ("table_add verdict verdict_set 0x1 64 0x8000 => 4", "already added on line 2"),
    ("table_add verdict verdict_set 4 4 0 => 4", "holds 3 entries"),
    ("", "blank line"),
    ("# a comment", "comment"),
    ("table_delete MyIngress.verdict 0", "not a command this checker reads"),
    ("table_clear", "table_clear takes one table"),
])
def test_lines_bmv2_would_reject_or_misread(bad: str, message: str) -> None:
    decls = declarations(PROGRAM)
    lines = GOOD.splitlines()
    lines.insert(8, bad)
    with pytest.raises(CliError, match="line 9: .*" + _escape(message)) as exc:
        check_cli("\n".join(lines) + "\n", decls)
    assert exc.value.line == 9


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_clear_empties_a_table_and_the_range_of_priorities() -> None:
    decls = declarations(PROGRAM)
    text = GOOD + ("table_clear MyIngress.verdict\n"
                   "table_add verdict verdict_set 0x1 64 0x8000 => 3\n")
    assert len(check_cli(text, decls)["MyIngress.verdict"].entries) == 1
    huge = GOOD + f"table_add fixed verdict_set 0x1&&&0x1 1 => 2 {2**31}\n"
    with pytest.raises(CliError, match="decimal priority"):
        check_cli(huge, decls)


def test_numbers_and_names() -> None:
    assert parse_number("0x1f", 5) == 31 and parse_number("31", 5) == 31
    assert parse_number("10.0.0.1", 32) == 0x0A000001
    assert parse_number("00:11:22:33:44:55", 48) == 0x001122334455
    with pytest.raises(ValueError, match="does not fit"):
        parse_number("0x20", 5)
    names = suffix_names(["MyIngress.acl", "MyEgress.acl", "MyIngress.verdict"])
    assert names["verdict"] == "MyIngress.verdict" and "acl" not in names
    assert names["MyEgress.acl"] == "MyEgress.acl"


def test_cli_and_entries_json_must_agree(tmp_path) -> None:
    p4, cli, runtime = emit_bmv2(PIPELINES["full"](), tmp_path)
    decls = declarations(p4)
    compare_with_runtime(check_cli(cli, decls), decls, runtime)
    lines = cli.splitlines()
    # swap the priorities of the first two entries of a ternary table: same entries, other order
    adds = [i for i, ln in enumerate(lines) if ln.startswith("table_add MyIngress.enc_len")]
    a, b = lines[adds[0]].rsplit(" ", 1), lines[adds[1]].rsplit(" ", 1)
    lines[adds[0]], lines[adds[1]] = f"{a[0]} {b[1]}", f"{b[0]} {a[1]}"
    with pytest.raises(ValueError, match="enc_len: .* differ"):
        compare_with_runtime(check_cli("\n".join(lines) + "\n", decls), decls, runtime)
    changed = json.loads(json.dumps(runtime))
    verdict = next(t for t in changed["tables"] if t["table"].endswith("verdict"))
    verdict["default_action"]["params"]["verdict_port"] = "0x9"
    with pytest.raises(ValueError, match="verdict: default"):
        compare_with_runtime(check_cli(cli, decls), decls, changed)
