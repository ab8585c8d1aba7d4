"""A search shared by processes: a coordinator (compile --storage --study) and workers, on a real
PostgreSQL server the tests start themselves (tests/postgres.py), and on a journal file."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from homunculus.cli import app
from homunculus.search.distributed import (
    BEAT_ATTR,
    SETTINGS_ATTR,
    SHARED_ATTR,
    fail_stale_journal,
)
from homunculus.search.storage import open_storage, parse_storage

from conftest import spec_text, write_spec
from postgres import missing_reason, postgres_server

HOMUNCULUS = str(Path(sys.executable).with_name("homunculus"))
COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
TIMEOUT_S = 420


@pytest.fixture(scope="module")
def pg_dsn():
    reason = missing_reason()
    if reason is not None:  # CI installs it (scripts/install.sh): never skip silently
        pytest.fail(reason)
    with postgres_server("hmn-pg-test-") as dsn:
        yield dsn


def load(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(parse_storage(storage)))


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([HOMUNCULUS, *args, "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)


def finish(procs: list[subprocess.Popen]) -> list[str]:
    outputs = []
    for p in procs:
        out, _ = p.communicate(timeout=TIMEOUT_S)
        outputs.append(out)
    return outputs


def shared_run(tmp_path: Path, csv: Path, storage: str, study: str, trials: int,
               workers: int, heartbeat: int = 2) -> tuple[subprocess.Popen,
                                                          list[subprocess.Popen], Path, Path]:
    """Start ``workers`` workers (they wait for the study), then the coordinator."""
    spec = write_spec(tmp_path / "spec.yaml", spec_text(csv, trials=trials))
    out = tmp_path / "out"
    procs = [start("worker", str(spec), "--storage", storage, "--study", study, "--wait", "300")
             for _ in range(workers)]
    coordinator = start("compile", str(spec), "-o", str(out), "--storage", storage, "--study",
                        study, "--heartbeat", str(heartbeat))
    return coordinator, procs, spec, out


def check_complete(storage: str, name: str, trials: int, out: Path) -> optuna.Study:
    """The study counts exactly ``trials`` trials, none is left running, and OUT reports them."""
    study = load(storage, name)
    states = [t.state for t in study.trials]
    assert sum(s in COUNTED for s in states) == trials, states
    assert optuna.trial.TrialState.RUNNING not in states
    report = json.loads((out / "report.json").read_text())
    assert report["search"]["trials"] == trials
    copy = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")
    assert len(copy.get_trials(states=COUNTED)) == trials
    return study


def test_three_workers_finish_a_study_together(tmp_path, example_csv, pg_dsn) -> None:
    # 40 trials of a tenth of a second: enough that every worker joins before they are spent
    coordinator, workers, _, out = shared_run(tmp_path, example_csv, pg_dsn, "three", 40, 3)
    outputs = finish([coordinator, *workers])
    assert [p.returncode for p in (coordinator, *workers)] == [0, 0, 0, 0], outputs
    study = check_complete(pg_dsn, "three", 40, out)
    host = socket.gethostname()
    ran = {t.user_attrs["worker"] for t in study.get_trials(states=COUNTED)}
    for w in workers:  # every worker ran trials of the study
        assert f"{host}:{w.pid}" in ran, (ran, outputs)
    report = json.loads((out / "report.json").read_text())
    assert report["search"]["shared"]["study"] == "three"
    assert "worker done" in outputs[1]


def running_trial_of(storage: optuna.storages.BaseStorage, name: str, mark: str) -> int | None:
    """The number of a trial the worker ``mark`` is running with its configuration drawn."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # not created yet
        return None
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get("worker") == mark and "family" in t.params:
            return t.number
    return None


def kill_mid_trial(victim: subprocess.Popen, storage_url: str, name: str) -> int | None:
    """SIGKILL ``victim`` while it runs a trial, and return that trial's number.

    Trials here take a tenth of a second, so the worker is frozen (SIGSTOP) first and the
    trial checked again: a trial it finished between the look and the kill is not counted as
    killed, and the worker resumes."""
    mark = f"{socket.gethostname()}:{victim.pid}"
    storage = open_storage(parse_storage(storage_url))
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and victim.poll() is None:
        if running_trial_of(storage, name, mark) is not None:
            os.kill(victim.pid, signal.SIGSTOP)
            number = running_trial_of(storage, name, mark)
            if number is not None:
                os.kill(victim.pid, signal.SIGKILL)
                return number
            os.kill(victim.pid, signal.SIGCONT)
        time.sleep(0.02)
    return None


def test_killed_worker_trial_is_retried_and_the_study_completes(tmp_path, example_csv,
                                                                 pg_dsn) -> None:
    # 40 trials of a tenth of a second: the coordinator (which runs trials too) cannot spend
    # the budget before the workers, polling for the study every second, join it
    coordinator, workers, _, out = shared_run(tmp_path, example_csv, pg_dsn, "kill", 40, 2,
                                              heartbeat=1)
    victim = workers[0]
    killed = kill_mid_trial(victim, pg_dsn, "kill")
    if killed is None:
        outputs = finish([coordinator, *workers])
        pytest.fail(f"the victim never ran a trial: {outputs}")
    outputs = finish([coordinator, *workers])
    assert victim.returncode == -signal.SIGKILL
    assert coordinator.returncode == 0 and workers[1].returncode == 0, outputs
    study = check_complete(pg_dsn, "kill", 40, out)
    dead = study.trials[killed]
    assert dead.state == optuna.trial.TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert retries and retries[-1].state in COUNTED
    # the same configuration (what the dead trial had drawn of it) is run again
    assert dead.params and dead.params.items() <= retries[-1].params.items()
    report = json.loads((out / "report.json").read_text())
    assert report["search"]["shared"]["retried"] >= 1


def test_journal_storage_shares_a_study(tmp_path, example_csv) -> None:
    journal = f"journal:{tmp_path / 'study.log'}"
    coordinator, workers, _, out = shared_run(tmp_path, example_csv, journal, "j", 6, 1)
    outputs = finish([coordinator, *workers])
    assert coordinator.returncode == 0 and workers[0].returncode == 0, outputs
    check_complete(journal, "j", 6, out)


def test_a_silent_journal_trial_is_failed_and_queued_again(tmp_path) -> None:
    storage = open_storage(parse_storage(f"journal:{tmp_path / 'j.log'}"))
    study = optuna.create_study(study_name="s", storage=storage)
    study.set_user_attr(SHARED_ATTR, {"trials": 3, "stop_at": None, "heartbeat": 1})
    alive, dead = study.ask(), study.ask()
    for t in (alive, dead):
        t.suggest_int("x", 0, 10)
    storage.set_trial_system_attr(alive._trial_id, BEAT_ATTR, time.time())
    storage.set_trial_system_attr(dead._trial_id, BEAT_ATTR, time.time() - 60)
    assert fail_stale_journal(study) == [dead.number]
    states = {t.number: t.state for t in study.trials}
    assert states[alive.number] == optuna.trial.TrialState.RUNNING
    assert states[dead.number] == optuna.trial.TrialState.FAIL
    retry = study.trials[-1]
    assert retry.state == optuna.trial.TrialState.WAITING
    assert retry.system_attrs["failed_trial"] == dead.number
    assert retry.params == study.trials[dead.number].params


# ----------------------------------------------------------------------------- bad input


def run_cli(*args: str):  # noqa: ANN201
    return CliRunner().invoke(app, [*args, "--no-progress"])


@pytest.mark.parametrize("storage, says", [
    ("postgresql://user:s3cret@127.0.0.1:1/db", "cannot open the database"),
    ("postgresql://user:s3cret@localhost:notaport/db", "cannot open the database"),
    ("mysql://user:s3cret@host/db", "not a storage Homunculus can use"),
    ("journal:/nonexistent-wt13/dir/study.log", "does not exist"),
])
def test_unusable_storage_is_a_clear_error(tmp_path, example_csv, storage, says) -> None:
    spec = write_spec(tmp_path / "spec.yaml", spec_text(example_csv, trials=2))
    for args in (["compile", str(spec), "-o", str(tmp_path / "out")],
                 ["worker", str(spec), "--wait", "0"]):
        result = run_cli(*args, "--storage", storage, "--study", "s")
        assert result.exit_code == 2, result.output
        assert says in result.output and "s3cret" not in result.output
    assert not (tmp_path / "out" / "report.json").exists()


def test_storage_needs_a_study_name(tmp_path, example_csv) -> None:
    spec = write_spec(tmp_path / "spec.yaml", spec_text(example_csv, trials=2))
    result = run_cli("compile", str(spec), "-o", str(tmp_path / "out"), "--storage",
                     f"journal:{tmp_path / 'j.log'}")
    assert result.exit_code == 2 and "--study" in result.output


def test_other_spec_or_data_cannot_use_a_study(tmp_path, example_csv, pg_dsn) -> None:
    spec = write_spec(tmp_path / "spec.yaml", spec_text(example_csv, trials=2))
    ok = run_cli("compile", str(spec), "-o", str(tmp_path / "out"), "--storage", pg_dsn,
                 "--study", "mine")
    assert ok.exit_code == 0, ok.output
    before = load(pg_dsn, "mine")
    settings, n = before.user_attrs[SETTINGS_ATTR], len(before.trials)

    other = write_spec(tmp_path / "other.yaml", spec_text(example_csv, "[dt]", trials=2))
    result = run_cli("compile", str(other), "-o", str(tmp_path / "out2"), "--storage", pg_dsn,
                     "--study", "mine")
    assert result.exit_code == 2 and "different spec" in result.output, result.output
    assert "families" in result.output

    edited = tmp_path / "edited.csv"
    edited.write_text("\n".join(example_csv.read_text().splitlines()[:-50]) + "\n")
    moved = write_spec(tmp_path / "moved.yaml", spec_text(edited, trials=2))
    result = run_cli("worker", str(moved), "--storage", pg_dsn, "--study", "mine", "--wait", "0")
    assert result.exit_code == 2 and "different spec or data" in result.output, result.output
    assert "the data" in result.output

    after = load(pg_dsn, "mine")  # left intact
    assert after.user_attrs[SETTINGS_ATTR] == settings and len(after.trials) == n


def test_resume_is_not_for_a_shared_study(tmp_path, example_csv) -> None:
    spec = write_spec(tmp_path / "spec.yaml", spec_text(example_csv, trials=2))
    result = run_cli("compile", str(spec), "-o", str(tmp_path / "out"), "--resume",
                     "--storage", f"journal:{tmp_path / 'j.log'}", "--study", "s")
    assert result.exit_code == 2 and "drop --resume" in result.output


SCRIPT = """\
import numpy as np
from homunculus.alchemy import DataLoader, Feature, Model, Platforms, Verdict, generate

rng = np.random.default_rng({seed})
x = np.stack([rng.integers(0, 256, 300), rng.integers(0, 65536, 300)], 1)
y = np.where(x[:, 0] > 128, "attack", "benign")


@DataLoader(features=[Feature("a", 8, field="ipv4.ttl"), Feature("b", 16)])
def load():
    return x[:200], y[:200], x[200:], y[200:]


model = Model("toy", data=load, metric="f1_macro", algorithms=["dt", "gnb"],
              verdict=Verdict.drop(["attack"]))
platform = Platforms.BMv2()
platform.schedule(model)
generate(platform, "out", trials=4, progress=False)
"""


def test_python_specs_coordinate_and_join(tmp_path) -> None:
    script = write_spec(tmp_path / "toy.py", SCRIPT.format(seed=0))
    journal = f"journal:{tmp_path / 'j.log'}"
    result = run_cli("compile", str(script), "-o", str(tmp_path / "out"), "--storage", journal,
                     "--study", "py")
    assert result.exit_code == 0, result.output
    assert len(load(journal, "py").get_trials(states=COUNTED)) == 4
    joined = run_cli("worker", str(script), "--storage", journal, "--study", "py", "--wait", "0")
    assert joined.exit_code == 0 and "counts 4" in joined.output, joined.output
    other = write_spec(tmp_path / "other.py", SCRIPT.format(seed=1))
    refused = run_cli("worker", str(other), "--storage", journal, "--study", "py", "--wait", "0")
    assert refused.exit_code == 2 and "the data" in refused.output, refused.output
