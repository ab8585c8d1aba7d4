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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from homunculus.data.pcap import _frame
from homunculus.ir.pipeline import Pipeline
from homunculus.targets.p4.flow_twin import eligible_packets, run_flow_program
from homunculus.targets.p4.twin import (
    TwinResult,
    header_feature_values,
    simulate,
    simulate_packets,
)
from homunculus.targets.xdp.layout import Layout, layout_of
from homunculus.targets.xdp.loader import BpfObject, RunResult, load_object, prog_test_run
from homunculus.targets.xdp.snapshot import install

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
    obj = load_object(out_dir / "xdp" / snapshot["object"])
    try:
        install(obj, snapshot)
    except BaseException:
        obj.close()
        raise
    return obj, snapshot


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


def _result_fields(pipeline: Pipeline, layout: Layout) -> list[str]:
    return [layout.fields[layout.class_index].name, *(o.name for o in pipeline.verdict.outputs)]


def run_vectors(obj: BpfObject, pipeline: Pipeline, x: np.ndarray) -> tuple[TwinResult,
                                                                              list[int]]:
    """Per feature row: class and verdict outputs, and the XDP return codes."""
    layout = layout_of(pipeline)
    names = _result_fields(pipeline, layout)
    x = np.asarray(x, dtype=np.int64)
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


def _set_clock(obj: BpfObject, ns: int) -> None:
    obj.map("hmn_clock").update(0, struct.pack("<QQ", 1, ns))


def _env_row(obj: BpfObject, cpu: int, n_fields: int) -> tuple[int, ...]:
    values = obj.map("hmn_env").lookup(0)
    assert isinstance(values, list)
    return struct.unpack(f"<{n_fields}Q", values[cpu])


def _classified_count(obj: BpfObject, cpu: int) -> int:
    values = obj.map("hmn_stats").lookup(STAT_CLASSIFIED)
    assert isinstance(values, list)
    return int.from_bytes(values[cpu][:8], "little")


def _reset_flow_state(obj: BpfObject) -> None:
    for name in obj.map_names():
        if name.startswith("hmn_r"):
            obj.map(name).clear()


def run_frames(obj: BpfObject, pipeline: Pipeline, table: pd.DataFrame
               ) -> tuple[np.ndarray, np.ndarray, list[RunResult]]:
    """Run every packet of ``table`` through ``hmn_xdp``: per packet the env fields (valid
    where classified), the classified mask and the test run (return code, output frame).

    Each capture (file_id) is replayed separately, in row order, with fresh flow state, as
    ``simulate_packets`` does (``per_capture``); results come back in the table's row order."""
    layout = layout_of(pipeline)
    fd = obj.prog_fd(MAIN_PROG)
    env = np.zeros((len(table), layout.n_fields), dtype=np.uint64)
    classified = np.zeros(len(table), dtype=bool)
    runs: list[RunResult | None] = [None] * len(table)
    records = table.to_dict("records")
    ids = table["file_id"].to_numpy()
    with pinned_to_one_cpu() as cpu:
        for n, capture in enumerate(pd.unique(ids)):
            if n:
                _reset_flow_state(obj)
            seen = _classified_count(obj, cpu)
            for i in np.flatnonzero(ids == capture):
                row = records[i]
                _set_clock(obj, int(row["ts_us"]) * 1000)
                runs[i] = prog_test_run(fd, packet_frame(row))
                now = _classified_count(obj, cpu)
                if now != seen:
                    classified[i] = True
                    env[i] = _env_row(obj, cpu, layout.n_fields)
                seen = now
    return env, classified, [r for r in runs if r is not None]


def run_packets(obj: BpfObject, pipeline: Pipeline, table: pd.DataFrame
                ) -> tuple[TwinResult, np.ndarray, list[RunResult]]:
    """Like ``simulate_packets``: the result for the classified packets and the mask; plus the
    test runs of every packet."""
    layout = layout_of(pipeline)
    env, classified, runs = run_frames(obj, pipeline, table)
    rows = env[classified].astype(np.int64)
    fields = {f.name: rows[:, j] for j, f in enumerate(layout.fields)}
    return TwinResult(rows[:, layout.class_index], fields), classified, runs


# ---------------------------------------------------------------------------------------------
# what the program must compute


def reference(pipeline: Pipeline, x: np.ndarray) -> TwinResult:
    """The expected result on feature rows: the match-action twin, or for MLP pipelines
    ``QMLP.scores`` arg-max (ties to the lowest index) followed by the verdict table."""
    return simulate(pipeline, x)


def reference_packets(pipeline: Pipeline, table: pd.DataFrame) -> tuple[TwinResult, np.ndarray]:
    """``simulate_packets`` for any pipeline (MLPs too): the expected result for the classified
    packets and the classified mask; each capture (file_id) starts with fresh flow state."""
    if pipeline.mlp is None:
        return simulate_packets(pipeline, table)
    from homunculus.data.traffic import per_capture

    values, carried = header_feature_values(pipeline, table)
    if pipeline.flow is not None:
        program, n = pipeline.flow, len(pipeline.features)
        flow_values, _ = per_capture(table, lambda t: run_flow_program(program, t, n))
        cols = [j for j, f in enumerate(pipeline.features) if f.flow]
        values[:, cols] = flow_values[:, cols]
    classified = eligible_packets(table) & carried
    return reference(pipeline, values[classified]), classified
