"""Shared search: trials per minute with 1, 2 and 4 processes, and the coordination overhead.

Starts its own PostgreSQL server (tests/postgres.py: initdb/pg_ctl in a temporary directory, a
Unix socket only) and, for each process count W, runs ``homunculus compile SPEC --storage DSN
--study NAME`` plus W-1 ``homunculus worker`` processes on a fresh study of N trials. Throughput
is counted trials per minute between the first trial's start and the last trial's end (from the
study's own timestamps: process start-up and the final artefacts are left out; the wall time of
the whole compile is shown beside it). The plain single-process compile (SQLite in OUT) is the
reference row.

Coordination overhead: the same N no-op trials (they only draw a configuration) through the
shared loop on PostgreSQL, through the shared loop on a journal file, and through a plain
in-memory ``study.optimize``; the difference per trial is what sharing costs each trial.

    python bench/shared_scaling.py [--spec examples/iot/spec.yaml] [--trials 40] \
        [--workers 1 2 4] [--noop-trials 100] [--rounds 2]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import optuna
from common import DEFAULT_SPEC, REPO, load_setup, machine, markdown_table, source_state

sys.path.insert(0, str(REPO / "tests"))
from homunculus.search.distributed import (  # noqa: E402
    Shared,
    open_coordinated,
    run_shared,
    with_sampler,
)
from homunculus.search.storage import parse_storage  # noqa: E402
from homunculus.search.study import (  # noqa: E402
    directions,
    make_sampler,
    suggest_configuration,
)

from postgres import postgres_server  # noqa: E402

HOMUNCULUS = str(Path(sys.executable).with_name("homunculus"))
COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def throughput(trials: list[optuna.trial.FrozenTrial]) -> tuple[float, float]:
    """(counted trials per minute between the first start and the last end, that span in s)"""
    done = [t for t in trials if t.state in COUNTED]
    first = min(t.datetime_start for t in done)
    last = max(t.datetime_complete for t in done)
    span = (last - first).total_seconds()
    return 60.0 * len(done) / span, span


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_processes(spec: Path, storage: str | None, name: str, trials: int, workers: int,
                  tmp: Path) -> tuple[list[optuna.trial.FrozenTrial], float, float]:
    """Run one compile (+ workers); its trials, wall seconds and CPU seconds (all processes,
    start-up included; the PostgreSQL server's own CPU is not counted)."""
    out = tmp / f"out-{name}"
    cpu = children_cpu()
    shared = [] if storage is None else ["--storage", storage, "--study", name]
    start = time.monotonic()
    procs = [subprocess.Popen([HOMUNCULUS, "worker", str(spec), *shared, "--wait", "600",
                               "--no-progress"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(workers - 1)]
    coordinator = subprocess.run([HOMUNCULUS, "compile", str(spec), "-o", str(out),
                                  "--trials", str(trials), "--no-progress", *shared],
                                 capture_output=True, text=True, check=False)
    for p in procs:
        p.wait(timeout=600)
    wall = time.monotonic() - start
    if coordinator.returncode != 0 or any(p.returncode for p in procs):
        raise RuntimeError(f"run {name} failed: {coordinator.stderr[-2000:]}")
    study = optuna.load_study(study_name=optuna.get_all_study_names(
        f"sqlite:///{out / 'study.db'}")[0], storage=f"sqlite:///{out / 'study.db'}")
    shutil.rmtree(out, ignore_errors=True)
    return study.trials, wall, children_cpu() - cpu


def scaling_table(spec: Path, dsn: str, trials: int, counts: Sequence[int], rounds: int,
                  tmp: Path) -> str:
    """Each configuration once per round, rounds interleaved (the machine's load drifts)."""
    configs = [("plain", 1), *(("shared", w) for w in counts)]
    runs: dict[tuple[str, int], list[tuple[float, float, float, str]]] = {c: [] for c in configs}
    for r in range(rounds):
        for kind, w in configs:
            got, wall, cpu = run_processes(spec, dsn if kind == "shared" else None,
                                           f"{kind}{w}r{r}", trials, w, tmp)
            rate, span = throughput(got)
            done = [t for t in got if t.state in COUNTED]
            per = sorted({str(t.user_attrs.get("worker")) for t in done})
            shares = [sum(1 for t in done if str(t.user_attrs.get("worker")) == p) for p in per]
            runs[kind, w].append((rate, wall, cpu / len(done),
                                  " / ".join(map(str, shares)) if kind == "shared" else "-"))
    ref = statistics.fmean(x[0] for x in runs["plain", 1])
    rows = []
    for kind, w in configs:
        rates = [x[0] for x in runs[kind, w]]
        label = "1 (plain compile, SQLite in OUT)" if kind == "plain" else f"{w} (PostgreSQL)"
        rows.append([label, " / ".join(f"{x:.1f}" for x in rates),
                     f"{statistics.fmean(rates) / ref:.2f}",
                     " / ".join(f"{x[1]:.0f}" for x in runs[kind, w]),
                     f"{statistics.fmean(x[2] for x in runs[kind, w]):.2f}",
                     "; ".join(x[3] for x in runs[kind, w])])
    return markdown_table(["processes (coordinator + workers)", "trials / min (each round)",
                           "mean vs plain compile", "wall s (whole compile, each round)",
                           "CPU s per trial (all processes)", "trials per process"], rows)


def noop_objective(setup, families):  # noqa: ANN001, ANN201
    def objective(trial: optuna.Trial) -> list[float]:
        suggest_configuration(trial, families, True, 0)
        trial.set_user_attr("metric", 0.0)
        return [0.0] * len(setup.objectives)
    return objective


def overhead_table(spec: Path, dsn: str, n: int, tmp: Path) -> str:
    setup = load_setup(spec, 0)
    families, dirs = setup.families, directions(setup.objectives)
    rows = []
    study = optuna.create_study(directions=dirs, sampler=make_sampler("tpe", 0, n))
    start = time.monotonic()
    study.optimize(noop_objective(setup, families), n_trials=n)
    local = (time.monotonic() - start) / n
    rows.append(["in-memory study.optimize (reference)", f"{1000 * local:.1f}", "-"])
    for label, storage in (("PostgreSQL (Unix socket)", dsn),
                           ("journal file", f"journal:{tmp / 'noop.log'}")):
        shared = Shared(parse_storage(storage), f"noop-{label[:4]}", heartbeat=10)
        study = open_coordinated(shared, {"bench": True}, dirs, n, None, lambda _s: None)
        study = with_sampler(study, shared, make_sampler("tpe", 0, n, concurrent=True))
        start = time.monotonic()
        run_shared(study, noop_objective(setup, families))
        per = (time.monotonic() - start) / n
        rows.append([f"shared loop, {label}", f"{1000 * per:.1f}", f"{1000 * (per - local):.1f}"])
    return markdown_table(["how", "ms per no-op trial", "overhead ms per trial"], rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--noop-trials", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    source = source_state()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hmn-scaling-") as tmp, \
            postgres_server("hmn-pg-bench-") as dsn:
        overhead = overhead_table(args.spec, dsn, args.noop_trials, Path(tmp))
        scaling = scaling_table(args.spec, dsn, args.trials, args.workers, args.rounds,
                                Path(tmp))
    print(f"## Shared search: {args.spec.name}, {args.trials} trials\n\n{scaling}\n\n"
          f"Coordination overhead ({args.noop_trials} no-op trials):\n\n{overhead}\n\n"
          f"Wall time {time.monotonic() - start:.0f} s. Machine: {machine()}. Source: {source}.")


if __name__ == "__main__":
    main()
