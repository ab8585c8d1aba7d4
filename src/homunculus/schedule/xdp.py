"""Schedules on XDP: one eBPF program running several models by the schedule's semantics.

The composition is the C target's (schedule/cpu.py: the union of the models' inputs, each
model's ``ran`` table indexed by the classes before it, one verdict table indexed by every
model's class or "not run"). Here each model is the XDP target's own section (model.c.j2: its
scratch, its two-slot parameter maps and its classification) with every identifier under the
prefix ``hmn<k>_``; the program parses the packet once (parse.c.j2), copies the union of the
features once (features.c.j2) and runs the models in schedule order, each only where the
schedule runs it.

**One snapshot per packet.** The program has one ``hmn_active`` selector for every model's maps.
A packet reads it once and uses that slot for every model, so a flip changes all models
together: no packet ever sees one model's old parameters with another's new ones. At load every
model's slot 0 is written before ``hmn_active`` is set; :func:`push` writes every model's standby
slot, then flips ``hmn_active`` once (``homunculus push``, deploy.py). The combined verdict
table is the compile's: a push changes the models' parameters, with the same classes and
verdicts.

**Shared flow state.** The models' flow state is one register program (fuse.py
``merge_flow``, as switch fusion merges it): the union of every model's registers, one per
semantics, so two models counting packets per flow read one register, and one flow feature
computed for several models is one input. Every eligible packet updates it once, before any
model runs (a gated-out model's flow state still counts the packet, as the reference features
do). The registers are one map entry per flow slot (``hmn_flows``, indexed by the flow's hash:
one lookup per packet and one map, however many registers), with one model's register ops
(flow.c.j2). A push writes parameter maps only: the flow state survives it. A per-flow decision
(classify at packet N, keep the class) is not part of a schedule: the schedule's search does not
offer it and a program with one is refused, naming its model.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from homunculus.errors import NotSupportedError
from homunculus.ir.cpu import CpuProgram
from homunculus.ir.dense import QMLP
from homunculus.ir.flow import FlowProgram
from homunculus.ir.names import safe_comment
from homunculus.schedule.cpu import CpuSchedule, schedule_context
from homunculus.schedule.cpu import estimate as host_estimate
from homunculus.schedule.fuse import merge_flow
from homunculus.targets.base import Usage
from homunculus.targets.xdp import cost
from homunculus.targets.xdp.build import build_source
from homunculus.targets.xdp.codegen import (
    FIXED_MAPS,
    MAX_MAPS,
    crc_table_rows,
    flow_program_context,
    model_section_context,
    packet_features_context,
    template_env,
)
from homunculus.targets.xdp.layout import Capacity
from homunculus.targets.xdp.loader import BpfError, BpfMap, BpfObject, prog_test_run
from homunculus.targets.xdp.runner import (
    VEC_OFFSET,
    VEC_PROG,
    load_installed,
    replay,
    vector_frame,
)
from homunculus.targets.xdp.snapshot import (
    GRACE_S,
    SnapshotError,
    push_all,
    read_snapshot,
    snapshot_of,
    write_slot,
)
from homunculus.targets.xdp.target import object_stem

FORMAT = "homunculus-xdp-schedule/1"
VERDICT_FIELDS = ("verdict_port", "verdict_drop", "verdict_mark", "verdict_dscp")
SHARED_MAPS = 4
"""The schedule's own maps: the active slot, the counters, the statistics, the scratch."""


def prefix(k: int) -> str:
    """The identifier prefix of model ``k``'s section (its maps are ``hmn<k>_meta``, ...)."""
    return f"hmn{k}_"


def model_maps(program: CpuProgram) -> int:
    """Maps one model's section uses: scratch, meta and parameters (and an MLP's activations)."""
    return 4 if isinstance(program.model, QMLP) else 3


def merged_flow(schedule: CpuSchedule) -> tuple[FlowProgram | None, dict[str, list[str]]]:
    """The schedule's one register program over the union of its features (None: no model
    keeps flow state) and the registers serving several models, with their users."""
    return merge_flow([(name, p.flow, schedule.inputs[name]) for name, p in schedule.models],
                      len(schedule.features))


def flow_maps(schedule: CpuSchedule) -> int:
    """Maps the shared flow state uses: the flows (one entry per slot, every register in it)
    and the test clock."""
    flow, _ = merged_flow(schedule)
    return 0 if flow is None else 2


def check_schedule(schedule: CpuSchedule) -> None:
    """NotSupportedError for what one XDP program cannot run: a per-flow decision, flow state
    of different geometries (merge_flow), too many maps."""
    for name, program in schedule.models:
        if program.flow is not None and program.flow.decision is not None:
            raise NotSupportedError(
                f"model '{safe_comment(name)}' decides once per flow (at packet "
                f"{program.flow.decision.at}): the models of a schedule classify every packet "
                "(build it without a per-flow decision)")
    used = (FIXED_MAPS - 1 + SHARED_MAPS + sum(model_maps(p) for _, p in schedule.models)
            + flow_maps(schedule))
    if used > MAX_MAPS:
        raise NotSupportedError(f"the schedule's {len(schedule.models)} models need {used} maps; "
                                f"a BPF program may use at most {MAX_MAPS}")


def estimate(schedule: CpuSchedule, target: Any) -> Usage:
    """The C schedule's estimate (every model running, one after the other) with the models'
    own flow state replaced by the shared one: each model estimated without its registers,
    plus one update of the merged register program per packet (its time, its flow entries'
    bytes and its verifier work: targets/xdp/cost.py)."""
    flow, _ = merged_flow(schedule)
    bare = replace(schedule, models=tuple((name, replace(p, flow=None))
                                          for name, p in schedule.models))
    usage = host_estimate(bare, target)
    if flow is None:
        return usage
    n = len(flow.registers)
    latency = usage.latency_ns + cost.COSTS["flow"] + cost.COSTS["registers"] * n
    cores = getattr(target.profile, "cores", 1)
    return replace(usage, sram_kbit=usage.sram_kbit + 4 * flow.config.slots * n * 8 / 1024,
                   latency_ns=latency, throughput_gpps=cores / latency,
                   instructions=usage.instructions + int(cost.VERIFIER["flow"]
                                                         + cost.VERIFIER["registers"] * n))


def flow_sharing(schedule: CpuSchedule) -> dict[str, Any] | None:
    """What the shared flow state saves against one register program per model (None: no
    model keeps flow state): registers and their bytes (4 per slot), the registers and the
    flow features several models share."""
    flow, shared = merged_flow(schedule)
    if flow is None:
        return None
    per_model = {name: len(p.flow.registers) for name, p in schedule.models
                 if p.flow is not None}
    slot_bytes = 4 * flow.config.slots
    users: dict[int, list[str]] = {}
    for name, p in schedule.models:
        for i, f in enumerate(p.features):
            if f.flow:
                users.setdefault(schedule.inputs[name][i], []).append(name)
    separate = sum(per_model.values())
    return {"slots": flow.config.slots, "registers": len(flow.registers),
            "registers_separate": separate, "per_model": per_model,
            "shared_registers": shared,
            "flow_features": sum(1 for f in schedule.features if f.flow),
            "flow_features_separate": sum(len(u) for u in users.values()),
            "shared_flow_features": {schedule.features[i].name: u for i, u in users.items()
                                     if len(u) > 1},
            "bytes": slot_bytes * len(flow.registers), "bytes_separate": slot_bytes * separate,
            "bytes_saved": slot_bytes * (separate - len(flow.registers))}


@dataclass(frozen=True)
class Prefixed:
    """One model's maps of a schedule's program under the names a single model's program uses
    (``hmn_meta`` is ``hmn<k>_meta``), so snapshot.py writes them unchanged."""

    maps: Any  # a BpfObject or Pinned
    prefix: str

    def map(self, name: str) -> BpfMap:
        if name.startswith("hmn_") and name != "hmn_active":
            name = self.prefix + name[len("hmn_"):]
        return self.maps.map(name)


def context(schedule: CpuSchedule, target: Any, title: str) -> dict[str, Any]:
    """What hmn_sched.bpf.c.j2 renders from: the C schedule's tables and, per model, its
    section rendered under its prefix."""
    ctx = schedule_context(schedule, "hmn_sched", title)
    section = template_env().get_template("model.c.j2")
    for k, (_, program) in enumerate(schedule.models):
        cap = target.capacity(program)
        ctx["models"][k]["code"] = section.render(
            **model_section_context(program, cap), px=prefix(k), PX=prefix(k).upper())
        ctx["models"][k]["masks"] = [f.field.max_value for f in program.features]
    ctx |= packet_features_context(schedule.features)
    flow, _ = merged_flow(schedule)
    ctx["flow"] = flow_program_context(flow, schedule.features, packed=True)
    ctx["crc_table"] = crc_table_rows()
    sharing = flow_sharing(schedule)
    ctx["flow_sharing"] = [] if sharing is None else [safe_comment(line) for line in (
        f"{sharing['registers']} registers for {sharing['registers_separate']} in the models' "
        f"own programs ({sharing['bytes']} bytes instead of {sharing['bytes_separate']})",
        *(f"register {r}: {', '.join(u)}" for r, u in sharing["shared_registers"].items()))]
    ctx["u_slots"] = max(len(schedule.features), 1)
    ctx["masks"] = [f.field.max_value for f in schedule.features]
    return ctx


def emit(schedule: CpuSchedule, target: Any, out_dir: Path, program_name: str) -> dict[str, Path]:
    """``xdp/<stem>.bpf.c`` and its object, and ``xdp/schedule.json``: every model's snapshot
    (its CPU program and capacity) in schedule order with the object's name."""
    check_schedule(schedule)
    stem = object_stem(program_name)
    text = template_env().get_template("hmn_sched.bpf.c.j2").render(
        **context(schedule, target, program_name))
    source, obj = build_source(text, out_dir / "xdp", stem)
    doc = {"format": FORMAT, "object": obj.name, "program": stem,
           "verdict": [list(row) for row in schedule.verdict],
           "models": [{"name": name, "prefix": prefix(k), "labels": list(p.class_labels),
                       "snapshot": snapshot_of(p, target.capacity(p))}
                      for k, (name, p) in enumerate(schedule.models)]}
    path = out_dir / "xdp" / "schedule.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return {"bpf_c": source, "bpf_o": obj, "schedule": path}


def install(obj: Any, doc: dict[str, Any]) -> None:
    """First load, before any packet runs: every model's slot 0, then the one active slot."""
    for entry in doc["models"]:
        program, cap = read_snapshot(entry["snapshot"])
        write_slot(Prefixed(obj, entry["prefix"]), program, cap, 0)
    obj.map("hmn_active").update_u32(0, 0)


def push(maps: Any, programs: list[CpuProgram], capacities: list[Capacity], *,
         grace_s: float = GRACE_S) -> int:
    """Install new models (one per model of the schedule, in schedule order) without mixing:
    check that every one fits its section, wait ``grace_s`` (packets that read the old active
    slot before the last flip), write every model's standby slot, then flip ``hmn_active``
    once. Returns the new active slot; on an error before the flip the active slot (every
    model's parameters in it) is untouched."""
    if len(programs) != len(capacities):
        raise SnapshotError("one model and one capacity per model of the schedule")
    parts = [(Prefixed(maps, prefix(k)), program, cap)
             for k, (program, cap) in enumerate(zip(programs, capacities, strict=True))]
    return push_all(maps, parts, grace_s=grace_s)


def load_built(out_dir: Path) -> tuple[BpfObject, dict[str, Any]]:
    """Load ``out_dir/xdp``'s schedule object with every model installed (slot 0)."""
    doc = json.loads((out_dir / "xdp" / "schedule.json").read_text())
    if doc.get("format") != FORMAT:
        raise BpfError(f"{out_dir / 'xdp' / 'schedule.json'}: not a schedule of this version", 0)
    return load_installed(out_dir / "xdp" / doc["object"], doc, install), doc


def run_vectors(obj: BpfObject, n_models: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of union features (BPF_PROG_TEST_RUN on ``hmn_xdp_vec``): every model's class
    (-1: not run) and the combined verdict (port, drop, mark, dscp)."""
    x = np.asarray(x, dtype=np.int64)
    fd = obj.prog_fd(VEC_PROG)
    n_out = n_models + len(VERDICT_FIELDS)
    start = VEC_OFFSET + 8 * x.shape[1]
    out = np.zeros((len(x), n_out), dtype=np.int64)
    for i, row in enumerate(x):
        run = prog_test_run(fd, vector_frame(row, n_out))
        out[i] = struct.unpack_from(f"<{n_out}q", run.data, start)
    return out[:, :n_models], out[:, n_models:]


def run_alone(obj: BpfObject, k: int, x: np.ndarray) -> np.ndarray:
    """Model ``k``'s section alone (``hmn_xdp_vec<k>``) on rows of its own features: its class."""
    x = np.asarray(x, dtype=np.int64)
    fd = obj.prog_fd(f"{VEC_PROG}{k}")
    out = np.zeros(len(x), dtype=np.int64)
    for i, row in enumerate(x):
        run = prog_test_run(fd, vector_frame(row, 1))
        out[i] = struct.unpack_from("<q", run.data, VEC_OFFSET + 8 * x.shape[1])[0]
    return out


def twin(schedule: CpuSchedule, out_dir: Path):  # noqa: ANN201  (rows -> classes, fields)
    """The built program in the kernel: rows of the schedule's inputs -> classes per model
    (-1 where it did not run) and the verdict fields; ``run.alone(model, rows)``: one model's
    section on its own feature rows."""
    order = [name for name, _ in schedule.models]

    def run(x: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        obj, _ = load_built(out_dir)
        with obj:
            classes, verdict = run_vectors(obj, len(order), x)
        return ({m: classes[:, k] for k, m in enumerate(order)},
                {f: verdict[:, j] for j, f in enumerate(VERDICT_FIELDS)})

    def alone(name: str, x: np.ndarray) -> np.ndarray:
        obj, _ = load_built(out_dir)
        with obj:
            return run_alone(obj, order.index(name), x)

    run.alone = alone  # type: ignore[attr-defined]
    return run


def scratch_results(obj: Any, cpu: int, n_models: int, n_features: int) -> tuple[int, ...]:
    """The packet's results from the scratch ``hmn_sched`` on ``cpu``: every model's class
    (-1, as unsigned: not run), then the verdict (port, drop, mark, dscp)."""
    values = obj.map("hmn_sched").lookup(0)
    assert isinstance(values, list)
    return struct.unpack_from(f"<{n_models + len(VERDICT_FIELDS)}Q", values[cpu],
                              8 * max(n_features, 1))


def run_packets(obj: BpfObject, n_models: int, n_features: int, table: pd.DataFrame
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every packet of ``table`` through ``hmn_xdp`` (runner.replay: each capture with fresh
    flow state, the test clock at its timestamps): the classified mask and, for the classified
    packets, every model's class (-1: not run) and the verdict (port, drop, mark, dscp)."""
    out, classified, _ = replay(
        obj, table, lambda o, cpu: scratch_results(o, cpu, n_models, n_features),
        n_models + len(VERDICT_FIELDS))
    rows = out[classified].astype(np.int64)  # two's complement: an unsigned -1 is -1 again
    return classified, rows[:, :n_models], rows[:, n_models:]


def packet_twin(schedule: CpuSchedule, out_dir: Path):  # noqa: ANN201  (table -> results)
    """The built program in the kernel on packet tables (verify.check_packets): per table the
    classified mask, every model's class on the classified packets and the verdict fields."""
    order = [name for name, _ in schedule.models]

    def run(table: pd.DataFrame) -> tuple[np.ndarray, dict[str, np.ndarray],
                                          dict[str, np.ndarray]]:
        obj, _ = load_built(out_dir)
        with obj:
            classified, classes, verdict = run_packets(obj, len(order), len(schedule.features),
                                                       table)
        return (classified, {m: classes[:, k] for k, m in enumerate(order)},
                {f: verdict[:, j] for j, f in enumerate(VERDICT_FIELDS)})

    return run
