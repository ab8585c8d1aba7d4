"""``homunculus evaluate SPEC --splits K``: the compile's whole pipeline over K seeded splits.

One split is not a measurement: on the traffic example a different choice of test captures moves
macro-F1 by 0.05-0.1. For split seed s (s = first, first + 1, ...) the spec's data is split with
seed s (by capture, flow or group when the data has them, as the spec says) and compiled for real
with search seed s -- cross-validated search, refit on the whole training set, quantise, lower,
emit, verify the twin at 100 % -- into a temporary directory that is removed afterwards. The
result: per split the chosen family, the cross-validated metric, the test metric of the float,
quantised and generated pipeline, resources; over the splits the mean, the spread and the
per-class F1.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from homunculus.errors import SpecError
from homunculus.frontend.spec import Spec

MAX_SPLITS = 1000


@dataclass(frozen=True)
class SplitResult:
    seed: int
    family: str
    cv: float
    float_metric: float
    quantised: float
    pipeline: float
    agreement: float
    per_class_f1: dict[str, float]
    resources: dict[str, Any]
    feasible: bool
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluationResult:
    name: str
    metric: str
    target: str
    splits: list[SplitResult]

    def summary(self) -> dict[str, Any]:
        """Mean, sample standard deviation, minimum and maximum of the pipeline's test metric
        (and of the CV metric and each class's F1) over the splits."""
        def stats(values: list[float]) -> dict[str, float]:
            return {"mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values), "max": max(values)}

        labels = list(self.splits[0].per_class_f1) if self.splits else []
        return {
            "splits": len(self.splits),
            "seeds": [s.seed for s in self.splits],
            "pipeline": stats([s.pipeline for s in self.splits]),
            "cv": stats([s.cv for s in self.splits]),
            "float": stats([s.float_metric for s in self.splits]),
            "quantised": stats([s.quantised for s in self.splits]),
            "per_class_f1": {label: stats([s.per_class_f1[label] for s in self.splits])
                             for label in labels},
            "families": [s.family for s in self.splits],
            "feasible": sum(s.feasible for s in self.splits),
        }

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "metric": self.metric, "target": self.target,
                "summary": self.summary(), "splits": [asdict(s) for s in self.splits]}


def evaluate_spec(spec: Path, splits: int, *, first_seed: int | None = None,
                  trials: int | None = None, seconds: float | None = None,
                  on_split: Callable[[SplitResult], None] | None = None) -> EvaluationResult:
    """Compile ``spec`` (YAML) once per split seed and collect the results (see module doc)."""
    from homunculus.compile import CompileOptions, compile_plan
    from homunculus.frontend.yaml_spec import load_yaml_spec, plan_from_yaml

    if not 1 <= splits <= MAX_SPLITS:
        raise SpecError(f"--splits must be in 1..{MAX_SPLITS}")
    if spec.suffix not in (".yaml", ".yml"):
        raise SpecError("evaluate takes a YAML spec: a Python spec's data loader fixes its own "
                        "split", file=str(spec))
    if not spec.exists():
        raise SpecError("no such spec file", file=str(spec))
    parsed, lines = load_yaml_spec(spec)
    if not isinstance(parsed, Spec):
        raise SpecError("evaluate takes a spec of one model on one platform (not a schedule "
                        "or a chain)", file=str(spec))
    if parsed.data is not None and parsed.data.test_path is not None:
        raise SpecError("the spec gives a fixed test set (data.test_path): there is nothing to "
                        "split; use test_fraction", file=str(spec), field="data.test_path",
                        line=lines.get(("data", "test_path")))
    start = parsed.search.seed if first_seed is None else first_seed
    results: list[SplitResult] = []
    target = parsed.platform.target
    with tempfile.TemporaryDirectory(prefix="hmn-evaluate-") as tmp:
        for seed in range(start, start + splits):
            began = time.monotonic()
            plan = plan_from_yaml(spec, seed=seed)
            result = compile_plan(plan, CompileOptions(
                Path(tmp) / f"split-{seed}", trials=trials, seconds=seconds, seed=seed,
                progress=False))
            m = result.metrics
            res = result.report["resources"]
            row = SplitResult(
                seed=seed, family=result.family, cv=float(m["cv"]["metric"]),
                float_metric=float(m["float"]), quantised=float(m["quantised"]),
                pipeline=float(m["pipeline"]), agreement=float(m["agreement"]),
                per_class_f1=dict(m["per_class_f1"]), resources=dict(res["totals"]),
                feasible=bool(res["feasible"]), seconds=time.monotonic() - began,
                params=dict(result.params))
            results.append(row)
            if on_split is not None:
                on_split(row)
    return EvaluationResult(parsed.name, parsed.model.metric, target, results)


def split_line(row: SplitResult, target: str) -> str:
    """One split, as the command prints it."""
    totals = row.resources
    if target in ("tofino", "bmv2"):
        cost = f"{totals.get('stages')} stages, {totals.get('entries')} entries"
    else:
        cost = f"~{totals.get('latency_ns', 0):.0f} ns, {totals.get('entries')} entries"
    return (f"split {row.seed}: {row.family:<6} cv {row.cv:.4f}  test float {row.float_metric:.4f}"
            f"  quantised {row.quantised:.4f}  pipeline {row.pipeline:.4f}  ({cost}; "
            f"{row.seconds:.0f} s)")
