"""``homunculus evaluate``: the compile over several seeded splits, and the report's CV figures."""

from __future__ import annotations

import json
import re
import statistics

import pytest
from typer.testing import CliRunner

from homunculus.cli import app
from homunculus.evaluate import evaluate_spec

from conftest import spec_text, write_spec


def test_evaluate_compiles_each_split_and_summarises(tmp_path, example_csv) -> None:
    spec = write_spec(tmp_path / "s.yaml", spec_text(example_csv, "[dt]", trials=2))
    result = evaluate_spec(spec, 2, first_seed=3)
    assert [s.seed for s in result.splits] == [3, 4]
    for s in result.splits:
        assert s.agreement == 1.0 and s.family == "dt"
        assert set(s.per_class_f1) == {"camera", "hub", "plug", "speaker", "thermostat"}
    summary = result.summary()
    pipeline = [s.pipeline for s in result.splits]
    assert summary["pipeline"]["mean"] == statistics.fmean(pipeline)
    assert summary["pipeline"]["std"] == statistics.stdev(pipeline)
    # different seeds draw different test sets: the two splits are not the same measurement
    assert result.splits[0].per_class_f1 != result.splits[1].per_class_f1
    assert summary["per_class_f1"]["hub"]["min"] <= summary["per_class_f1"]["hub"]["mean"]


def test_evaluate_cli_prints_and_writes_json(tmp_path, example_csv) -> None:
    spec = write_spec(tmp_path / "s.yaml", spec_text(example_csv, "[dt]", trials=2))
    out = tmp_path / "eval.json"
    run = CliRunner().invoke(app, ["evaluate", str(spec), "--splits", "2", "--json", str(out)])
    assert run.exit_code == 0, run.output
    assert "over 2 splits" in run.output and "camera" in run.output
    data = json.loads(out.read_text())
    assert len(data["splits"]) == 2 and data["summary"]["splits"] == 2
    assert not list(tmp_path.glob("hmn-evaluate-*"))


def test_evaluate_refuses_a_fixed_test_set(tmp_path, example_csv) -> None:
    text = spec_text(example_csv, "[dt]").replace("  label: device\n",
                                                   f"  label: device\n  test_path: {example_csv}\n")
    spec = write_spec(tmp_path / "s.yaml", text)
    run = CliRunner().invoke(app, ["evaluate", str(spec), "--splits", "2"])
    assert run.exit_code == 2
    assert "data.test_path" in run.output and "s.yaml:" in run.output


@pytest.mark.parametrize("args, message", [
    (["--splits", "0"], "--splits must be in 1..1000"),
    (["--splits", "2", "--seed", str(2**32 - 1)], "--seed must be in"),
    (["--seconds", "nan"], "--seconds must be a positive number"),
])
def test_evaluate_checks_its_options(tmp_path, example_csv, args, message) -> None:
    spec = write_spec(tmp_path / "s.yaml", spec_text(example_csv, "[dt]", trials=2))
    run = CliRunner().invoke(app, ["evaluate", str(spec), *args])
    assert run.exit_code == 2 and message in run.output, run.output


def test_evaluate_refuses_a_schedule_and_prints_names_as_text(tmp_path, example_csv) -> None:
    schedule = tmp_path / "sched.yaml"
    schedule.write_text("name: two\nmodels: []\nschedule: a\nplatform: {target: tofino}\n")
    run = CliRunner().invoke(app, ["evaluate", str(schedule), "--splits", "1"])
    assert run.exit_code == 2 and "Traceback" not in run.output
    text = re.sub(r"^name: (.*)$", r"name: '[/]x \1'", spec_text(example_csv, "[dt]", trials=1),
                  count=1, flags=re.M)
    spec = write_spec(tmp_path / "m.yaml", text)
    run = CliRunner().invoke(app, ["evaluate", str(spec), "--splits", "1"])
    assert run.exit_code == 0, run.output
    assert "[/]x" in run.output  # printed as text, not read as markup


def test_report_gives_cv_and_test_figures(tmp_path, example_csv) -> None:
    from homunculus.compile import CompileOptions, compile_plan
    from homunculus.frontend.yaml_spec import plan_from_yaml

    spec = write_spec(tmp_path / "s.yaml", spec_text(example_csv, "[dt]", trials=2))
    result = compile_plan(plan_from_yaml(spec), CompileOptions(tmp_path / "out", progress=False))
    m = result.metrics
    assert m["cv"]["folds"] == 3 and "stratified" in m["cv"]["scheme"]
    assert m["cv"]["metric"] == m["validation_quantised"]
    assert abs(m["cv"]["mean"] - statistics.fmean(m["cv_folds"])) < 1e-5
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Cross-validated" in html and "refit on all training data" in html
    assert set(m["per_class_f1"]) == set(result.report["class_labels"])
