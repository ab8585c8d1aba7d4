"""Constrained BO (TPE) vs random search vs hand-tuned defaults, on one spec, over seeds.

For each seed the three methods share one problem (same validation split, target and limits):

- ``bo``: Optuna's constrained TPE sampler over every allowed family, N trials;
- ``random``: Optuna's random sampler over the same families, N trials;
- ``default``: each allowed family's ``default_params()`` evaluated once; the baseline is the
  best feasible of those on validation (|families| evaluations, not N).

The chosen configuration of each method is retrained and scored on the test split.

    python bench/search_vs_baselines.py [--trials 30] [--seeds 0 1 2] \
        [--spec examples/iot/spec.yaml]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import (
    DEFAULT_SPEC,
    Outcome,
    Setup,
    Tracker,
    evaluate_default,
    infeasible_count,
    load_setup,
    machine,
    markdown_table,
    mean_std,
    new_study,
    outcome_of,
    reevaluate,
    search,
    source_note,
    source_state,
    tracker,
)

from homunculus.errors import InfeasibleError

METHODS = ("bo", "random", "default")
SAMPLERS = {"bo": "tpe", "random": "random"}


@dataclass(frozen=True)
class Failure:
    """A method that found no feasible configuration on a seed."""

    method: str
    seed: int
    message: str


Result = Outcome | Failure


def run_sampler(method: str, setup: Setup, seed: int, trials: int, db_dir: Path,
                progress: Tracker) -> Result:
    start = time.monotonic()
    study = new_study(setup, SAMPLERS[method], trials, seed, db_dir, f"{method}_seed{seed}")
    try:
        result = search(setup, setup.families, study, trials, progress.search(f"{method} s{seed}"))
    except InfeasibleError as exc:
        return Failure(method, seed, str(exc))
    ev = reevaluate(setup, result.best_trial)
    return outcome_of(method, seed, setup.problem, ev, len(result.trials),
                      infeasible_count(result.trials), result.best_trial.number,
                      time.monotonic() - start)


def run_defaults(setup: Setup, seed: int, progress: Tracker) -> Result:
    """Every family's default_params(); the best feasible on validation (ties: fewer entries)."""
    start = time.monotonic()
    evals = []
    for family in setup.families:
        evals.append(evaluate_default(setup.problem, family))
        progress.step(f"default s{seed}: {family}")
    feasible = [(i, ev) for i, ev in enumerate(evals) if ev.feasibility.feasible]
    if not feasible:
        return Failure("default", seed, "no family's default configuration is feasible")
    index, best = max(feasible, key=lambda p: (p[1].metric, -p[1].usage.entries, -p[0]))
    return outcome_of("default", seed, setup.problem, best, len(evals),
                      len(evals) - len(feasible), index, time.monotonic() - start)


def run_seed(spec: Path, seed: int, trials: int, db_dir: Path, progress: Tracker) -> list[Result]:
    setup = load_setup(spec, seed)
    results = [run_sampler(m, setup, seed, trials, db_dir, progress) for m in ("bo", "random")]
    results.append(run_defaults(setup, seed, progress))
    return results


# ----------------------------------------------------------------------------- tables


def summary_table(results: Sequence[Result]) -> str:
    headers = ["method", "val metric", "test metric", "entries", "stages", "TCAM Kbit",
               "infeasible / evals", "seconds", "families chosen", "no feasible"]
    rows = []
    for method in METHODS:
        ok = [r for r in results if r.method == method and isinstance(r, Outcome)]
        failed = sum(1 for r in results if r.method == method and isinstance(r, Failure))
        rows.append([
            method, mean_std([o.val for o in ok]), mean_std([o.test for o in ok]),
            mean_std([o.entries for o in ok], 0), mean_std([o.stages for o in ok], 1),
            mean_std([o.tcam_kbit for o in ok], 0),
            f"{mean_std([o.infeasible for o in ok], 1)} / "
            f"{mean_std([o.evaluations for o in ok], 0)}",
            mean_std([o.seconds for o in ok], 1), ", ".join(o.family for o in ok) or "-",
            failed,
        ])
    return markdown_table(headers, rows)


def seed_rows_table(results: Sequence[Result]) -> str:
    headers = ["seed", "method", "family", "val metric", "test metric", "entries", "stages",
               "TCAM Kbit", "infeasible / evals", "chosen at", "seconds"]
    rows = []
    for r in sorted(results, key=lambda r: (r.seed, METHODS.index(r.method))):
        if isinstance(r, Failure):
            rows.append([r.seed, r.method, f"no feasible point: {r.message}"] + ["-"] * 8)
            continue
        chosen = f"trial {r.best_index}" if r.method != "default" else f"family #{r.best_index}"
        rows.append([r.seed, r.method, r.family, f"{r.val:.4f}", f"{r.test:.4f}", r.entries,
                     r.stages, f"{r.tcam_kbit:g}", f"{r.infeasible} / {r.evaluations}", chosen,
                     f"{r.seconds:.1f}"])
    return markdown_table(headers, rows)


def head_to_head(results: Sequence[Result], a: str, b: str) -> str:
    """How often method ``a`` beat, tied or lost to ``b`` on validation and on test."""
    by = {(r.method, r.seed): r for r in results if isinstance(r, Outcome)}
    seeds = sorted({s for (m, s) in by if m == a} & {s for (m, s) in by if m == b})
    lines = []
    for split in ("val", "test"):
        diffs = [getattr(by[a, s], split) - getattr(by[b, s], split) for s in seeds]
        wins, ties = sum(d > 1e-12 for d in diffs), sum(abs(d) <= 1e-12 for d in diffs)
        lines.append(f"- {a} vs {b} on {split}: {a} better on {wins}, tied on {ties}, worse on "
                     f"{len(diffs) - wins - ties} of {len(diffs)} seeds "
                     f"(mean difference {mean_std(diffs)})")
    return "\n".join(lines)


def report(results: Sequence[Result], args: argparse.Namespace, metric: str, seconds: float,
           source: str) -> str:
    return "\n\n".join([
        f"## Search vs baselines: {args.spec}, metric {metric}, {args.trials} trials, "
        f"seeds {' '.join(map(str, args.seeds))}",
        "Mean ± sample std over seeds:", summary_table(results),
        "Per seed:", seed_rows_table(results),
        head_to_head(results, "bo", "random") + "\n" + head_to_head(results, "bo", "default")
        + "\n" + head_to_head(results, "random", "default"),
        f"Total wall time: {seconds:.1f} s. Machine: {machine()}. Source: {source}.",
    ])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=30, help="trial budget N per search")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    start, source = time.monotonic(), source_state()
    n_families = len(load_setup(args.spec, args.seeds[0]).families)
    total = len(args.seeds) * (2 * args.trials + n_families)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="hmn-bench-") as tmp, \
            tracker(total, not args.no_progress) as progress:
        for seed in args.seeds:
            results += run_seed(args.spec, seed, args.trials, Path(tmp), progress)
    metric = load_setup(args.spec, args.seeds[0]).problem.metric
    print(report(results, args, metric, time.monotonic() - start, source_note(source)))


if __name__ == "__main__":
    main()
