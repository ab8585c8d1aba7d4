"""Each family alone: constrained BO (TPE) restricted to one family vs its default_params().

For every seed and every allowed family, a TPE search over that family only (same trial budget,
same constraints) and the family's hand-tuned default configuration, both scored on validation
and (retrained) on the test split.

    python bench/per_family.py [--trials 30] [--seeds 0 1 2] [--spec examples/iot/spec.yaml]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
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
    test_metric,
    tracker,
)

from homunculus.errors import InfeasibleError
from homunculus.search.problem import Evaluation
from homunculus.targets.base import Limits


@dataclass(frozen=True)
class FamilyRun:
    """One family on one seed: its best searched point (or why none) and its default point."""

    family: str
    seed: int
    searched: Outcome | None
    infeasible_reason: str | None  # the binding constraint when no searched point is feasible
    trials: int
    infeasible: int
    default: Evaluation
    default_test: float


def binding_summary(trials: Sequence[optuna.trial.FrozenTrial], limits: Limits) -> str:
    """Which constraints bound (with counts) and the closest any trial came to the top one."""
    counts: dict[str, int] = {}
    for t in trials:
        key = t.user_attrs.get("binding")
        if key:
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return "no trial finished"
    ranked = sorted(counts, key=lambda k: -counts[k])
    key = ranked[0]
    pick = max if key == "throughput_gpps" else min
    best = pick(t.user_attrs["usage"][key] for t in trials if "usage" in t.user_attrs)
    listed = ", ".join(f"{k} in {counts[k]}" for k in ranked)
    return (f"{listed} of {len(trials)} trials; best {key} seen {best:g} "
            f"(limit {getattr(limits, key):g})")


def run_family(setup: Setup, family: str, seed: int, trials: int, db_dir: Path,
               progress: Tracker) -> FamilyRun:
    start = time.monotonic()
    study = new_study(setup, "tpe", trials, seed, db_dir, f"{family}_seed{seed}")
    searched, reason = None, None
    try:
        result = search(setup, [family], study, trials, progress.search(f"{family} s{seed}"))
        ev = reevaluate(setup, result.best_trial)
        searched = outcome_of(family, seed, setup.problem, ev, len(result.trials),
                              infeasible_count(result.trials), result.best_trial.number,
                              time.monotonic() - start)
    except InfeasibleError:
        reason = binding_summary(study.get_trials(deepcopy=False), setup.problem.limits)
    done = study.get_trials(deepcopy=False)
    default = evaluate_default(setup.problem, family)
    progress.step(f"{family} s{seed}: default")
    return FamilyRun(family, seed, searched, reason, len(done), infeasible_count(done), default,
                     test_metric(setup.problem, default))


# ----------------------------------------------------------------------------- tables


def default_cell(run: FamilyRun) -> str:
    flag = "" if run.default.feasibility.feasible else " (infeasible: " + \
        "; ".join(run.default.feasibility.violations) + ")"
    return f"{run.default.metric:.4f} / {run.default_test:.4f}{flag}"


def summary_row(family: str, runs: Sequence[FamilyRun]) -> list[object]:
    ok = [r.searched for r in runs if r.searched is not None]
    failed = [r for r in runs if r.searched is None]
    defaults = [r.default for r in runs]
    n_def_ok = sum(d.feasibility.feasible for d in defaults)
    note = "" if not failed else (f"no feasible point on {len(failed)}/{len(runs)} seeds; "
                                  f"binding: {failed[0].infeasible_reason}")
    return [
        family, mean_std([o.val for o in ok]), mean_std([o.test for o in ok]),
        mean_std([o.entries for o in ok], 0), mean_std([o.stages for o in ok], 1),
        mean_std([o.tcam_kbit for o in ok], 0), mean_std([r.infeasible for r in runs], 1),
        mean_std([d.metric for d in defaults]), mean_std([r.default_test for r in runs]),
        mean_std([d.usage.entries for d in defaults], 0),
        f"{n_def_ok}/{len(defaults)}", note or "-",
    ]


def summary_table(runs: Sequence[FamilyRun], families: Sequence[str]) -> str:
    headers = ["family", "BO val", "BO test", "BO entries", "BO stages", "BO TCAM Kbit",
               "infeasible trials", "default val", "default test", "default entries",
               "default feasible", "note"]
    return markdown_table(headers, [summary_row(f, [r for r in runs if r.family == f])
                                    for f in families])


def seed_row(r: FamilyRun) -> list[object]:
    d = r.default
    default = [default_cell(r), d.usage.entries, d.usage.stages, f"{d.usage.tcam_kbit:g}"]
    if r.searched is None:
        return [r.family, r.seed, f"no feasible point; binding: {r.infeasible_reason}",
                "-", "-", "-", f"{r.infeasible} / {r.trials}", "-", *default]
    o = r.searched
    return [r.family, r.seed, f"{o.val:.4f} / {o.test:.4f}", o.entries, o.stages,
            f"{o.tcam_kbit:g}", f"{r.infeasible} / {r.trials}", f"{o.seconds:.1f}", *default]


def seed_table(runs: Sequence[FamilyRun], families: Sequence[str]) -> str:
    headers = ["family", "seed", "BO val / test", "BO entries", "BO stages", "BO TCAM Kbit",
               "infeasible / trials", "BO seconds", "default val / test", "default entries",
               "default stages", "default TCAM Kbit"]
    ordered = sorted(runs, key=lambda r: (families.index(r.family), r.seed))
    return markdown_table(headers, [seed_row(r) for r in ordered])


def report(runs: Sequence[FamilyRun], families: Sequence[str], args: argparse.Namespace,
           metric: str, seconds: float, source: str) -> str:
    return "\n\n".join([
        f"## Per family: {args.spec}, metric {metric}, {args.trials} TPE trials per family, "
        f"seeds {' '.join(map(str, args.seeds))}",
        "Mean ± sample std over seeds (BO columns over the seeds where a feasible point was "
        "found):", summary_table(runs, families),
        "Per seed:", seed_table(runs, families),
        f"Total wall time: {seconds:.1f} s. Machine: {machine()}. Source: {source}.",
    ])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=30, help="trial budget N per family")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    start, source = time.monotonic(), source_state()
    first = load_setup(args.spec, args.seeds[0])
    families = first.families
    runs: list[FamilyRun] = []
    total = len(args.seeds) * len(families) * (args.trials + 1)
    with tempfile.TemporaryDirectory(prefix="hmn-bench-") as tmp, \
            tracker(total, not args.no_progress) as progress:
        for seed in args.seeds:
            setup = load_setup(args.spec, seed)
            runs += [run_family(setup, f, seed, args.trials, Path(tmp), progress)
                     for f in families]
    seconds = time.monotonic() - start
    print(report(runs, families, args, first.problem.metric, seconds, source_note(source)))


if __name__ == "__main__":
    main()
