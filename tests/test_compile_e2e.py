"""End to end: spec -> search -> artefacts in OUT -> twin agreement, for both switch targets."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import optuna
import pytest

from homunculus.compile import (
    CompileOptions,
    build_problem,
    choose_candidates,
    compile_plan,
    verify,
)
from homunculus.errors import InfeasibleError, SpecError, VerificationError
from homunculus.frontend.yaml_spec import plan_from_yaml
from homunculus.search.problem import evaluate
from homunculus.search.study import Budget, open_study, run_search
from homunculus.targets.p4.check import check_program

from conftest import spec_text, write_spec


def compile_yaml(spec: Path, out: Path, **kw):
    return compile_plan(plan_from_yaml(spec), CompileOptions(out, progress=False, **kw))


@pytest.mark.parametrize("target,extra", [("tofino", "bfrt_load.py"),
                                          ("bmv2", "simple_switch_cli.txt")])
def test_compile_writes_verified_artefacts(tmp_path, example_csv, target, extra) -> None:
    spec = write_spec(tmp_path / "s.yaml",
                      spec_text(example_csv, algorithms="[dt, rf, gnb]", target=target))
    out = tmp_path / "out"
    result = compile_yaml(spec, out, trials=5)
    for rel in ("p4/hmn_test_spec.p4", "runtime/entries.json", f"runtime/{extra}",
                "model/float_model.joblib", "model/quantised.json", "resources.json",
                "report.json", "report.html", "study.db"):
        assert (out / rel).is_file(), rel
    p4 = (out / "p4/hmn_test_spec.p4").read_text()
    assert ("#include <tna.p4>" in p4) == (target == "tofino")
    assert ("#include <v1model.p4>" in p4) == (target == "bmv2")
    check_program(p4, json.loads((out / "runtime/entries.json").read_text()))
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["agreement"] == 1.0
    assert report["metrics"]["pipeline"] == report["metrics"]["quantised"]
    assert len(report["trials"]) == 5 and report["resources"]["feasible"]
    assert result.family in ("dt", "rf", "gnb")
    assert not list(tmp_path.glob(".out.staging*")), "staging directory left behind"


def test_resume_continues_the_stored_study(tmp_path, example_csv) -> None:
    spec = write_spec(tmp_path / "s.yaml", spec_text(example_csv, algorithms="[dt]"))
    out = tmp_path / "out"
    compile_yaml(spec, out, trials=3)
    compile_yaml(spec, out, trials=5, resume=True)
    study = optuna.load_study(study_name="study_test_spec",
                              storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 5
    compile_yaml(spec, out, trials=2)  # without --resume the search starts afresh
    study = optuna.load_study(study_name="study_test_spec",
                              storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 2


def test_same_seed_same_result(tmp_path, example_csv) -> None:
    spec = write_spec(tmp_path / "s.yaml", spec_text(example_csv, algorithms="[dt, xgb]"))
    a = compile_yaml(spec, tmp_path / "a", trials=4)
    b = compile_yaml(spec, tmp_path / "b", trials=4)
    assert a.params == b.params and a.metrics == b.metrics
    assert (tmp_path / "a/runtime/entries.json").read_text() == \
        (tmp_path / "b/runtime/entries.json").read_text()


def test_multi_objective_search_records_pareto_inputs(tmp_path, example_csv) -> None:
    text = spec_text(example_csv, algorithms="[dt, gnb]").replace(
        "metric: f1_macro", "metric: f1_macro\n  objectives: [metric, entries]")
    spec = write_spec(tmp_path / "s.yaml", text)
    result = compile_yaml(spec, tmp_path / "out", trials=4)
    assert result.report["search"]["objectives"] == ["metric", "entries"]
    assert all(t["entries"] is not None for t in result.report["trials"])


def test_infeasible_trials_are_constraints_not_scores(tmp_path, example_csv) -> None:
    text = spec_text(example_csv, algorithms="[rf]").replace(
        "resources: {stages: 12}", "resources: {stages: 12, entries: 150}")
    spec = write_spec(tmp_path / "s.yaml", text)
    problem, requested = build_problem(plan_from_yaml(spec), 0)
    _, allowed = choose_candidates(problem, requested)
    study = open_study(tmp_path / "s.db", "s", ("metric",), "tpe", 0, Budget(6), resume=False)
    with contextlib.suppress(InfeasibleError):  # all may be infeasible; the study is inspected
        run_search(problem, allowed, ("metric",), Budget(6), study)
    assert len(study.trials) == 6
    for t in study.trials:
        assert t.constraints, "every trial carries its constraint values"
        feasible = all(v <= 0 for v in t.constraints.values())
        assert feasible == t.user_attrs["feasible"]
        assert feasible == (t.user_attrs["usage"]["entries"] <= 150)


def test_verification_catches_a_tampered_entry(tmp_path, example_csv) -> None:
    spec = write_spec(tmp_path / "s.yaml", spec_text(example_csv, algorithms="[dt]"))
    out = tmp_path / "out"
    result = compile_yaml(spec, out, trials=2)
    problem, _ = build_problem(plan_from_yaml(spec), 0)
    ev = evaluate(problem, result.family, result.params)
    verify(problem, ev, out)  # the real entries agree
    runtime = json.loads((out / "runtime/entries.json").read_text())
    target = runtime["tables"][-1]  # the deciding table: its actions carry the class
    for action in [target["default_action"], *(e["action"] for e in target["entries"])]:
        value = action["params"]["class_id"]
        action["params"]["class_id"] = hex(int(value, 16) ^ 1)  # every class moves
    (out / "runtime/entries.json").write_text(json.dumps(runtime))
    with pytest.raises(VerificationError, match="disagrees with the quantised model"):
        verify(problem, ev, out)


def test_hostile_names_cannot_reach_generated_code(tmp_path, example_csv) -> None:
    import pandas as pd

    frame = pd.read_csv(example_csv)
    evil = "x */ } control evil { apply { } } /*\n#include <bad>"
    frame["device"] = frame["device"].replace({"camera": evil})
    frame = frame.rename(columns={"proto": "pr;oto\n}"})
    frame.to_csv(example_csv, index=False)
    text = spec_text(example_csv, algorithms="[dt]").replace("{name: proto,",
                                                            '{name: "pr;oto\\n}",')
    spec = write_spec(tmp_path / "s.yaml", text)
    compile_yaml(spec, tmp_path / "out", trials=2)
    p4 = (tmp_path / "out/p4/hmn_test_spec.p4").read_text()
    code = "\n".join(line.split("//")[0] for line in p4.splitlines())
    for needle in ("evil", "#include <bad>", "pr;oto", "/*", "*/"):
        assert needle not in code
    assert all(line.lstrip().startswith(("//", "#include <")) or "//" not in line
               for line in p4.splitlines())  # hostile text only ever sits in whole-line comments
    assert "#include <bad>" not in [line.strip() for line in p4.splitlines()]


def test_time_budget_alone_stops_the_search(tmp_path, example_csv) -> None:
    text = spec_text(example_csv, algorithms="[dt]").replace("  trials: 4", "  trials: null")
    spec = write_spec(tmp_path / "s.yaml", text)
    result = compile_yaml(spec, tmp_path / "out", seconds=1.5)
    assert result.report["search"]["seconds"] < 30 and len(result.report["trials"]) >= 1


def test_profile_overrides_change_feasibility(tmp_path, example_csv) -> None:
    text = spec_text(example_csv, algorithms="[dt]").replace(
        "  target: tofino", "  target: tofino\n  profile: {stages: 1}").replace(
        "resources: {stages: 12}", "resources: {}")
    spec = write_spec(tmp_path / "s.yaml", text)
    with pytest.raises(InfeasibleError, match=r"stages \d > limit 1"):
        compile_yaml(spec, tmp_path / "out", trials=2)
    bad = write_spec(tmp_path / "bad.yaml", text.replace("{stages: 1}", "{stagez: 1}"))
    with pytest.raises(SpecError) as exc:
        compile_yaml(bad, tmp_path / "out", trials=2)
    assert exc.value.field == "platform.profile" and "stagez" in str(exc.value)
    assert exc.value.line == next(i for i, line in enumerate(text.splitlines(), 1)
                                  if "profile:" in line)


def test_mlp_is_ruled_out_on_switches_with_a_reason(tmp_path, example_csv) -> None:
    spec = write_spec(tmp_path / "s.yaml", spec_text(example_csv, algorithms="[dt, mlp]"))
    result = compile_yaml(spec, tmp_path / "out", trials=2)
    verdicts = {c["family"]: c for c in result.report["candidates"]}
    assert not verdicts["mlp"]["allowed"] and "match-action" in verdicts["mlp"]["reason"]
    assert verdicts["dt"]["allowed"] and result.family == "dt"
    only_mlp = write_spec(tmp_path / "m.yaml", spec_text(example_csv, algorithms="[mlp]"))
    with pytest.raises(InfeasibleError, match="mlp: its multiply-accumulate layers"):
        compile_yaml(only_mlp, tmp_path / "out2", trials=2)
