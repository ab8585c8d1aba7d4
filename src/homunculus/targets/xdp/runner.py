"""Run a built XDP program on feature vectors or packet tables through BPF_PROG_TEST_RUN.

Feature vectors go to the ``hmn_xdp_vec`` entry (features as ``u64`` after 16 bytes, results
written back into the frame). Packet tables become Ethernet frames exactly as ``write_pcap``
writes them and run through ``hmn_xdp`` in order, with the test clock (``hmn_clock``) set to each
packet's timestamp so capture time drives the flow state. The class and verdict fields of a packet
are read from the per-CPU scratch map ``hmn_env`` on the CPU the run is pinned to.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from homunculus.data.pcap import _frame
from homunculus.ir.cpu import RESULT_FIELDS, CpuProgram
from homunculus.targets.p4.flow_twin import eligible_packets, run_flow_program
from homunculus.targets.p4.twin import TwinResult, header_feature_values
from homunculus.targets.xdp.layout import even, n_scores, pow2
from homunculus.targets.xdp.loader import BpfObject, RunResult, load_object, prog_test_run
from homunculus.targets.xdp.snapshot import install, read_snapshot

MAIN_PROG, VEC_PROG = "hmn_xdp", "hmn_xdp_vec"
VEC_OFFSET = 16
STAT_CLASSIFIED = 2


def packet_frame(row: dict[str, Any]) -> bytes:
    """The Ethernet frame of a packet-table row (as data/pcap.py writes it)."""
    frame, pad = _frame(row)
    wire = int(row["wire_len"])
    if pad and len(frame) < wire:
        frame += b"\0" * (wire - len(frame))
    return frame


def vector_frame(values: np.ndarray, n_results: int) -> bytes:
    head = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x88\xb5\0\0"  # local MACs, experimental EtherType
    return head + struct.pack(f"<{len(values)}Q", *(int(v) for v in values)) + bytes(
        8 * n_results)


def load_built(out_dir: Path) -> tuple[BpfObject, dict[str, Any]]:
    """Load ``out_dir/xdp/<name>.bpf.o`` and install ``out_dir/xdp/snapshot.json`` (slot 0)."""
    snapshot = json.loads((out_dir / "xdp" / "snapshot.json").read_text())
    read_snapshot(snapshot)
    return load_installed(out_dir / "xdp" / snapshot["object"], snapshot, install), snapshot


def load_installed(path: Path, data: dict[str, Any],
                   install_into: Callable[[BpfObject, dict[str, Any]], None]) -> BpfObject:
    """Load the object at ``path`` and ``install_into(obj, data)`` (closed again on error)."""
    obj = load_object(path)
    try:
        install_into(obj, data)
    except BaseException:
        obj.close()
        raise
    return obj


@contextlib.contextmanager
def pinned_to_one_cpu() -> Iterator[int]:
    """Run on one CPU (BPF_PROG_TEST_RUN executes on the caller's), so per-CPU maps are
    readable; yields that CPU."""
    before = os.sched_getaffinity(0)
    cpu = min(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def run_vectors(obj: BpfObject, program: CpuProgram, x: np.ndarray,
                partial: np.ndarray | None = None) -> tuple[TwinResult, list[int]]:
    """Per feature row: class and verdict outputs, and the XDP return codes (a chain's host:
    from the carried partial scores ``partial``, n_rows x its score columns)."""
    names = RESULT_FIELDS
    x = np.asarray(x, dtype=np.int64)
    if program.carry_in:
        if partial is None or len(partial) != len(x):
            raise ValueError("a chain's host program needs one row of partial scores per row")
        x = np.hstack([x, np.asarray(partial, dtype=np.int64)])
    fd = obj.prog_fd(VEC_PROG)
    out = np.zeros((len(x), len(names)), dtype=np.int64)
    codes = []
    start = VEC_OFFSET + 8 * x.shape[1]
    for i, row in enumerate(x):
        run = prog_test_run(fd, vector_frame(row, len(names)))
        codes.append(run.retval)
        out[i] = struct.unpack_from(f"<{len(names)}Q", run.data, start)
    fields = {n: out[:, j] for j, n in enumerate(names)}
    return TwinResult(out[:, 0], fields), codes


def run_carry_vectors(obj: BpfObject, program: CpuProgram, x: np.ndarray) -> np.ndarray:
    """Per input row of a split MLP's part that carries on (ir/dense.py): the int8 activations
    it writes (n_rows x its outputs) through ``hmn_xdp_vec``."""
    k = n_scores(program)
    n_out = max(len(RESULT_FIELDS), k)
    x = np.asarray(x, dtype=np.int64)
    fd = obj.prog_fd(VEC_PROG)
    out = np.zeros((len(x), k), dtype=np.int64)
    start = VEC_OFFSET + 8 * x.shape[1]
    for i, row in enumerate(x):
        run = prog_test_run(fd, vector_frame(row, n_out))
        out[i] = struct.unpack_from(f"<{k}q", run.data, start)
    return out


def run_classified(obj: BpfObject, program: CpuProgram, frames: list[bytes]
                   ) -> tuple[np.ndarray, np.ndarray, list[RunResult]]:
    """Every frame through ``hmn_xdp`` on its own (no flow state): per frame the class and
    verdict (``RESULT_FIELDS``, valid where classified), the classified mask and the test run
    (return code, output frame)."""
    fd = obj.prog_fd(MAIN_PROG)
    env = np.zeros((len(frames), len(RESULT_FIELDS)), dtype=np.int64)
    classified = np.zeros(len(frames), dtype=bool)
    runs = []
    with pinned_to_one_cpu() as cpu:
        seen = classified_count(obj, cpu)
        for i, frame in enumerate(frames):
            runs.append(prog_test_run(fd, frame))
            now = classified_count(obj, cpu)
            if now != seen:
                classified[i] = True
                env[i] = env_results(obj, cpu, program)
            seen = now
    return env, classified, runs


def set_clock(obj: BpfObject, ns: int) -> None:
    obj.map("hmn_clock").update(0, struct.pack("<QQ", 1, ns))


def env_results(obj: BpfObject, cpu: int, program: CpuProgram) -> tuple[int, ...]:
    """The packet's class and verdict (``RESULT_FIELDS``) from the scratch map on ``cpu``."""
    values = obj.map("hmn_env").lookup(0)
    assert isinstance(values, list)
    offset = 8 * (pow2(len(program.features) + 1) + pow2(even(n_scores(program))))
    return struct.unpack_from("<6Q", values[cpu], offset)[1:]


def classified_count(obj: BpfObject, cpu: int) -> int:
    values = obj.map("hmn_stats").lookup(STAT_CLASSIFIED)
    assert isinstance(values, list)
    return int.from_bytes(values[cpu][:8], "little")


def reset_flow_state(obj: BpfObject) -> None:
    """Zero the flow state: the register arrays (hmn_r<i>, the decision's hmn_rdec) or a
    schedule's flows (hmn_flows)."""
    for name in obj.map_names():
        if name.startswith("hmn_r") or name == "hmn_flows":
            obj.map(name).clear()


def replay(obj: BpfObject, table: pd.DataFrame,
           read: Callable[[BpfObject, int], tuple[int, ...]], width: int
           ) -> tuple[np.ndarray, np.ndarray, list[RunResult]]:
    """Run every packet of ``table`` through ``hmn_xdp``: per packet ``read(obj, cpu)`` (its
    ``width`` results from the scratch map, read where the packet was classified), the
    classified mask and the test run (return code, output frame).

    Each capture (file_id) is replayed separately, in row order, with fresh flow state, as
    ``simulate_packets`` does (``per_capture``), the test clock at each packet's timestamp;
    results come back in the table's row order."""
    fd = obj.prog_fd(MAIN_PROG)
    out = np.zeros((len(table), width), dtype=np.uint64)
    classified = np.zeros(len(table), dtype=bool)
    runs: list[RunResult | None] = [None] * len(table)
    records = table.to_dict("records")
    ids = table["file_id"].to_numpy()
    with pinned_to_one_cpu() as cpu:
        for n, capture in enumerate(pd.unique(ids)):
            if n:
                reset_flow_state(obj)
            seen = classified_count(obj, cpu)
            for i in np.flatnonzero(ids == capture):
                row = records[i]
                set_clock(obj, int(row["ts_us"]) * 1000)
                runs[i] = prog_test_run(fd, packet_frame(row))
                now = classified_count(obj, cpu)
                if now != seen:
                    classified[i] = True
                    out[i] = read(obj, cpu)
                seen = now
    return out, classified, [r for r in runs if r is not None]


def run_frames(obj: BpfObject, program: CpuProgram, table: pd.DataFrame
               ) -> tuple[np.ndarray, np.ndarray, list[RunResult]]:
    """Run every packet of ``table`` through ``hmn_xdp`` (see :func:`replay`): per packet the
    class and verdict (``RESULT_FIELDS``, valid where classified), the classified mask and the
    test run (return code, output frame)."""
    return replay(obj, table, lambda o, cpu: env_results(o, cpu, program), len(RESULT_FIELDS))


def run_packets(obj: BpfObject, program: CpuProgram, table: pd.DataFrame
                ) -> tuple[TwinResult, np.ndarray, list[RunResult]]:
    """The result for the classified packets and the mask; plus the test runs of every
    packet."""
    env, classified, runs = run_frames(obj, program, table)
    rows = env[classified].astype(np.int64)
    fields = {name: rows[:, j] for j, name in enumerate(RESULT_FIELDS)}
    return TwinResult(rows[:, 0], fields), classified, runs


# ---------------------------------------------------------------------------------------------
# what the program must compute


def reference(program: CpuProgram, x: np.ndarray) -> TwinResult:
    """The expected result on feature rows: the CPU program's semantics (the quantised
    model's)."""
    fields = program.results(x)
    return TwinResult(fields["class_id"], fields)


def packet_features(program: CpuProgram, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per packet, the features the program computes (header fields as the parser reads them,
    flow features from the flow twin; each capture (file_id) starts with fresh flow state), and
    the mask of packets it classifies."""
    from homunculus.data.traffic import per_capture

    values, carried = header_feature_values(program, table)  # type: ignore[arg-type]
    if program.flow is not None:
        flow, n = program.flow, len(program.features)
        flow_values, _ = per_capture(table, lambda t: run_flow_program(flow, t, n))
        cols = [j for j, f in enumerate(program.features) if f.flow]
        values[:, cols] = flow_values[:, cols]
    return values, eligible_packets(table) & carried


def reference_packets(program: CpuProgram, table: pd.DataFrame) -> tuple[TwinResult, np.ndarray]:
    """The expected result for the classified packets and the classified mask (see
    :func:`packet_features`), with the per-flow decision applied by the reference's own flow
    bookkeeping when the program has one."""
    values, classified = packet_features(program, table)
    result = reference(program, values[classified])
    decision = program.flow.decision if program.flow is not None else None
    if decision is None:
        return result, classified
    from homunculus.data.traffic import packet_positions
    from homunculus.features.reference import flow_decisions

    positions, episodes = packet_positions(table, program.flow.config)  # type: ignore[union-attr]
    classes = flow_decisions(result.class_index, positions[classified], episodes[classified],
                             decision.at)
    rows = np.asarray(program.class_rows, dtype=np.int64)[classes]
    fields = {name: rows[:, j] for j, name in enumerate(RESULT_FIELDS)}
    return TwinResult(classes, fields), classified
