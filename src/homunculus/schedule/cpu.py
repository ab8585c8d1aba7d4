"""Schedules on a host: one C library running several models by the schedule's semantics.

On a CPU the models run one after the other, and only when they run: model ``m`` runs when the
classes of the models before it let the packet through (its ``ran`` table, indexed by their
classes), so a gated-out model costs nothing. The verdict comes from one table indexed by every
model's class or "did not run", filled from the same semantics as the switch's combining table
(schedule/policy.py). Each model is the C target's own library (targets/c), compiled in a
translation unit of its own with its exported functions renamed ``hmn_<model>_*``; the schedule
library ``hmn_<name>`` adds ``hmn_sched_classify(features, &result)``. Features are the union of
the models' inputs (the same header field, flow quantity or carried name is one input), and a
model reading an upstream class gets it from that model's result.

The estimate adds up the models' latencies (every model running: the worst case) and memory.
XDP runs the same composition in one eBPF program (schedule/xdp.py).
"""

from __future__ import annotations

import ctypes
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from homunculus.errors import NotSupportedError
from homunculus.ir.cpu import CpuProgram
from homunculus.ir.names import safe_comment, unique_identifiers
from homunculus.ir.pipeline import FeatureInput
from homunculus.schedule.expr import Node, names, upstream_pairs
from homunculus.schedule.fuse import MAX_COMBINATIONS, feature_key
from homunculus.schedule.policy import ModelVerdicts, Policy, combinations, run_flags
from homunculus.targets.base import Usage
from homunculus.targets.templating import code_env

NOT_RUN = -1


@dataclass(frozen=True)
class CpuSchedule:
    """Several CPU programs and the tables that run them as a schedule."""

    features: tuple[FeatureInput, ...]  # the library's inputs
    models: tuple[tuple[str, CpuProgram], ...]  # in schedule order (upstream first)
    idents: tuple[str, ...]  # each model's C identifier
    inputs: dict[str, list[int]]  # model -> input index of each of its features (-1: upstream)
    upstream: dict[str, dict[int, str]]  # model -> feature index -> the model whose class
    before: dict[str, list[str]]  # model -> the models whose classes decide whether it runs
    ran: dict[str, list[int]]  # model -> 0/1 per combination of ``before``'s classes
    # per combination of (class or not run) of every model: port, drop, mark, dscp
    verdict: list[tuple[int, int, int, int]]
    n_classes: tuple[int, ...]


def compose_cpu(chosen: list[tuple[str, Any]], uses: dict[str, dict[str, str]], node: Node,
                policy: Policy) -> CpuSchedule:
    """The schedule of ``chosen`` (model name, Built) on a host."""
    inputs: list[FeatureInput] = []
    keys: dict[tuple[Any, ...], int] = {}
    per_model: dict[str, list[int]] = {}
    upstream: dict[str, dict[int, str]] = {}
    for name, built in chosen:
        program = built.pipeline
        assert isinstance(program, CpuProgram)
        up = {i: uses.get(name, {})[f.name] for i, f in enumerate(program.features)
              if f.name in uses.get(name, {})}
        upstream[name] = up
        index = []
        for i, _ in enumerate(program.features):
            if i in up:
                index.append(-1)
                continue
            key = feature_key(program, i)  # type: ignore[arg-type]
            if key not in keys:
                keys[key] = len(inputs)
                inputs.append(program.features[i])
            index.append(keys[key])
        per_model[name] = index
    verdicts = {name: ModelVerdicts.of(b.problem.verdict, b.problem.dataset.n_classes)
                for name, b in chosen}
    order = [name for name, _ in chosen]
    counts = {name: verdicts[name].n_classes for name in order}
    total = int(np.prod([c + 1 for c in counts.values()]))
    if total > MAX_COMBINATIONS:
        raise NotSupportedError(f"the schedule's models have {total} combinations of classes "
                                f"and 'not run'; the verdict table holds {MAX_COMBINATIONS}")
    pairs = upstream_pairs(node)
    before = {m: [a for a in order if (a, m) in pairs] for m in order}
    grid = combinations(order, counts)
    n = len(grid[order[0]])
    ran: dict[str, np.ndarray] = {}
    run_flags(node, grid, verdicts, np.ones(n, dtype=bool), ran)
    from homunculus.schedule.policy import combine

    port, drop, mark, dscp = combine(policy, ran, grid, verdicts)
    table = [(policy.default_port, 0, 0, 0)] * total
    for i in range(n):
        key = 0
        for m in order:
            key = key * (counts[m] + 1) + (int(grid[m][i]) if ran[m][i] else counts[m])
        table[key] = (int(port[i]), int(drop[i]), int(mark[i]), int(dscp[i]))
    ran_tables = {}
    for m in order:
        ups = before[m]
        sizes = [counts[a] for a in ups]
        flags = []
        for combo in itertools.product(*(range(s) for s in sizes)):
            hit = np.ones(n, dtype=bool)
            for a, c in zip(ups, combo, strict=True):
                hit &= grid[a] == c
            flags.append(int(ran[m][hit][0]) if hit.any() else 0)
        ran_tables[m] = flags
    idents = tuple(unique_identifiers(order, "m"))
    return CpuSchedule(tuple(inputs), tuple((name, b.pipeline) for name, b in chosen), idents,
                       per_model, upstream, before, ran_tables, table,
                       tuple(counts[m] for m in order))


def estimate(schedule: CpuSchedule, target: Any) -> Usage:
    """Every model running one after the other (the worst case), plus the schedule's tables."""
    usages = [target.estimate(p) for _, p in schedule.models]
    table_kbit = (len(schedule.verdict) * 4 * 4 + sum(len(t) for t in schedule.ran.values())) \
        * 8 / 1024
    latency = sum(u.latency_ns for u in usages)
    cores = getattr(target.profile, "cores", 1)
    return Usage(stages=0, tables=sum(u.tables for u in usages),
                 sram_kbit=sum(u.sram_kbit for u in usages) + table_kbit, tcam_kbit=0.0,
                 entries=sum(u.entries for u in usages) + len(schedule.verdict), phv_bits=0,
                 throughput_gpps=cores / latency if latency else 0.0, latency_ns=latency,
                 instructions=sum(u.instructions for u in usages))


# ----------------------------------------------------------------------------- C


def schedule_context(schedule: CpuSchedule, stem: str, title: str) -> dict[str, Any]:
    order = [name for name, _ in schedule.models]
    models = []
    for k, (name, program) in enumerate(schedule.models):
        before = schedule.before[name]
        radix = [schedule.n_classes[order.index(a)] for a in before]
        models.append({
            "index": k, "ident": schedule.idents[k], "comment": safe_comment(name),
            "n_features": len(program.features),
            "gather": [{"input": j, "upstream": (order.index(schedule.upstream[name][i])
                                                  if j < 0 else None)}
                       for i, j in enumerate(schedule.inputs[name])],
            "before": [order.index(a) for a in before], "radix": radix,
            "ran": schedule.ran[name], "n_classes": schedule.n_classes[k],
        })
    return {"stem": stem, "title": safe_comment(title), "guard": f"{stem.upper()}_H",
            "n_features": len(schedule.features), "n_models": len(order), "models": models,
            "verdict": [list(row) for row in schedule.verdict],
            "features": [{"comment": safe_comment(f.name), "width": f.field.width}
                         for f in schedule.features]}


def emit(schedule: CpuSchedule, target: Any, out_dir: Path, program_name: str) -> dict[str, Path]:
    """``c/models/<model>/`` (each model's library sources), ``c/<stem>_<model>.c`` (each
    compiled with its functions renamed), ``c/<stem>.{h,c}`` and ``lib<stem>.so``."""
    from homunculus.targets.c.build import compile_shared
    from homunculus.targets.c.codegen import c_name, emit_c

    c_dir = out_dir / "c"
    stem = f"hmn_{c_name(program_name)}"
    sources: list[Path] = []
    env = code_env("homunculus.schedule")
    for ident, (name, program) in zip(schedule.idents, schedule.models, strict=True):
        model_dir = c_dir / "models" / ident
        model_dir.mkdir(parents=True, exist_ok=True)
        texts = emit_c(program, name=ident, tree_code=target.profile.tree_code)
        model_stem = f"hmn_{c_name(ident)}"
        for file in (f"{model_stem}.c", f"{model_stem}.h"):
            (model_dir / file).write_text(texts[file])
        wrapper = c_dir / f"{stem}_{ident}.c"
        wrapper.write_text(env.get_template("model_unit.c.j2").render(
            ident=ident, comment=safe_comment(name), include=f"models/{ident}/{model_stem}.c"))
        sources.append(wrapper)
    ctx = schedule_context(schedule, stem, program_name)
    header = c_dir / f"{stem}.h"
    source = c_dir / f"{stem}.c"
    header.write_text(env.get_template("schedule.h.j2").render(**ctx))
    source.write_text(env.get_template("schedule.c.j2").render(**ctx))
    library = compile_shared([source, header, *sources], c_dir)
    return {"c_header": header, "c_source": source, "c_library": library}


class _Result(ctypes.Structure):
    pass


def twin(schedule: CpuSchedule, out_dir: Path):  # noqa: ANN201  (rows -> classes, fields)
    """The built schedule library through ctypes: classes per model and verdict fields."""
    from homunculus.targets.c.twin import _load_private_copy

    libraries = sorted((out_dir / "c").glob("libhmn_*.so"))
    if len(libraries) != 1:
        raise FileNotFoundError(f"expected one libhmn_*.so in {out_dir / 'c'}")
    lib = _load_private_copy(libraries[0])
    n_models = len(schedule.models)

    class Result(ctypes.Structure):
        _fields_ = [("classes", ctypes.c_int32 * n_models), ("port", ctypes.c_uint32),
                    ("drop", ctypes.c_uint32), ("mark", ctypes.c_uint32),
                    ("dscp", ctypes.c_uint32)]

    u32p = ctypes.POINTER(ctypes.c_uint32)
    lib.hmn_sched_classify.restype = None
    lib.hmn_sched_classify.argtypes = [u32p, ctypes.POINTER(Result)]
    lib.hmn_sched_n_features.restype = ctypes.c_uint32
    if lib.hmn_sched_n_features() != len(schedule.features):
        raise ValueError("the schedule library's feature count differs from the schedule's")
    order = [name for name, _ in schedule.models]

    def run(x: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        rows = np.ascontiguousarray(np.asarray(x, dtype=np.int64).astype(np.uint32))
        classes = np.zeros((len(rows), n_models), dtype=np.int64)
        fields = {k: np.zeros(len(rows), dtype=np.int64)
                  for k in ("verdict_port", "verdict_drop", "verdict_mark", "verdict_dscp")}
        out = Result()
        for r, row in enumerate(rows):
            lib.hmn_sched_classify(row.ctypes.data_as(u32p), ctypes.byref(out))
            classes[r] = list(out.classes)
            fields["verdict_port"][r] = out.port
            fields["verdict_drop"][r] = out.drop
            fields["verdict_mark"][r] = out.mark
            fields["verdict_dscp"][r] = out.dscp
        return {m: classes[:, k] for k, m in enumerate(order)}, fields

    def alone(name: str, x: np.ndarray) -> np.ndarray:
        """One model's own function (hmn_<model>_classify) on its feature rows."""
        fn = getattr(lib, f"hmn_{schedule.idents[order.index(name)]}_classify")
        fn.restype = ctypes.c_int32
        fn.argtypes = [u32p]
        rows = np.ascontiguousarray(np.asarray(x, dtype=np.int64).astype(np.uint32))
        return np.array([fn(row.ctypes.data_as(u32p)) for row in rows], dtype=np.int64)

    run.alone = alone  # type: ignore[attr-defined]
    return run


def order_of(node: Node) -> list[str]:
    return names(node)
