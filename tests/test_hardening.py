"""Hostile and careless input gets a located error (exit 2) before the search, never a traceback,
a hang or a blow-up: YAML structure, numbers, fractions, labels, transport mixes, terminal and
plot strings, C comments, and the O(n log n) merge pass."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from adversarial import naive_merge_tables, score_table
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from homunculus import compile as compile_mod
from homunculus.cli import app
from homunculus.compile import CompileOptions, compile_plan
from homunculus.display import message, shown
from homunculus.errors import HomunculusError, SpecError
from homunculus.frontend.yaml_spec import MAX_DEPTH, plan_from_yaml
from homunculus.ir.names import safe_comment
from homunculus.passes.merge import merge_tables
from homunculus.report.render import plot_confusion

from conftest import spec_text, tree, write_spec

runner = CliRunner()


def within(seconds: float, fn, *args):  # noqa: ANN001, ANN201
    """Run ``fn`` in a thread; fail if it does not finish in time; return or re-raise."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"{fn.__name__} did not finish within {seconds} s"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


# ----------------------------------------------------------------------------- YAML


@pytest.mark.parametrize("text,needle,line", [
    ("name: a\nname: b\n", "key 'name' appears twice", 2),
    ("name: x\nmodel: {name: m}\nplatform: {target: c}\nmodel: {name: n}\n", "appears twice", 4),
    ("a: &x [*x]\n", "recursive YAML alias", None),
    ("a: &x {b: *x}\n", "recursive YAML alias", None),
    ("a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n", "nests deeper", 1),
    ("a: " + "[" * 100_000 + "\n", "nest", 1),  # libyaml has its own bound too
])
def test_yaml_structure_is_checked_before_expansion(tmp_path, text, needle, line) -> None:
    spec = write_spec(tmp_path / "s.yaml", text)
    with pytest.raises(SpecError, match=needle) as exc:
        within(30, plan_from_yaml, spec)
    if line is not None:
        assert exc.value.line == line


def test_billion_laughs_is_refused_at_once(tmp_path) -> None:
    rows = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    rows += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    spec = write_spec(tmp_path / "s.yaml", "\n".join(rows) + "\n")
    with pytest.raises(SpecError, match="expand to more than"):
        within(30, plan_from_yaml, spec)


def test_small_aliases_are_fine(tmp_path, example_csv) -> None:
    text = spec_text(example_csv).replace("  constraints:\n    resources: {stages: 12}",
                                          "  constraints:\n    resources: &r {stages: 12}")
    plan = plan_from_yaml(write_spec(tmp_path / "s.yaml", text))
    assert plan.platform.constraints.resources.stages == 12


@pytest.mark.parametrize("kind", ["fifo", "dir", "big", "binary", "tag", "two documents"])
def test_unreadable_or_hostile_spec_files(tmp_path, kind) -> None:
    spec = tmp_path / "s.yaml"
    if kind == "fifo":
        os.mkfifo(spec)
    elif kind == "dir":
        spec.mkdir()
    elif kind == "big":
        with open(spec, "wb") as f:
            f.truncate(64 << 20)
    elif kind == "binary":
        spec.write_bytes(b"name: \xff\xfe\n")
    elif kind == "tag":
        spec.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    else:
        spec.write_text("name: a\n---\nname: b\n")
    result = within(30, runner.invoke, app, ["compile", str(spec), "-o",
                                             str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and str(spec) in result.output.replace("\n", "")


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("edit,field", [
    (("  seed: 0", "  seed: -1"), "search.seed"),
    (("  seed: 0", "  seed: 4294967296"), "search.seed"),
    (("resources: {stages: 12}", "resources: {stages: 12, tcam_kbit: .nan}"),
     "platform.constraints.resources.tcam_kbit"),
    (("resources: {stages: 12}", "resources: {stages: 12, latency_ns: .inf}"),
     "platform.constraints.resources.latency_ns"),
    (("  target: tofino", "  target: tofino\n  profile: {stages: .nan}"), "platform.profile"),
    (("  target: tofino", "  target: tofino\n  profile: {stages: 0}"), "platform.profile"),
    (("  target: tofino", "  target: tofino\n  profile: {stages: 1.0e+30}"), "platform.profile"),
    (("  target: tofino", "  target: tofino\n  profile: {supports_range: 3}"),
     "platform.profile"),
    (("  target: tofino", "  target: tofino\n  profile: {pipeline_gpps: -1}"),
     "platform.profile"),
    (("  label: device", "  label: device\n  test_fraction: 1.0e-9"), "data.test_fraction"),
    (("  label: device", "  label: device\n  test_fraction: 0.9999999"), "data.test_fraction"),
    (("  seed: 0", "  seed: 0\n  cv_folds: 1\n  validation_fraction: 1.0e-9"),
     "search.validation_fraction"),
    (("  seed: 0", "  seed: 0\n  cv_folds: 1\n  validation_fraction: 0.9999999"),
     "search.validation_fraction"),
])
def test_bad_numbers_are_located_errors_before_the_search(tmp_path, example_csv, monkeypatch,
                                                          edit, field) -> None:
    monkeypatch.setattr(compile_mod, "run_search", lambda *a, **k: pytest.fail("searched"))
    spec = write_spec(tmp_path / "s.yaml", spec_text(example_csv).replace(*edit))
    with pytest.raises(HomunculusError) as exc:
        compile_plan(plan_from_yaml(spec), CompileOptions(tmp_path / "out", progress=False))
    assert isinstance(exc.value, SpecError) and exc.value.field == field, str(exc.value)
    assert exc.value.line is not None
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


@pytest.mark.parametrize("args,needle", [
    (["--seed", "-1"], "--seed must be in"), (["--seed", str(2**40)], "--seed must be in"),
    (["--seconds", "nan"], "--seconds must be"), (["--seconds", "inf"], "--seconds must be"),
    (["--seconds", "-3"], "--seconds must be"), (["--trials", "0"], "--trials must be in"),
])
def test_bad_command_line_numbers(tmp_path, example_csv, args, needle) -> None:
    spec = write_spec(tmp_path / "s.yaml", spec_text(example_csv))
    result = runner.invoke(app, ["compile", str(spec), "-o", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and needle in result.output


@pytest.mark.parametrize("args,needle", [
    (["scenario", "anomaly", "--flows", "0"], "--flows must be in"),
    (["scenario", "anomaly", "--flows", "-5"], "--flows must be in"),
    (["scenario", "anomaly", "--seconds", "nan"], "--seconds must be"),
    (["scenario", "anomaly", "--seconds", "0"], "--seconds must be"),
    (["scenario", "anomaly", "--seed", "-1"], "--seed must be in"),
    (["scenario", "nope"], "unknown scenario"),
    (["scenario", "anomaly", "--flows", "3", "--pcap", "/proc/x.pcap"], "/proc/x.pcap"),
    (["example-data", "{tmp}/x.csv", "--rows", "0"], "--rows must be in"),
    (["example-data", "{tmp}/x.csv", "--rows", "-1"], "--rows must be in"),
    (["example-data", "/proc/nope/x.csv", "--rows", "10"], "/proc/nope"),
])
def test_scenario_and_example_data_arguments(tmp_path, args, needle) -> None:
    args = [a.format(tmp=tmp_path) for a in args]
    if args[0] == "scenario" and "--pcap" not in args:
        args += ["--pcap", str(tmp_path / "s.pcap")]
    if args[0] == "scenario":
        args += ["--labels", str(tmp_path / "s.csv")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and needle in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# ----------------------------------------------------------------------------- data


@pytest.mark.parametrize("cell", ["", "nan", "NaN", "None"])
def test_missing_labels_are_errors_not_a_class_called_nan(tmp_path, example_csv, cell) -> None:
    frame = pd.read_csv(example_csv)
    frame["device"] = frame["device"].astype(object)
    frame.loc[7, "device"] = cell
    frame.to_csv(example_csv, index=False)
    spec = write_spec(tmp_path / "s.yaml", spec_text(example_csv))
    with pytest.raises(SpecError, match=r"missing \(empty or NaN\) in data row 7 \(line 9\)"):
        compile_plan(plan_from_yaml(spec), CompileOptions(tmp_path / "out", progress=False))


@pytest.mark.parametrize("path", ["/dev/zero", "fifo"])
def test_special_data_files_are_refused_without_blocking(tmp_path, example_csv, path) -> None:
    if path == "fifo":
        path = str(tmp_path / "d.csv")
        os.mkfifo(path)
    spec = write_spec(tmp_path / "s.yaml", spec_text(Path(path)))
    result = within(30, runner.invoke, app, ["compile", str(spec), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not a regular file" in result.output


@pytest.mark.parametrize("target,fails", [("bmv2", True), ("xdp", True), ("c", False)])
def test_tcp_fields_with_feature_header_features_fail_before_the_search(
        tmp_path, example_csv, monkeypatch, target, fails) -> None:
    text = spec_text(example_csv, target=target).replace(
        "{name: dst_port, width: 16}", "{name: dst_port, width: 16, field: tcp.dst_port}")
    if target != "tofino":
        text = text.replace("resources: {stages: 12}", "resources: {}")
    spec = write_spec(tmp_path / "s.yaml", text)
    plan = plan_from_yaml(spec)
    problem, _ = compile_mod.build_problem(plan, 0) if not fails else (None, None)
    if fails:
        with pytest.raises(SpecError, match="reads TCP field tcp.dst_port") as exc:
            compile_mod.build_problem(plan, 0)
        assert exc.value.field == "data.features[2]"  # proto: carried in the feature header
    else:
        assert problem is not None


# ----------------------------------------------------------------------------- strings


def test_terminal_output_is_escaped_and_bounded(tmp_path, example_csv) -> None:
    for name in ["[/]x [bold]y", "\x1b[31mred\x1b[0m\x07", "n" * 100_000]:
        text = spec_text(example_csv, algorithms="[dt]").replace("name: test-spec",
                                                                 f"name: {name!r}")
        spec = write_spec(tmp_path / "s.yaml", text.replace("name: '", "name: \"", 1)
                          .replace("'\n", "\"\n", 1).replace("\\x1b", "\\e"))
        result = runner.invoke(app, ["compile", str(spec), "-o", str(tmp_path / "o"),
                                     "--no-progress", "--trials", "1"])
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.output and "\x07" not in result.output
        assert len(result.output) < 2000
        if name.startswith("["):
            assert "[/]x [bold]y" in result.output


def test_messages_escape_controls_and_shorten() -> None:
    assert shown("a\x1b[2Jb\nc") == "a\\x1b[2Jb\\x0ac"
    assert message("line1\nline2\x9b") == "line1\nline2\\x9b"
    assert shown("x" * 1000, 10) == "x" * 10 + "... (990 more characters)"
    assert shown("\u202egnp.exe") == "\\u202egnp.exe"


@given(st.text(alphabet=st.sampled_from("?/=()!'<>-\\*\n\x00x"), max_size=40))
def test_comments_never_hold_trigraphs_or_delimiters(text) -> None:
    out = safe_comment(text)
    assert "??" not in out and "*/" not in out and "/*" not in out and "\\" not in out
    assert all(" " <= ch <= "~" for ch in out)


def test_trigraph_class_labels_build_under_werror(tmp_path, example_csv) -> None:
    frame = pd.read_csv(example_csv)
    frame["device"] = frame["device"].replace({"camera": "cam??/", "plug": "p??=l??(ug"})
    frame.to_csv(example_csv, index=False)
    text = spec_text(example_csv, algorithms="[dt]", target="c").replace(
        "resources: {stages: 12}", "resources: {}")
    result = compile_plan(plan_from_yaml(write_spec(tmp_path / "s.yaml", text)),
                          CompileOptions(tmp_path / "out", trials=1, progress=False))
    assert "cam??/" in result.report["class_labels"]  # kept in the report, not in the C


def test_long_labels_and_many_classes_cost_nothing_in_plots() -> None:
    label = "L" * 5000
    report = {"confusion_matrix": {"labels": [label, "b"], "matrix": [[3, 1], [0, 5]]}}
    svg = plot_confusion(report)
    assert label not in svg and "LLLLLLLLLLL\u2026" in svg and len(svg) < 100_000
    many = {"confusion_matrix": {"labels": [str(i) for i in range(500)],
                                 "matrix": np.eye(500, dtype=int).tolist()}}
    assert plot_confusion(many) == ""


# ----------------------------------------------------------------------------- bounds


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 6), min_size=1, max_size=9),
       max_tables=st.integers(0, 6), max_entries=st.sampled_from([4, 16, 64, 4096]))
def test_merge_pass_equals_the_quadratic_specification(sizes, max_tables, max_entries) -> None:
    tables = [score_table(i, n) for i, n in enumerate(sizes)]
    fast, slow = merge_tables(tables, max_tables, max_entries), naive_merge_tables(
        tables, max_tables, max_entries)
    assert [t.name for t in fast] == [t.name for t in slow]
    for a, b in zip(fast, slow, strict=True):
        assert a.matches == b.matches and np.array_equal(a.scores, b.scores)


def test_nothing_outside_out_is_touched_by_a_compile(tmp_path, example_csv) -> None:
    spec = write_spec(tmp_path / "s.yaml", spec_text(example_csv, algorithms="[dt]"))
    before = tree(tmp_path)
    result = runner.invoke(app, ["compile", str(spec), "-o", str(tmp_path / "out"),
                                 "--no-progress", "--trials", "1"])
    assert result.exit_code == 0, result.output
    after = {k: v for k, v in tree(tmp_path).items() if not k.startswith("out")}
    assert after == before


def test_a_nul_in_a_spec_path_is_a_located_error(tmp_path, example_csv) -> None:
    text = spec_text(example_csv).replace(f"path: {example_csv}", f'path: "{example_csv}\\0x"')
    spec = write_spec(tmp_path / "s.yaml", text)
    with pytest.raises(SpecError, match="NUL") as exc:
        plan_from_yaml(spec)
    assert exc.value.field == "data.path"
