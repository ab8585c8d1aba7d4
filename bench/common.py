"""Helpers shared by the benchmark scripts: problem set-up, searches, outcomes, markdown tables.

Nothing here writes into the source tree: study databases go to a temporary directory.
"""

from __future__ import annotations

import hashlib
import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from homunculus.compile import build_problem, choose_candidates
from homunculus.frontend.plan import Plan
from homunculus.frontend.yaml_spec import plan_from_yaml
from homunculus.models.base import get_family
from homunculus.search.metrics import score
from homunculus.search.problem import Evaluation, Problem, evaluate
from homunculus.search.study import Budget, SearchProgress, SearchResult, open_study, run_search

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = REPO / "examples" / "iot" / "spec.yaml"
STDERR = Console(stderr=True)


@dataclass(frozen=True)
class Setup:
    """One seed's problem: the plan, the problem (splits, target, limits) and allowed families."""

    plan: Plan
    problem: Problem
    families: list[str]
    objectives: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    """The configuration a method chose on one seed, re-evaluated, with its search statistics."""

    method: str
    seed: int
    family: str
    val: float
    test: float
    entries: int
    stages: int
    tcam_kbit: float
    evaluations: int
    infeasible: int
    best_index: int  # 0-based index of the chosen evaluation in the method's sequence
    seconds: float


def load_setup(spec: Path, seed: int) -> Setup:
    plan = plan_from_yaml(spec)
    problem, requested = build_problem(plan, seed)
    _, allowed = choose_candidates(problem, requested)  # exactly as compile_plan
    return Setup(plan, problem, allowed, tuple(plan.model.objectives))


def test_metric(problem: Problem, ev: Evaluation) -> float:
    """The spec's metric of the quantised model on the held-out test split."""
    ds = problem.dataset
    pred = ev.trained.predict_quantised(ds.x_test)
    return score(problem.metric, ds.y_test, pred, ds.n_classes, problem.positive)


def evaluate_default(problem: Problem, family: str) -> Evaluation:
    return evaluate(problem, family, get_family(family).default_params())


def outcome_of(method: str, seed: int, problem: Problem, ev: Evaluation, evaluations: int,
               infeasible: int, best_index: int, seconds: float) -> Outcome:
    return Outcome(method, seed, ev.family, ev.metric, test_metric(problem, ev),
                   ev.usage.entries, ev.usage.stages, ev.usage.tcam_kbit, evaluations,
                   infeasible, best_index, seconds)


def new_study(setup: Setup, sampler: str, trials: int, seed: int, db_dir: Path,
              name: str) -> optuna.Study:
    """A fresh SQLite study in ``db_dir`` (never resumed)."""
    budget = Budget(trials=trials, seconds=None)
    return open_study(db_dir / f"{name}.db", name, setup.objectives, sampler, seed, budget,
                      resume=False)


def search(setup: Setup, families: list[str], study: optuna.Study, trials: int,
           progress: SearchProgress | None) -> SearchResult:
    """Run ``study`` for exactly ``trials`` trials (raises InfeasibleError if none is feasible)."""
    return run_search(setup.problem, families, setup.objectives, Budget(trials=trials),
                      study, progress)


def infeasible_count(trials: Sequence[optuna.trial.FrozenTrial]) -> int:
    """Trials not recorded as feasible (failed trials count as infeasible too)."""
    return sum(not t.user_attrs.get("feasible", False) for t in trials)


def reevaluate(setup: Setup, trial: optuna.trial.FrozenTrial) -> Evaluation:
    """Retrain the chosen trial's configuration; warn if it does not reproduce its metric."""
    family = trial.params["family"]
    params = {k: v for k, v in trial.params.items() if k != "family"}
    ev = evaluate(setup.problem, family, params)
    if abs(ev.metric - trial.user_attrs["metric"]) > 1e-12:
        STDERR.print(f"[yellow]warning: trial {trial.number} ({family}) re-evaluated to "
                     f"{ev.metric:.6f}, the search recorded {trial.user_attrs['metric']:.6f}")
    return ev


def source_hash() -> str:
    """A short sha256 of the package sources (other engineers edit them while we run)."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "src" / "homunculus").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def source_state() -> str:
    """Git HEAD, whether src/ has uncommitted changes, and the sources' hash."""
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip() or "unknown"
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "src"], capture_output=True,
                           text=True, check=False).stdout.strip()
    return (f"HEAD {head}{' + uncommitted changes in src/' if dirty else ''}; "
            f"src/homunculus sha256 {source_hash()}")


def source_note(before: str) -> str:
    """The sources' state now, or a loud note if their hash changed since ``before``."""
    after = source_state()
    if after.rsplit(" ", 1)[-1] == before.rsplit(" ", 1)[-1]:
        return after
    STDERR.print("[red]warning: src/homunculus changed during the run; results mix versions")
    return f"CHANGED DURING THE RUN (results mix versions): {before} -> {after}"


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"optuna {optuna.__version__}")


# ----------------------------------------------------------------------------- progress


@dataclass
class Tracker:
    """An overall rich progress bar fed by per-search SearchProgress objects."""

    bar: Progress | None
    task: Any

    def search(self, label: str) -> SearchProgress:
        """A SearchProgress that advances the bar by one per finished trial."""
        state = SearchProgress()
        state.on_update = self._updater(label)
        return state

    def step(self, label: str, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=n, status=label)

    def _updater(self, label: str) -> Callable[[SearchProgress], None]:
        def update(s: SearchProgress) -> None:
            best = f"{s.best:.4f}" if s.best is not None else "-"
            self.step(f"{label}: trial {s.done}, best feasible {best}, infeasible {s.infeasible}")
        return update


@contextmanager
def tracker(total: int, enabled: bool = True) -> Iterator[Tracker]:
    if not enabled:
        yield Tracker(None, None)
        return
    columns = [TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=STDERR, transient=True) as bar:
        yield Tracker(bar, bar.add_task("bench", total=total, status=""))


# ----------------------------------------------------------------------------- tables


def mean_std(values: Sequence[float], digits: int = 4) -> str:
    """``mean ± sample std`` (just the value when there is one)."""
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
