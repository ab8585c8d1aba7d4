"""How good is the search? BO against random search and the hand-tuned defaults, over seeds.

For each spec (the IoT example and the three reference apps), seed and method, one search of N
trials on the problem the compiler builds (same folds, target, limits, allowed families). The
best feasible trial on validation within the first 20 trials and within all N is retrained and
its quantised model scored on the test split. Every method here draws its trials without
looking at the budget (fixed start-up counts), so the first 20 trials of an N-trial search are
exactly a 20-trial search.

Methods:

- ``bo``: the compiler's search (``make_sampler(spec's sampler)`` + ``run_search``: the warm
  start queues each allowed family's default configuration first, on ``warm_features`` when
  the search selects features);
- ``random``: uniform random search over the same design space, same N, no warm start;
- ``default``: each allowed family's ``default_params()``, the best feasible on validation;
- experimental variants (``--methods``) for choosing the sampler: see VARIANTS.

Results are appended as JSON lines to ``--log`` as they come (a long run can be cut short and
reported with ``--report-only``).

    python bench/search_quality.py [--apps iot anomaly traffic botnet] [--seeds 0 .. 9] \
        [--trials 50] [--methods bo random default] [--jobs 2] [--log FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import optuna
from common import (
    REPO,
    evaluate_default,
    load_setup,
    machine,
    markdown_table,
    mean_std,
    source_note,
    source_state,
    test_metric,
)

from homunculus.errors import InfeasibleError
from homunculus.search.problem import decision_choices
from homunculus.search.study import (
    Budget,
    directions,
    make_objective,
    make_sampler,
    pick_best,
    run_search,
    table_space,
    warm_features,
    warm_start,
)

APPS = ("iot", "anomaly", "traffic", "botnet")
SHORT = 20  # the short budget


def spec_of(app: str) -> Path:
    return REPO / "examples" / app / "spec.yaml"


def _tpe(**kwargs: Any) -> Callable[[int, int], optuna.samplers.BaseSampler]:
    def make(seed: int, n_warm: int) -> optuna.samplers.BaseSampler:
        options = {"multivariate": True, "group": True, "n_startup_trials": 10, **kwargs}
        if options["n_startup_trials"] == "warm":
            options["n_startup_trials"] = n_warm
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, **options)
    return make


def _family(temperature: float, startup: int = 6, local: float = 0.0
            ) -> Callable[[int, int], optuna.samplers.BaseSampler]:
    def make(seed: int, _n_warm: int) -> optuna.samplers.BaseSampler:
        from homunculus.search.study import FamilySampler

        tpe = _tpe(n_startup_trials=startup)(seed, 0)
        return FamilySampler(tpe, seed + 1, temperature, local)
    return make


# name -> (sampler factory (seed, warm-start trials) or None for the compiler's, warm start?)
VARIANTS: dict[str, tuple[Callable[[int, int], optuna.samplers.BaseSampler] | None, bool]] = {
    "bo": (None, True),
    "random": (lambda seed, _n: optuna.samplers.RandomSampler(seed=seed), False),
    "random+warm": (lambda seed, _n: optuna.samplers.RandomSampler(seed=seed), True),
    "tpe10": (_tpe(), True),
    "tpe-warm": (_tpe(n_startup_trials="warm"), True),
    "tpe-warm-indep": (_tpe(n_startup_trials="warm", multivariate=False, group=False), True),
    "tpe-warm-ei64": (_tpe(n_startup_trials="warm", n_ei_candidates=64), True),
    "tpe5": (_tpe(n_startup_trials=5), False),
    "fam02": (_family(0.02), True),
    "fam05": (_family(0.05), True),
    "fam01": (_family(0.01), True),
    # issue 13's second round: local moves (fam05-local02 draws what bo draws)
    "fam05-local01": (_family(0.05, local=0.1), True),
    "fam05-local02": (_family(0.05, local=0.2), True),
    "fam05-local03": (_family(0.05, local=0.3), True),
    "fam05-local05": (_family(0.05, local=0.5), True),
    "fam03-local02": (_family(0.03, local=0.2), True),
    # session 9, once the defaults were sized to the limits
    "fam02-local02": (_family(0.02, local=0.2), True),
    "fam02-local03": (_family(0.02, local=0.3), True),
    "fam03-local03": (_family(0.03, local=0.3), True),
}


def best_at(trials: list[optuna.trial.FrozenTrial], k: int,
            objectives: tuple[str, ...]) -> optuna.trial.FrozenTrial | None:
    try:
        return pick_best(trials[:k], objectives)
    except InfeasibleError:
        return None


def scored(setup: Any, trial: optuna.trial.FrozenTrial | None) -> dict[str, Any] | None:
    if trial is None:
        return None
    from homunculus.search.problem import evaluate

    family = trial.params["family"]
    params = {k: v for k, v in trial.params.items() if k != "family"}
    ev = evaluate(setup.problem, family, params)
    return {"family": family, "val": ev.metric, "test": test_metric(ev.problem, ev),
            "entries": ev.usage.entries, "stages": ev.usage.stages, "index": trial.number}


def run_method(app: str, seed: int, method: str, trials: int) -> dict[str, Any]:
    setup = load_setup(spec_of(app), seed)
    start = time.monotonic()
    if method == "default":
        evals = [evaluate_default(setup.problem, f) for f in setup.families]
        feasible = [ev for ev in evals if ev.feasibility.feasible]
        best = max(feasible, key=lambda ev: (ev.metric, -ev.usage.entries), default=None)
        row = None if best is None else {
            "family": best.family, "val": best.metric,
            "test": test_metric(best.problem, best), "entries": best.usage.entries,
            "stages": best.usage.stages, "index": evals.index(best)}
        return {"app": app, "seed": seed, "method": method, "short": row, "full": row,
                "curve": [], "seconds": time.monotonic() - start, "evaluations": len(evals)}
    factory, warm = VARIANTS[method]
    n_warm = min(len(setup.families), trials // 2) if warm else 0
    sampler = (make_sampler(setup.plan.search.sampler, seed, trials) if factory is None
               else factory(seed, n_warm))
    study = optuna.create_study(directions=directions(setup.objectives), sampler=sampler)
    budget = Budget(trials=trials)
    if warm and factory is None:  # run_search queues the warm start itself
        with contextlib.suppress(InfeasibleError):  # none feasible: "no feasible" below
            run_search(setup.problem, setup.families, setup.objectives, budget, study)
    elif warm:
        warm_start(study, setup.families, budget, table_space(setup.problem),
                   decision_choices(setup.problem), warm_features(setup.problem),
                   len(setup.problem.dataset.features), setup.problem.limits.entries)
    if factory is not None or not warm:
        study.optimize(make_objective(setup.problem, setup.families, setup.objectives),
                       n_trials=trials - len(study.get_trials(
                           deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                   optuna.trial.TrialState.PRUNED))))
    done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    curve = []
    for k in range(1, len(done) + 1):
        b = best_at(done, k, setup.objectives)
        curve.append(None if b is None else b.user_attrs["metric"])
    seconds = time.monotonic() - start
    short, full = best_at(done, SHORT, setup.objectives), best_at(done, trials, setup.objectives)
    return {"app": app, "seed": seed, "method": method, "short": scored(setup, short),
            "full": scored(setup, full), "curve": curve, "seconds": seconds,
            "evaluations": len(done),
            "log": [[t.params.get("family"), t.user_attrs.get("metric"),
                     bool(t.user_attrs.get("feasible")), bool(t.user_attrs.get("default"))]
                    for t in done],
            "infeasible": sum(not t.user_attrs.get("feasible", False) for t in done)}


# ----------------------------------------------------------------------------- report


def load_rows(log: Path) -> list[dict[str, Any]]:
    rows = {}
    for line in log.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[r["app"], r["seed"], r["method"], r.get("trials")] = r
    return list(rows.values())


def metric_of(row: dict[str, Any] | None, which: str, split: str) -> float | None:
    if row is None or row.get(which) is None:
        return None
    return row[which][split]


def head_to_head(rows: list[dict[str, Any]], app: str, a: str, b: str, which: str,
                 split: str) -> str:
    """Seeds where ``a`` is better / tied / worse than ``b`` and the mean difference. A seed
    where only one method found a feasible configuration counts for that method but not in
    the mean (said in a note)."""
    by = {(r["method"], r["seed"]): r for r in rows if r["app"] == app}
    seeds = sorted({s for (m, s) in by if m == a} & {s for (m, s) in by if m == b})
    diffs, only_a, only_b = [], 0, 0
    for s in seeds:
        x, y = metric_of(by[a, s], which, split), metric_of(by[b, s], which, split)
        if x is not None and y is not None:
            diffs.append(x - y)
        only_a += x is not None and y is None
        only_b += x is None and y is not None
    if not diffs and not only_a and not only_b:
        return "-"
    wins, ties = sum(d > 1e-9 for d in diffs), sum(abs(d) <= 1e-9 for d in diffs)
    worse = len(diffs) - wins - ties + only_b
    mean = f"{100 * statistics.fmean(diffs):+.2f} pts" if diffs else "no common seed"
    note = "".join(f"; {n} seed{'s' * (n > 1)} only {m} feasible"
                   for n, m in ((only_a, a), (only_b, b)) if n)
    return f"{wins + only_a}/{ties}/{worse} ({mean}{note})"


def reach(rows: list[dict[str, Any]], app: str, method: str, short: int) -> str:
    """Seeds whose best validation metric within ``short`` trials is at least 95% of the best
    within all trials (and the mean ratio)."""
    ratios = []
    for r in rows:
        if r["app"] == app and r["method"] == method and r["curve"]:
            full = r["curve"][-1]
            at = r["curve"][min(short, len(r["curve"])) - 1]
            if full and at is not None:
                ratios.append(at / full)
    if not ratios:
        return "-"
    return (f"{sum(x >= 0.95 for x in ratios)}/{len(ratios)} (mean "
            f"{100 * statistics.fmean(ratios):.1f}%)")


def headroom(rows: list[dict[str, Any]], app: str, methods: Sequence[str]) -> list[str] | None:
    """How far above random search's mean validation metric (within ``SHORT`` trials) the best
    found on each seed by any of ``methods`` lies (the mean over seeds), and the best feasible
    trial of all: the most any sampler could show over random search at that budget."""
    mine = [r for r in rows if r["app"] == app and r["method"] in methods]
    randoms = [v for r in mine if r["method"] == "random"
               and (v := metric_of(r, "short", "val")) is not None]
    per_seed: dict[int, float] = {}
    for r in mine:
        if (v := metric_of(r, "short", "val")) is not None:
            per_seed[r["seed"]] = max(per_seed.get(r["seed"], v), v)
    trials = [t[1] for r in mine for t in r.get("log", [])[:SHORT]
              if t[1] is not None and t[2]]
    if not randoms or not per_seed or not trials:
        return None
    base, best_seed, best = (statistics.fmean(randoms), statistics.fmean(per_seed.values()),
                             max(trials))
    return [app, f"{base:.4f}", f"{best_seed:.4f} ({100 * (best_seed - base):+.2f} pts)",
            f"{best:.4f} ({100 * (best - base):+.2f} pts)", str(len(trials))]


def report(rows: list[dict[str, Any]], methods: Sequence[str], apps: Sequence[str],
           trials: int) -> str:
    parts = []
    for which, n in (("short", SHORT), ("full", trials))[:1 if trials <= SHORT else 2]:
        table = []
        for app in apps:
            for m in methods:
                mine = [r for r in rows if r["app"] == app and r["method"] == m]
                vals = [v for r in mine if (v := metric_of(r, which, "val")) is not None]
                tests = [v for r in mine if (v := metric_of(r, which, "test")) is not None]
                fams = ", ".join(sorted({r[which]["family"] for r in mine if r.get(which)}))
                failed = sum(1 for r in mine if r.get(which) is None)
                secs = [r["seconds"] for r in mine]
                table.append([app, m, len(mine), mean_std(vals), mean_std(tests), fams or "-",
                              failed, mean_std(secs, 0)])
        parts.append(f"### {n} trials (default: best of each family's defaults)\n\n" +
                     markdown_table(["app", "method", "seeds", "val metric", "test metric",
                                     "families chosen", "no feasible", "seconds / search"],
                                    table))
        vs = []
        for app in apps:
            for other in [m for m in methods if m != "bo"]:
                if "bo" in methods:
                    vs.append([app, f"bo vs {other}",
                               head_to_head(rows, app, "bo", other, which, "val"),
                               head_to_head(rows, app, "bo", other, which, "test")])
        if vs:
            parts.append(f"BO against the others at {n} trials: better / tied / worse seeds "
                         "(mean difference in metric points, x100):\n\n" +
                         markdown_table(["app", "comparison", "validation", "test"], vs))
    room = [h for app in apps if (h := headroom(rows, app, methods)) is not None]
    if room:
        parts.append(f"Headroom at {SHORT} trials (validation): random search's mean, each "
                     "seed's best over the methods above (mean over seeds), and the best "
                     "feasible trial of all:\n\n" +
                     markdown_table(["app", "random search", "best per seed, any method",
                                     "best trial of all", "feasible trials"], room))
    if trials > SHORT:
        reach_rows = [[app, m, reach(rows, app, m, SHORT)] for app in apps for m in methods
                      if m != "default"]
        parts.append(f"Best validation metric within {SHORT} trials as a share of the best "
                     f"within {trials}: seeds at >= 95% (mean share):\n\n" +
                     markdown_table(["app", "method", f"{SHORT} vs {trials} trials"],
                                    reach_rows))
    return "\n\n".join(parts)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--apps", nargs="+", default=list(APPS), choices=APPS)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--methods", nargs="+", default=["bo", "random", "default"],
                        choices=[*VARIANTS, "default"])
    parser.add_argument("--jobs", type=int, default=2, help="searches run side by side")
    parser.add_argument("--log", type=Path, default=None, help="JSON lines (appended)")
    parser.add_argument("--report-only", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    log = args.log or Path(tempfile.mkstemp(prefix="hmn-quality-", suffix=".jsonl")[1])
    start, source = time.monotonic(), source_state()
    if not args.report_only:
        have = {(r["app"], r["seed"], r["method"]) for r in (
            load_rows(log) if log.exists() else []) if r.get("trials") == args.trials}
        tasks = [(app, seed, m) for app in args.apps for seed in args.seeds
                 for m in args.methods if (app, seed, m) not in have]  # resumes a cut run
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(run_method, app, seed, m, args.trials): (app, seed, m)
                       for app, seed, m in tasks}
            for done, fut in enumerate(as_completed(futures), 1):
                row = {**fut.result(), "trials": args.trials}
                with open(log, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"[{done}/{len(tasks)}] {row['app']} seed {row['seed']} {row['method']}: "
                      f"{row['seconds']:.0f} s", file=sys.stderr, flush=True)
    rows = [r for r in load_rows(log) if r.get("trials") == args.trials
            and r["app"] in args.apps and r["seed"] in args.seeds
            and r["method"] in args.methods]
    print(f"## Search quality: {', '.join(args.apps)}; seeds {args.seeds[0]}..{args.seeds[-1]}; "
          f"{args.trials} trials\n")
    print(report(rows, args.methods, args.apps, args.trials))
    print(f"\nWall time {time.monotonic() - start:.0f} s; log {log}. Machine: {machine()}. "
          f"Source: {source_note(source)}.")


if __name__ == "__main__":
    main()
