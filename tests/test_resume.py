"""--resume: continues exactly, refuses a study made with another spec, says when there is none."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pandas as pd
import pytest
from typer.testing import CliRunner

from homunculus.cli import app
from homunculus.compile import CompileOptions, compile_plan
from homunculus.errors import ResumeError
from homunculus.frontend.yaml_spec import plan_from_yaml
from homunculus.outputs import OutputError
from homunculus.search import study as study_mod
from homunculus.search.study import (
    Budget,
    open_study,
    restore_sampler_state,
    sampler_state,
)

from conftest import EXAMPLE_DIR, spec_text, write_spec

runner = CliRunner()


def compile_yaml(spec: Path, out: Path, **kw):
    return compile_plan(plan_from_yaml(spec), CompileOptions(out, progress=False, **kw))


def study_of(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="study_test_spec", storage=f"sqlite:///{out / 'study.db'}")


def test_resume_without_a_study_says_so(tmp_path, example_csv) -> None:
    spec = write_spec(tmp_path / "s.yaml", spec_text(example_csv, algorithms="[dt]"))
    with pytest.raises(OutputError, match="holds no study to resume"):
        compile_yaml(spec, tmp_path / "out", trials=2, resume=True)
    assert not (tmp_path / "out").exists()
    result = runner.invoke(app, ["compile", str(spec), "-o", str(tmp_path / "out"), "--resume",
                                 "--no-progress"])
    assert result.exit_code == 2 and "no study to resume" in result.output


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    """A directory with iot.csv and OUT compiled from it (two dt trials)."""
    root = tmp_path_factory.mktemp("compiled")
    frame = pd.read_csv(EXAMPLE_DIR / "iot_features.csv").head(1500)
    frame.to_csv(root / "iot.csv", index=False)
    spec = write_spec(root / "s.yaml", spec_text(root / "iot.csv", algorithms="[dt]"))
    compile_yaml(spec, root / "out", trials=2)
    return root


@pytest.mark.parametrize("change,needle", [
    (("[dt]", "[dt, gnb]"), "families"),
    (("  seed: 0", "  seed: 3"), "seed"),
    (("resources: {stages: 12}", "resources: {stages: 11}"), "limits"),
    (("{name: proto, width: 8}", "{name: proto, width: 9}"), "features"),
    (("target: tofino", "target: bmv2"), "target"),
])
def test_resume_with_another_spec_is_refused_and_adds_no_trial(tmp_path, compiled, change,
                                                               needle) -> None:
    example_csv = tmp_path / "iot.csv"
    shutil.copy(compiled / "iot.csv", example_csv)
    shutil.copytree(compiled / "out", tmp_path / "out")
    text = spec_text(example_csv, algorithms="[dt]")
    before = (tmp_path / "out" / "study.db").read_bytes()
    changed = write_spec(tmp_path / "s2.yaml", text.replace(*change))
    with pytest.raises(ResumeError, match=needle) as exc:
        compile_yaml(changed, tmp_path / "out", trials=3, resume=True)
    assert "differs in" in str(exc.value) and "without --resume" in str(exc.value)
    assert (tmp_path / "out" / "study.db").read_bytes() == before
    assert not (tmp_path / ".out.partial").exists()


def test_resume_refuses_changed_data(tmp_path, example_csv) -> None:
    spec = write_spec(tmp_path / "s.yaml", spec_text(example_csv, algorithms="[dt]"))
    compile_yaml(spec, tmp_path / "out", trials=2)
    lines = example_csv.read_text().splitlines()
    example_csv.write_text("\n".join(lines[:-10]) + "\n")
    with pytest.raises(ResumeError, match=r"data \(the training or validation data differ\)"):
        compile_yaml(spec, tmp_path / "out", trials=3, resume=True)


def test_ctrl_c_keeps_the_search_and_resume_equals_an_uninterrupted_one(tmp_path, example_csv,
                                                                        monkeypatch) -> None:
    spec = write_spec(tmp_path / "s.yaml", spec_text(example_csv, algorithms="[dt, gnb]"))
    passed = {"n": 0}

    def interrupt(name: str) -> None:
        if name == "after-trial":
            passed["n"] += 1
            if passed["n"] == 3:
                raise KeyboardInterrupt

    monkeypatch.setattr(study_mod, "checkpoint", interrupt)
    with pytest.raises(KeyboardInterrupt):
        compile_yaml(spec, tmp_path / "a", trials=6)
    assert not (tmp_path / "a").exists() and (tmp_path / ".a.partial" / "study.db").is_file()
    monkeypatch.undo()
    a = compile_yaml(spec, tmp_path / "a", trials=6, resume=True)
    b = compile_yaml(spec, tmp_path / "b", trials=6)
    assert [t.params for t in study_of(tmp_path / "a").trials] == \
        [t.params for t in study_of(tmp_path / "b").trials]
    assert a.params == b.params and a.report["trials"] == b.report["trials"]


def test_a_stale_running_trial_is_failed_and_not_counted(tmp_path) -> None:
    db = tmp_path / "s.db"
    study = open_study(db, "s", ("metric",), "tpe", 0, Budget(3), resume=False)
    study.ask()  # a trial whose process died
    study = open_study(db, "s", ("metric",), "tpe", 0, Budget(3), resume=True)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.FAIL]
    assert study.trials[0].user_attrs["failed"] == "the compile running it died"


def test_sampler_state_round_trip_and_rejects_garbage() -> None:
    a = optuna.samplers.TPESampler(seed=1)
    b = optuna.samplers.TPESampler(seed=2)
    a._rng.rng.random(5)
    assert restore_sampler_state(b, sampler_state(a))
    assert b._rng.rng.random() == a._rng.rng.random()
    for bad in ([], [{"key": "!!", "pos": 0, "has_gauss": 0, "gauss": 0.0}] * 2,
                [{"key": "AAAA", "pos": 0, "has_gauss": 0, "gauss": 0.0}] * 2, [1, 2]):
        assert not restore_sampler_state(b, bad)  # type: ignore[arg-type]
