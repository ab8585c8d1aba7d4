"""The twin of the generated flow-state code: register arrays updated packet by packet.

It executes the IR's register program (ir/flow.py) exactly as the generated P4 does it: one read-
modify-write per register per packet, in dependency order, with saturating arithmetic and 32-bit
time wrap-around. Its independent counterpart is the per-feature reference (features/reference.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from homunculus.features.reference import MASK32, now_of, slot_and_signature, tuple_bytes
from homunculus.ir.flow import FlowProgram, Register


def eligible_packets(table: pd.DataFrame) -> np.ndarray:
    """Packets that update flow state: IPv4 without options (what the generated parser reads)."""
    return table["has_ipv4"].to_numpy(bool) & (table["ip_ihl"].to_numpy() == 5)


def _step(r: Register, v: int, new: bool, length: int, iat: int) -> int:
    """The new stored value of register ``r`` (which is also what the packet reads)."""
    top = r.max_value
    if r.op == "count":
        return 1 if new else min(v + 1, top)
    if r.op == "add_len":
        return min(length, top) if new else min(v + length, top)
    if r.op == "min_len":
        return length if new else min(v, length)
    if r.op == "max_len":
        return length if new else max(v, length)
    if r.op == "ewma":
        return length if new else v - (v >> r.param) + (length >> r.param)
    if r.op == "len_bin":
        hit = min(length >> r.bin_shift, r.bins - 1) == r.param
        return int(hit) if new else (min(v + 1, top) if hit else v)
    if r.op == "iat_bin":
        hit = min(iat >> r.bin_shift, r.bins - 1) == r.param
        return 0 if new else (min(v + 1, top) if hit else v)
    raise ValueError(f"unknown register op {r.op}")


def run_flow_program(program: FlowProgram, table: pd.DataFrame,
                     n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Per packet: the flow features (other columns 0) and the eligibility mask."""
    out, eligible, _ = trace_flow_program(program, table, n_features)
    return out, eligible


def trace_flow_program(program: FlowProgram, table: pd.DataFrame, n_features: int
                       ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """:func:`run_flow_program` with, per packet, its slot and the value each register gave."""
    cfg = program.config
    regs = {r.name: [0] * cfg.slots for r in program.registers}
    state = [r for r in program.registers if r.op not in ("sig", "last", "first")]
    stage1 = [r for r in state if r.stage == 1]
    stage2 = [r for r in state if r.stage == 2]
    has_last = "r_last" in regs
    has_first = "r_first" in regs
    out = np.zeros((len(table), n_features), dtype=np.int64)
    eligible = eligible_packets(table)
    trace = {"slot": np.zeros(len(table), dtype=np.int64),
             **{r.name: np.zeros(len(table), dtype=np.int64) for r in state}}
    cols = {c: table[c].to_numpy() for c in ("ip_src", "ip_dst", "src_port", "dst_port",
                                              "ip_proto", "has_tcp", "has_udp", "ts_us",
                                              "ip_total_len")}
    for i in np.nonzero(eligible)[0]:
        l4 = bool(cols["has_tcp"][i] or cols["has_udp"][i])
        key = tuple_bytes(cols["ip_src"][i], cols["ip_dst"][i],
                          cols["src_port"][i] if l4 else 0, cols["dst_port"][i] if l4 else 0,
                          cols["ip_proto"][i])
        slot, sig = slot_and_signature(key, cfg.slots)
        now = now_of(cols["ts_us"][i], cfg)
        length = int(cols["ip_total_len"][i])
        new = regs["r_sig"][slot] != sig
        regs["r_sig"][slot] = sig
        iat = age = 0
        if has_last:
            old = regs["r_last"][slot]
            regs["r_last"][slot] = now
            iat = 0 if new else (now - old) & MASK32
        if has_first:
            if new:
                regs["r_first"][slot] = now
            age = (now - regs["r_first"][slot]) & MASK32
        read: dict[str, int] = {"iat": iat, "age": age}
        for r in (*stage1, *stage2):
            value = _step(r, regs[r.name][slot], new, length, iat)
            regs[r.name][slot] = value
            read[r.name] = value
            trace[r.name][i] = value
        trace["slot"][i] = slot
        for o in program.outputs:
            out[i, o.feature] = min(read[o.source], (1 << o.width) - 1)
    return out, eligible, trace


def run_decisions(program: FlowProgram, trace: dict[str, np.ndarray], eligible: np.ndarray,
                  classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The decision register packet by packet, as the generated code runs it after the model:
    (n, the register's output) per packet, given the model's class of every eligible packet.
    At n == N the register stores the class; it always gives back what it holds."""
    d = program.decision
    assert d is not None
    stored = [0] * program.config.slots
    counts = trace[d.count]
    given = np.zeros(len(counts), dtype=np.int64)
    for i in np.nonzero(eligible)[0]:
        slot = int(trace["slot"][i])
        if counts[i] == d.at:
            stored[slot] = int(classes[i]) & ((1 << d.width) - 1)
        given[i] = stored[slot]
    return counts.copy(), given
