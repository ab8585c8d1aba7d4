"""Trial cost of the cross-validated metric against the old single holdout, per family.

Old: train once on 75 % of the training set, lower, estimate, score the other 25 %. New: train
once on the whole training set (the model a trial would ship), lower, estimate, and train once
per fold for the metric. Medians of repeated evaluations of each family's default
configuration, measured side by side (interleaved), in elapsed or CPU time.

    python bench/cv_cost.py [--spec examples/iot/spec.yaml] [--folds 1 3 5] [--repeats 5]
                            [--families svm kmeans] [--clock wall|cpu] [--unsized-old]

Both sides size a model larger than the target holds down to what fits (``fit_to_limits``),
as every trial does since the search learned to; ``--unsized-old`` times the old side as it
was before that (train, cost, done).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

from common import DEFAULT_SPEC, machine, markdown_table, source_note, source_state

from homunculus.compile import build_problem
from homunculus.frontend.yaml_spec import plan_from_yaml
from homunculus.models.base import get_family
from homunculus.search.metrics import score
from homunculus.search.problem import (
    Problem,
    build_pipeline,
    evaluate,
    fit_to_limits,
    make_folds,
)
from homunculus.targets.base import assess


def old_evaluate(problem: Problem, family: str, params: dict, sized: bool) -> None:
    """The evaluation before cross-validation: one training on the 75 % fit split. ``sized``:
    a model over the limits is sized down as today's trials do (``fit_to_limits``, on the fit
    split), so that the ratio to the k-fold evaluation counts the folds only."""
    ds = problem.dataset
    fit, val = make_folds(ds, problem.seed, 1)[0]
    if sized:
        on_fit = replace(problem, dataset=replace(ds, x_train=ds.x_train[fit],
                                                  y_train=ds.y_train[fit], groups_train=None))
        trained = fit_to_limits(on_fit, family, params).trained
    else:
        trained = get_family(family).train(params, ds.x_train[fit], ds.y_train[fit],
                                           ds.n_classes, ds.widths, problem.seed)
        usage = problem.target.estimate(build_pipeline(problem, trained))
        assess(usage, problem.limits)
    score(problem.metric, ds.y_train[val], trained.predict_quantised(ds.x_train[val]),
          ds.n_classes, problem.positive)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}  # cpu: this process, all threads


def seconds(fn, clock) -> float:  # noqa: ANN001
    start = clock()
    fn()
    return clock() - start


def medians(fns: list, repeats: int, clock) -> list[float]:  # noqa: ANN001
    """Median seconds of each of ``fns``, run in turn ``repeats`` times (interleaved, so that
    a change in the machine's load weighs on all of them alike)."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times, strict=True):
            out.append(seconds(fn, clock))
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--families", nargs="+", help="default: the spec's algorithms")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time (all threads)")
    parser.add_argument("--unsized-old", action="store_true",
                        help="old trials as before sizing: a model over the limits is only "
                             "costed, not sized down (the k-fold trials always size)")
    args = parser.parse_args()
    before = source_state()
    problem, requested = build_problem(plan_from_yaml(args.spec), 0)
    families = args.families or requested or ["dt", "rf", "xgb", "gnb", "cnb", "svm", "kmeans"]
    rows = []
    for family in families:
        params = get_family(family).default_params()
        fns = [lambda f=family, p=params: old_evaluate(problem, f, p, not args.unsized_old)]
        for k in args.folds:
            folded = replace(problem, folds=make_folds(problem.dataset, 0, k))
            fns.append(lambda f=family, p=params, q=folded: evaluate(q, f, p))
        for fn in fns:  # first calls import and cache what every later one reuses
            fn()
        old, *new = medians(fns, args.repeats, CLOCKS[args.clock])
        rows.append([family, f"{old * 1000:.0f}",
                     *(f"{n * 1000:.0f} ({n / old:.1f}x)" for n in new)])
    print(markdown_table(["family", "old ms"] + [f"{k} fold(s) ms (x old)" for k in args.folds],
                         rows))
    print(f"\n{args.spec}, {len(problem.dataset.y_train)} training rows, median of "
          f"{args.repeats} ({args.clock} clock, old and k-fold runs interleaved; old "
          f"{'unsized' if args.unsized_old else 'sized to the limits'}). {machine()}. "
          f"{source_note(before)}")


if __name__ == "__main__":
    main()
