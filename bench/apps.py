"""The three reference apps on a Tofino-class budget: constrained BO vs a hand-written baseline.

For each app (``examples/<app>/spec.yaml``) and seed, on one problem built exactly as the
compiler builds it (same validation split, target, limits, allowed families):

- ``bo``: the compiler's search: constrained TPE over every family the spec allows, with the
  spec's constraints and the merge and (botnet) feature-selection knobs, N trials; the best
  feasible validation metric is retrained and its quantised model scored on the test split;
- ``baseline``: what an operator would write by hand: a depth-5 decision tree (``dt``
  ``default_params()``) on ALL the spec's features with no table merging, evaluated once. It is
  reported even when it does not fit, with the constraint that breaks it.

    python bench/apps.py [--apps anomaly traffic botnet] [--trials 30] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import (
    REPO,
    STDERR,
    Setup,
    Tracker,
    evaluate_default,
    infeasible_count,
    load_setup,
    machine,
    markdown_table,
    mean_std,
    new_study,
    reevaluate,
    search,
    source_note,
    source_state,
    test_metric,
    tracker,
)

from homunculus.errors import InfeasibleError
from homunculus.search.problem import Evaluation

APPS = ("anomaly", "traffic", "botnet")
METHODS = ("bo", "baseline")
BASELINE_FAMILY = "dt"


def spec_path(app: str) -> Path:
    return REPO / "examples" / app / "spec.yaml"


def spec_hashes(apps: Sequence[str]) -> str:
    """A short sha256 of each app's spec (the specs, too, are edited while we run)."""
    return ", ".join(f"{app} {hashlib.sha256(spec_path(app).read_bytes()).hexdigest()[:12]}"
                     for app in apps)


def spec_note(apps: Sequence[str], before: str) -> str:
    """The specs' hashes now, or a loud note if any changed since ``before``."""
    after = spec_hashes(apps)
    if after == before:
        return after
    STDERR.print("[red]warning: a spec changed during the run; results mix versions")
    return f"CHANGED DURING THE RUN (results mix versions): {before} -> {after}"


@dataclass(frozen=True)
class Row:
    """One method's chosen configuration on one app and seed, with its resources."""

    app: str
    method: str
    seed: int
    family: str
    feasible: bool
    binding: str  # the violated constraints, or the tightest one (with its usage ratio)
    val: float
    test: float
    entries: int
    stages: int
    sram_kbit: float
    tcam_kbit: float
    registers: int
    features: int
    all_features: int
    evaluations: int
    infeasible: int
    seconds: float


@dataclass(frozen=True)
class Failure:
    """A method that found no feasible configuration on an app and seed."""

    app: str
    method: str
    seed: int
    message: str


Result = Row | Failure


def binding_note(ev: Evaluation) -> str:
    f = ev.feasibility
    if not f.feasible:
        return "; ".join(f.violations)
    if f.binding is None:
        return "-"
    return f"{f.binding} at {f.ratios[f.binding]:.0%}"


def registers(ev: Evaluation) -> int:
    """Flow-state register arrays of the pipeline (0 without per-flow state)."""
    return len(ev.pipeline.flow.registers) if ev.pipeline.flow is not None else 0


def row_of(app: str, method: str, seed: int, setup: Setup, ev: Evaluation, evaluations: int,
           infeasible: int, seconds: float) -> Row:
    """``ev`` scored on the test split of the problem it was evaluated on (chosen features)."""
    u = ev.usage
    return Row(app, method, seed, ev.family, ev.feasibility.feasible, binding_note(ev),
               ev.metric, test_metric(ev.problem, ev), u.entries, u.stages, u.sram_kbit,
               u.tcam_kbit, registers(ev), len(ev.problem.dataset.features),
               len(setup.problem.dataset.features), evaluations, infeasible, seconds)


def run_bo(app: str, setup: Setup, seed: int, trials: int, db_dir: Path,
           progress: Tracker) -> Result:
    start = time.monotonic()
    study = new_study(setup, "tpe", trials, seed, db_dir, f"{app}_bo_seed{seed}")
    try:
        result = search(setup, setup.families, study, trials, progress.search(f"{app} s{seed}"))
    except InfeasibleError as exc:
        return Failure(app, "bo", seed, str(exc))
    ev = reevaluate(setup, result.best_trial)
    return row_of(app, "bo", seed, setup, ev, len(result.trials),
                  infeasible_count(result.trials), time.monotonic() - start)


def run_baseline(app: str, setup: Setup, seed: int, progress: Tracker) -> Row:
    """The hand-written depth-5 tree on every feature, no merging (feasible or not)."""
    start = time.monotonic()
    ev = evaluate_default(setup.problem, BASELINE_FAMILY)
    progress.step(f"{app} s{seed}: baseline")
    return row_of(app, "baseline", seed, setup, ev, 1, int(not ev.feasibility.feasible),
                  time.monotonic() - start)


@dataclass(frozen=True)
class AppRun:
    """Every seed of one app, its metric (with the positive class) and its wall time."""

    results: list[Result]
    metric: str
    seconds: float


def metric_label(setup: Setup) -> str:
    """The spec's metric, with its positive class when it has one."""
    problem = setup.problem
    if problem.positive is None:
        return problem.metric
    return f"{problem.metric} on class '{problem.dataset.class_labels[problem.positive]}'"


def run_app(app: str, seeds: Sequence[int], trials: int, db_dir: Path,
            progress: Tracker) -> AppRun:
    """Every seed of one app (wall time includes loading the data)."""
    start = time.monotonic()
    results: list[Result] = []
    metric = ""
    for seed in seeds:
        setup = load_setup(spec_path(app), seed)
        metric = metric_label(setup)
        results.append(run_bo(app, setup, seed, trials, db_dir, progress))
        results.append(run_baseline(app, setup, seed, progress))
    return AppRun(results, metric, time.monotonic() - start)


# ----------------------------------------------------------------------------- tables


def rows_of(results: Sequence[Result], app: str, method: str) -> list[Row]:
    return [r for r in results if isinstance(r, Row) and r.app == app and r.method == method]


def comparison(bo: Sequence[Row], base: Sequence[Row]) -> str:
    """How often BO beat, tied or lost to the baseline on test (baseline counted if feasible)."""
    by_seed = {r.seed: r for r in base if r.feasible}
    diffs = [r.test - by_seed[r.seed].test for r in bo if r.seed in by_seed]
    if not diffs:
        return "-"
    wins, ties = sum(d > 1e-12 for d in diffs), sum(abs(d) <= 1e-12 for d in diffs)
    return f"{wins} / {ties} / {len(diffs) - wins - ties} ({mean_std(diffs)})"


def summary_table(results: Sequence[Result], apps: Sequence[str],
                  metrics: dict[str, str]) -> str:
    headers = ["app", "metric", "BO val", "BO test", "BO families", "baseline val",
               "baseline test", "baseline feasible", "BO better / tied / worse on test (diff)"]
    rows = []
    for app in apps:
        bo, base = rows_of(results, app, "bo"), rows_of(results, app, "baseline")
        n_base = len(base)
        rows.append([
            app, metrics[app], mean_std([r.val for r in bo]), mean_std([r.test for r in bo]),
            ", ".join(r.family for r in bo) or "none feasible",
            mean_std([r.val for r in base]), mean_std([r.test for r in base]),
            f"{sum(r.feasible for r in base)}/{n_base}", comparison(bo, base),
        ])
    return markdown_table(headers, rows)


RESOURCE_HEADERS = ["family", "feasible (binding)", "val", "test", "entries", "stages",
                    "SRAM Kbit", "TCAM Kbit", "registers", "features"]


def resource_cells(r: Row) -> list[object]:
    feasible = f"{'yes' if r.feasible else 'NO'} ({r.binding})"
    return [r.family, feasible, f"{r.val:.4f}", f"{r.test:.4f}", r.entries, r.stages,
            f"{r.sram_kbit:g}", f"{r.tcam_kbit:g}", r.registers,
            f"{r.features}/{r.all_features}"]


def resources_table(results: Sequence[Result], apps: Sequence[str], seed: int) -> str:
    rows = []
    for app in apps:
        for method in METHODS:
            found = [r for r in rows_of(results, app, method) if r.seed == seed]
            rows.append([app, method, *(resource_cells(found[0]) if found else
                                        ["no feasible point"] + ["-"] * 9)])
    return markdown_table(["app", "method", *RESOURCE_HEADERS], rows)


def seed_rows_table(results: Sequence[Result]) -> str:
    headers = ["app", "seed", "method", *RESOURCE_HEADERS, "infeasible / evals", "seconds"]
    rows = []
    for r in results:
        if isinstance(r, Failure):
            rows.append([r.app, r.seed, r.method, f"no feasible point: {r.message}"]
                        + ["-"] * 11)
            continue
        rows.append([r.app, r.seed, r.method, *resource_cells(r),
                     f"{r.infeasible} / {r.evaluations}", f"{r.seconds:.1f}"])
    return markdown_table(headers, rows)


def report(runs: dict[str, AppRun], args: argparse.Namespace, seconds: float,
           source: str, specs: str) -> str:
    results = [r for run in runs.values() for r in run.results]
    metrics = {app: run.metric for app, run in runs.items()}
    times = ", ".join(f"{app} {run.seconds:.1f} s" for app, run in runs.items())
    return "\n\n".join([
        f"## Reference apps: {' '.join(args.apps)}, {args.trials} TPE trials, "
        f"seeds {' '.join(map(str, args.seeds))}",
        "Validation and test metric, mean ± sample std over seeds (baseline: dt default_params, "
        "all features, no merging; its means include infeasible seeds, see 'baseline "
        "feasible'; the difference column counts only seeds where the baseline fits):",
        summary_table(results, args.apps, metrics),
        f"Resources of the seed-{args.seeds[0]} choices (registers: flow-state register "
        "arrays; features: used / in the spec):",
        resources_table(results, args.apps, args.seeds[0]),
        "Per seed:", seed_rows_table(results),
        f"Total wall time: {seconds:.1f} s ({times}). Machine: {machine()}. Source: {source}; "
        f"spec sha256 {specs}.",
    ])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--apps", nargs="+", choices=APPS, default=list(APPS))
    parser.add_argument("--trials", type=int, default=30, help="trial budget N per search")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    start, source, specs = time.monotonic(), source_state(), spec_hashes(args.apps)
    total = len(args.apps) * len(args.seeds) * (args.trials + 1)
    runs: dict[str, AppRun] = {}
    with tempfile.TemporaryDirectory(prefix="hmn-bench-apps-") as tmp, \
            tracker(total, not args.no_progress) as progress:
        for app in args.apps:
            runs[app] = run_app(app, args.seeds, args.trials, Path(tmp), progress)
            STDERR.print(f"{app}: {runs[app].seconds:.1f} s")
    seconds = time.monotonic() - start
    print(report(runs, args, seconds, source_note(source), spec_note(args.apps, specs)))


if __name__ == "__main__":
    main()
