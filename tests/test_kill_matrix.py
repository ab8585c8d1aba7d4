"""kill -9 at every moment that matters, in real subprocesses: the previous OUT is intact or the
new one complete, no trial is lost or counted twice, and the resumed compile equals an
uninterrupted one with the same seed.

The crash points are homunculus.faults checkpoints (``HOMUNCULUS_KILL_AT``): the process sends
itself SIGKILL there. Two more runs are killed from outside at a random moment.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from homunculus.compile import CompileOptions, compile_plan
from homunculus.frontend.yaml_spec import plan_from_yaml
from homunculus.outputs import MARKER, OutPaths

from conftest import EXAMPLE_DIR, tree

TRIALS = 4
SPEC = """\
name: kill
data:
  path: data.csv
  label: device
  features:
    - {name: ip_len, width: 16, field: ipv4.total_len}
    - {name: ttl, width: 8, field: ipv4.ttl}
    - {name: proto, width: 8, field: ipv4.protocol}
model:
  name: m
  algorithms: [dt, gnb]
platform:
  target: bmv2
search:
  trials: 4
  seed: 0
"""
HOMUNCULUS = [sys.executable, "-c", "from homunculus.cli import app; app()"]
NO_EXCHANGE = [sys.executable, "-c", "import homunculus.outputs as o; o.exchange = lambda a, b: "
               "False; from homunculus.cli import app; app()"]


def compile_in_process(root: Path, out: Path, **kw) -> None:
    compile_plan(plan_from_yaml(root / "spec.yaml"),
                 CompileOptions(out, progress=False, **kw))


def artefacts(out: Path) -> dict[str, object]:
    """What a compile produced, without what legitimately differs between runs (timing, pid)."""
    found: dict[str, object] = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if not path.is_file() or rel in ("study.db", MARKER, "report.html"):
            continue
        if rel == "report.json":
            report = json.loads(path.read_text())
            report["search"].pop("seconds")
            found[rel] = report
        else:
            found[rel] = path.read_bytes()
    return found


def counted(out_or_db: Path) -> tuple[list[tuple], int]:
    """(params of the counted trials in order, number of failed trials) of a study."""
    db = out_or_db if out_or_db.suffix == ".db" else out_or_db / "study.db"
    study = optuna.load_study(study_name="study_kill", storage=f"sqlite:///{db}")
    states = optuna.trial.TrialState
    done = [t for t in study.trials if t.state in (states.COMPLETE, states.PRUNED)]
    failed = [t for t in study.trials if t.state == states.FAIL]
    assert not [t for t in study.trials if t.state == states.RUNNING]
    return [tuple(sorted(t.params.items())) for t in done], len(failed)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("kill")
    pd.read_csv(EXAMPLE_DIR / "iot_features.csv").head(400).to_csv(root / "data.csv",
                                                                    index=False)
    (root / "spec.yaml").write_text(SPEC)
    compile_in_process(root, root / "previous", trials=2, seed=7)
    compile_in_process(root, root / "reference")
    return {"root": root, "previous": tree(root / "previous"),
            "reference": artefacts(root / "reference"),
            "trials": counted(root / "reference")[0]}


def run_killed(cell: Path, point: str | None, command: list[str] = HOMUNCULUS
               ) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if point:
        env["HOMUNCULUS_KILL_AT"] = point
    return subprocess.Popen([*command, "compile", str(cell.parent / "spec.yaml"), "-o",
                             str(cell), "--no-progress"], env=env, cwd=cell.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def new_cell(world: dict, name: str) -> Path:
    root: Path = world["root"]  # type: ignore[assignment]
    cell = root / name
    cell.mkdir()
    shutil.copy(root / "spec.yaml", cell / "spec.yaml")
    shutil.copy(root / "data.csv", cell / "data.csv")
    shutil.copytree(root / "previous", cell / "out")
    return cell / "out"


def is_previous_or_new(world: dict, out: Path) -> str:
    """'previous' if OUT is untouched, 'new' if it is the new compile complete; else fail."""
    if out.is_dir() and tree(out) == world["previous"]:
        return "previous"
    assert artefacts(out) == world["reference"], "OUT is neither the previous nor the new one"
    assert counted(out) == (world["trials"], 0)
    return "new"


def resume_and_compare(world: dict, out: Path) -> int:
    """Resume; the result must equal the uninterrupted compile. Returns the failed trials."""
    compile_in_process(out.parent, out, resume=True)
    assert artefacts(out) == world["reference"]
    trials, failed = counted(out)
    assert trials == world["trials"]  # none lost, none counted twice, same configurations
    report = json.loads((out / "report.json").read_text())
    assert [r["number"] for r in report["trials"]] == list(range(TRIALS))
    paths = OutPaths(out)
    assert not paths.partial.exists() and not paths.lock.exists() and not paths.old.exists()
    return failed


@pytest.mark.parametrize("point,after,failed", [
    ("after-trial:1", "previous", 0),  # between trials
    ("mid-trial:2", "previous", 1),  # inside a sampled trial: left RUNNING in the partial study
    # inside the first warm-start trial (a queued default) while the second waits: both are
    # queued again in order, their old entries failed
    ("mid-trial:0", "previous", 2),
    ("final-write", "previous", 0),  # artefacts half written
    ("before-commit", "previous", 0),  # all written and marked complete, not yet committed
    ("between-renames", "new", 0),  # swapped in; the previous OUT not yet removed
])
def test_kill_9_at(world, point, after, failed) -> None:
    out = new_cell(world, point.replace(":", "_"))
    proc = run_killed(out, point)
    output = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == -signal.SIGKILL, output
    assert is_previous_or_new(world, out) == after
    assert resume_and_compare(world, out) == failed


def test_kill_9_between_the_renames_of_the_fallback_commit(world) -> None:
    out = new_cell(world, "fallback")
    proc = run_killed(out, "between-renames", NO_EXCHANGE)
    assert proc.communicate(timeout=600)[0] is not None and proc.returncode == -signal.SIGKILL
    paths = OutPaths(out)
    assert not out.exists() and tree(paths.old) == world["previous"]  # the only unsafe moment
    resume_and_compare(world, out)  # the next compile puts it right first


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_at_a_random_moment(world, seed) -> None:
    out = new_cell(world, f"random{seed}")
    proc = run_killed(out, None)
    lock = OutPaths(out).lock
    deadline = time.monotonic() + 300
    while not lock.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(random.Random(seed).uniform(0.0, 2.5))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=600)
    if is_previous_or_new(world, out) == "previous" and not (
            OutPaths(out).partial / "study.db").is_file():
        compile_in_process(out.parent, out)  # killed before its search began: nothing to resume
        assert artefacts(out) == world["reference"]
        return
    resume_and_compare(world, out)
