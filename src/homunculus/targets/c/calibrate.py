"""Calibrate :class:`CProfile` by timing generated libraries on this machine.

Each synthetic pipeline isolates one operation; the cost is the slope of the measured time per
classification (``hmn_classify_batch``, best of several runs) against that operation's count.
Run ``python -m homunculus.targets.c.calibrate`` and pass the printed values as profile overrides.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from homunculus.ir.dense import QMLP, DenseLayer
from homunculus.ir.pipeline import (
    VERDICT_FIELDS,
    Argmax,
    Entry,
    Exact,
    FeatureInput,
    Field,
    MatchKind,
    Pipeline,
    ScoreSum,
    Table,
    TableRole,
    Ternary,
    VerdictKind,
)
from homunculus.targets.c.build import compile_shared
from homunculus.targets.c.codegen import emit_c
from homunculus.targets.c.twin import CLibrary

WINNER, CLASS = Field("winner", 8), Field("class_id", 8)


def _features(n: int) -> tuple[FeatureInput, ...]:
    return tuple(FeatureInput(f"x{i}", Field(f"f_x{i}", 8), None) for i in range(n))


def _verdict() -> Table:
    entries = tuple(Entry((Exact(w),), (w, 1, 0, 0, 0)) for w in range(2))
    return Table("verdict", TableRole.VERDICT, (WINNER,), (MatchKind.EXACT,),
                 (CLASS, *VERDICT_FIELDS), entries, (0, 1, 0, 0, 0))


def _pipeline(features: tuple[FeatureInput, ...], lookups: tuple[Table, ...] = (),
              score_sum: ScoreSum | None = None, mlp: QMLP | None = None) -> Pipeline:
    argmax = Argmax(score_sum.outputs, WINNER) if score_sum is not None else None
    return Pipeline(features, (), lookups, score_sum, argmax, CLASS, _verdict(),
                    VerdictKind.METADATA, ("a", "b"), {"winner": WINNER}, mlp=mlp)


def scan_pipeline(n_entries: int, n_keys: int) -> Pipeline:
    """One ternary table whose entries all fail on the last key for all-zero input."""
    feats = _features(n_keys)
    match = (Ternary(0, 1),) * (n_keys - 1) + (Ternary(1, 1),)
    table = Table("scan", TableRole.LOOKUP, tuple(f.field for f in feats),
                  (MatchKind.TERNARY,) * n_keys, (WINNER,),
                  (Entry(match, (1,)),) * n_entries, (0,))
    return _pipeline(feats, (table,))


def tables_pipeline(n_tables: int) -> Pipeline:
    """A chain of one-entry tables: table i hits iff random bit i is set (an unpredictable
    branch, as real lookups are) and also keys on table i-1's output (so none is dead code)."""
    feats = tuple(FeatureInput(f"x{i}", Field(f"f_x{i}", 1), None) for i in range(n_tables))
    outs = [*(Field(f"o{i}", 8) for i in range(n_tables - 1)), WINNER]
    tables = tuple(Table(f"t{i}", TableRole.LOOKUP, (feats[i].field, prev),
                         (MatchKind.EXACT, MatchKind.TERNARY), (out,),
                         (Entry((Exact(1), Ternary(0, 0)), (1,)),), (0,))
                   for i, (prev, out) in enumerate(zip([feats[0].field, *outs[:-1]], outs,
                                                       strict=True)))
    return _pipeline(feats, tables)


def scores_pipeline(n_classes: int, n_terms: int) -> Pipeline:
    feats = _features(1)
    tables, terms = [], [[] for _ in range(n_classes)]
    for t in range(n_terms):
        outs = tuple(Field(f"t{t}_s{c}", 8) for c in range(n_classes))
        tables.append(Table(f"t{t}", TableRole.LOOKUP, (feats[0].field,), (MatchKind.EXACT,),
                            outs, (Entry((Exact(1),), (1,) * n_classes),), (0,) * n_classes))
        for c in range(n_classes):
            terms[c].append(outs[c])
    outputs = tuple(Field(f"score{c}", 16) for c in range(n_classes))
    score_sum = ScoreSum(outputs, tuple(tuple(t) for t in terms), (0,) * n_classes)
    return _pipeline(feats, tuple(tables), score_sum)


def mlp_pipeline(width: int, depth: int) -> Pipeline:
    feats = _features(width)
    rng = np.random.default_rng(0)
    layers = tuple(DenseLayer(tuple(map(tuple, rng.integers(-8, 8, (width, width)).tolist())),
                              (0,) * width, 1, 8) for _ in range(depth))
    last = DenseLayer(tuple(map(tuple, rng.integers(-8, 8, (2, width)).tolist())), (0, 0))
    return _pipeline(feats, mlp=QMLP((0,) * width, (*layers, last)))


def time_per_row(pipeline: Pipeline, n_rows: int = 20000, repeats: int = 7,
                 x: np.ndarray | None = None) -> float:
    """Best-of-``repeats`` nanoseconds per classification on ``x`` (default: all-zero rows)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "hmn_cal.c"
        for name, text in emit_c(pipeline, name="cal").items():
            (Path(tmp) / name).write_text(text)
        lib = CLibrary(compile_shared([src], Path(tmp)))
    if x is None:
        x = np.zeros((n_rows, len(pipeline.features)), dtype=np.int64)
    n_rows = len(x)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        lib.classify_batch(x)
        best = min(best, (time.perf_counter_ns() - start) / n_rows)
    return best


def fit(counts: list[int], times: list[float]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line."""
    a, b = np.polyfit(np.asarray(counts, float), np.asarray(times, float), 1)
    return float(a), float(b)


def slope(counts: list[int], times: list[float]) -> float:
    return fit(counts, times)[0]


def calibrate() -> dict[str, float]:
    """Measured per-operation costs (ns) for :class:`CProfile`."""
    tables = [1, 8, 32, 64]
    scans = [(64, 1), (256, 1), (256, 4), (1024, 2)]
    mlps = [(4, 1), (4, 16), (4, 32), (8, 16), (16, 2), (32, 2), (64, 2)]
    scores = [(2, 2), (8, 4), (16, 8)]
    mac_counts = [w * w * d + 2 * w for w, d in mlps]
    neurons = [w * d + 2 for w, d in mlps]
    mlp_times = [time_per_row(mlp_pipeline(w, d)) for w, d in mlps]
    design = np.column_stack([np.ones(len(mlps)), mac_counts, neurons])
    _, macs, neuron = np.linalg.lstsq(design, np.asarray(mlp_times), rcond=None)[0]
    rng = np.random.default_rng(0)
    per_table, intercept = fit(tables, [
        time_per_row(tables_pipeline(n), x=rng.integers(0, 2, (20000, n))) for n in tables])
    compare = slope([n * k for n, k in scans], [time_per_row(scan_pipeline(n, k))
                                                for n, k in scans])
    return {  # per table: minus its 2 compares; the intercept also holds the verdict table
        "call_ns": round(intercept - per_table, 2),
        "table_ns": round(per_table - 2 * compare, 3),
        "compare_ns": round(compare, 3),
        "score_op_ns": round(slope([c * t + c for c, t in scores],
                                   [time_per_row(scores_pipeline(c, t)) for c, t in scores]), 3),
        "mac_ns": round(float(macs), 3),
        "neuron_ns": round(float(neuron), 3),
    }


if __name__ == "__main__":
    print(calibrate())
