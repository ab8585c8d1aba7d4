"""Cost model of the XDP program: instructions, map memory and per-packet latency (one core).

Worst case: every table is scanned to its last entry (``bpf_loop`` over ``count`` entries).
The nanosecond constants were calibrated once with BPF_PROG_TEST_RUN (``repeat`` 200000, best of
three) on the development machine (kernel 6.18, x86-64, JIT on): e.g. a 5-table decision tree
37-55 ns, 4 tables / 43 entries 130 ns, 14 tables / 165 entries 560 ns, 34 tables / 233 entries
900 ns on the feature-vector entry; the packet entry with 16 flow registers and one table
190 ns. MLPs (one ``bpf_loop`` step per output, multiply-accumulates unrolled): 4-4-3 58 ns,
8-16-16-3 417 ns, 8-64-3 692 ns, 8-64-64-3 3.6 us, 16-64-64-64-3 6.8 us. Instruction counts are a
rough static model of instructions executed per packet.
"""

from __future__ import annotations

from dataclasses import dataclass

from homunculus.ir.pipeline import Pipeline
from homunculus.targets.base import Usage
from homunculus.targets.xdp.layout import layout_of

NS_BASE = 20.0  # parse Ethernet/VLAN/IPv4/L4, slot read, counters
NS_TABLE = 5.0  # meta lookup, bpf_loop set-up, result copy
NS_ENTRY = 2.5  # one callback: row lookup and the first key compare
NS_KEY = 0.3  # each further key compare
NS_FLOW = 25.0  # clock, two CRC-32s over 13 bytes, signature/time registers
NS_REGISTER = 8.0  # one register: map lookup and its op (a global function call)
NS_SCORE_TERM = 0.5
NS_MAC = 0.68  # one multiply-accumulate of a dense layer
NS_NEURON = 2.9  # one dense output: bpf_loop step, map lookups, requantisation, activation

INSN_BASE, INSN_TABLE, INSN_ENTRY, INSN_KEY = 150, 40, 12, 6
INSN_FLOW, INSN_REGISTER, INSN_SCORE_TERM = 200, 30, 2
INSN_MAC, INSN_NEURON = 3, 30


@dataclass(frozen=True)
class XdpCost:
    instructions: int  # executed per packet, worst case
    map_bytes: int  # model, flow-state and control maps (per-CPU maps counted once)
    latency_ns: float
    tables: int
    entries: int


def _scan(pipeline: Pipeline) -> tuple[int, int]:
    entries = sum(len(t.entries) for t in pipeline.tables())
    keys = sum(len(t.entries) * max(len(t.keys) - 1, 0) for t in pipeline.tables())
    return entries, keys


def dense_work(pipeline: Pipeline) -> tuple[int, int]:
    """Multiply-accumulates and outputs of the MLP (0, 0 without one)."""
    if pipeline.mlp is None:
        return 0, 0
    shapes = [layer.shape for layer in pipeline.mlp.layers]
    return sum(o * i for o, i in shapes), sum(o for o, _ in shapes)


def map_bytes(pipeline: Pipeline) -> int:
    layout = layout_of(pipeline)
    n = 8 * layout.total_rows * layout.row_words + 8 * 2 * len(layout.tables) * layout.meta_words
    if layout.score is not None:
        n += 2 * 8 * len(layout.score.outputs)
    if layout.mlp is not None:
        n += 2 * 4 * layout.mlp.words + 4 * (layout.mlp.n_in + sum(layout.mlp.widths))
    if pipeline.flow is not None:
        n += 4 * pipeline.flow.config.slots * len(pipeline.flow.registers)
    n += 8 * layout.n_fields + 8 * (layout.n_classes + 1) + 8 * 5 + 16 + 4
    return n


def cost(pipeline: Pipeline) -> XdpCost:
    tables = len(list(pipeline.tables()))
    entries, keys = _scan(pipeline)
    terms = sum(len(t) for t in pipeline.score_sum.terms) if pipeline.score_sum else 0
    registers = len(pipeline.flow.registers) if pipeline.flow is not None else 0
    flow = pipeline.flow is not None
    macs, neurons = dense_work(pipeline)
    ns = (NS_BASE + NS_TABLE * tables + NS_ENTRY * entries + NS_KEY * keys
          + NS_SCORE_TERM * terms + (NS_FLOW + NS_REGISTER * registers if flow else 0.0)
          + NS_MAC * macs + NS_NEURON * neurons)
    insns = (INSN_BASE + INSN_TABLE * tables + INSN_ENTRY * entries + INSN_KEY * keys
             + INSN_SCORE_TERM * terms + (INSN_FLOW + INSN_REGISTER * registers if flow else 0)
             + INSN_MAC * macs + INSN_NEURON * neurons)
    return XdpCost(insns, map_bytes(pipeline), ns, tables, pipeline.n_entries)


def estimate(pipeline: Pipeline) -> Usage:
    """Usage: map memory in sram_kbit, no TCAM, no stages; throughput of one core."""
    c = cost(pipeline)
    return Usage(stages=0, tables=c.tables, sram_kbit=c.map_bytes * 8 / 1024, tcam_kbit=0.0,
                 entries=c.entries, phv_bits=0, throughput_gpps=1.0 / c.latency_ns,
                 latency_ns=c.latency_ns, instructions=c.instructions)
