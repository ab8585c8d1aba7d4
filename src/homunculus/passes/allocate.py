"""Stage allocation: place every unit of a switch program into pipeline stages.

A *unit* is whatever the compiler must give a place in a stage: a match table, an action with no
match (an ALU step, a copy), a gateway-chosen pair of actions, a stateful-ALU register access, a
hash computation. Each names the fields it reads and writes and what it uses of a stage's
resources. Units are placed in program order, each in the first stage that

* comes after the stage of every unit writing a field it reads or writes (a stage reads the
  packet's fields as they enter it, so a value written in stage s is visible from s + 1),
* has room for it under every per-stage limit (logical tables, ternary tables, TCAM and SRAM
  blocks, stateful ALUs, gateways, hash bits, match crossbar bytes, action-data bus bytes), and
* holds no other writer of a PHV container it writes: narrow fields that are not solitary are
  packed into shared 8-bit containers, and two tables writing one container cannot share a stage
  (bf-p4c's container conflicts).

A unit larger than an empty stage (memory, or a key wider than one stage's crossbar) is split
evenly over as many stages as it needs, so an oversized table costs stages instead of never
fitting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from homunculus.targets.base import StageUsage


@dataclass(frozen=True)
class StageCaps:
    """Per-stage limits (None = unlimited) and the memory block sizes."""

    logical: int | None = None  # logical table IDs (match tables, action-only tables)
    ternary: int | None = None  # TCAM (ternary and range) and ternary-indirect tables
    tcam_blocks: int | None = None
    sram_blocks: int | None = None
    salus: int | None = None  # stateful ALUs (register accesses)
    gateways: int | None = None
    hash_bits: int | None = None
    exact_xbar_bytes: int | None = None
    ternary_xbar_groups: int | None = None
    action_bus_bytes: int | None = None  # action data delivered to the ALUs per stage
    sram_block_bits: int = 1024 * 128
    tcam_block_bits: int = 512 * 44


@dataclass(frozen=True)
class Unit:
    """One thing to place: its dependencies and what it uses of one stage."""

    name: str
    kind: str  # "table", "action", "register", "hash", "condition"
    reads: frozenset[str] = frozenset()
    writes: frozenset[str] = frozenset()
    logical: int = 1
    ternary: int = 0
    tcam_blocks: int = 0
    sram_blocks: int = 0
    salus: int = 0
    gateways: int = 0
    hash_bits: int = 0
    exact_xbar_bytes: int = 0
    ternary_xbar_groups: int = 0
    action_bus_bytes: int = 0
    entries: int = 0
    packed_writes: frozenset[str] = frozenset()  # shared containers it writes (see module doc)


_SHARED = ("logical", "ternary", "tcam_blocks", "sram_blocks", "salus", "gateways",
           "hash_bits", "exact_xbar_bytes", "ternary_xbar_groups", "action_bus_bytes")
_SPLIT = _SHARED  # a unit larger than one stage is spread evenly over as many as it needs


@dataclass
class _Stage:
    units: list[Unit] = field(default_factory=list)
    used: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_SHARED, 0))
    containers: set[str] = field(default_factory=set)
    entries: int = 0


def span_of(unit: Unit, caps: StageCaps) -> int:
    """Stages ``unit`` must be split over so that each share fits an empty stage."""
    span = 1
    for key in _SPLIT:
        cap = getattr(caps, key)
        demand = getattr(unit, key)
        if cap is not None and demand:
            if cap <= 0:
                raise ValueError(f"{unit.kind} {unit.name} needs {key.replace('_', ' ')}, and "
                                 "the target profile allows none per stage")
            span = max(span, math.ceil(demand / cap))
    return span


def _share(unit: Unit, key: str, span: int) -> int:
    value = getattr(unit, key)
    return math.ceil(value / span) if key in _SPLIT else value


def _fits(stage: _Stage, unit: Unit, caps: StageCaps, span: int) -> bool:
    if unit.packed_writes & stage.containers:
        return False
    for key in _SHARED:
        cap = getattr(caps, key)
        if cap is not None and stage.used[key] + _share(unit, key, span) > cap:
            return False
    return True


def _earliest(unit: Unit, written: dict[str, int]) -> int:
    """First stage after every earlier writer of what ``unit`` reads or writes."""
    deps = [written[f] for f in unit.reads | unit.writes if f in written]
    return 1 + max(deps) if deps else 0


def place(units: list[Unit], caps: StageCaps) -> list[list[Unit]]:
    """Units per stage (see the module docstring for the rules)."""
    stages: list[_Stage] = []
    written: dict[str, int] = {}
    for unit in units:
        span = span_of(unit, caps)
        s = _earliest(unit, written)
        while True:
            while len(stages) < s + span:
                stages.append(_Stage())
            window = stages[s:s + span]
            if all(_fits(st, unit, caps, span) for st in window):
                break
            s += 1
        for st in window:
            st.units.append(unit)
            st.containers |= unit.packed_writes
            st.entries += math.ceil(unit.entries / span)
            for key in _SHARED:
                st.used[key] += _share(unit, key, span)
        last = s + span - 1
        for f in unit.writes:
            written[f] = max(written.get(f, -1), last)
    return [st.units for st in stages]


def stage_usage(stages: list[list[Unit]], caps: StageCaps) -> tuple[StageUsage, ...]:
    """The per-stage report: tables, other units, entries and memory (whole blocks)."""
    out = []
    for i, units in enumerate(stages):
        spans = {u.name: span_of(u, caps) for u in units}
        out.append(StageUsage(
            i,
            tuple(u.name for u in units if u.kind == "table"),
            tuple(f"{u.kind} {u.name}" for u in units if u.kind != "table"),
            sum(math.ceil(u.entries / spans[u.name]) for u in units),
            sum(math.ceil(u.sram_blocks / spans[u.name]) for u in units) * caps.sram_block_bits,
            sum(math.ceil(u.tcam_blocks / spans[u.name]) for u in units) * caps.tcam_block_bits,
        ))
    return tuple(out)


def pack_narrow(fields: list[tuple[str, int, str]]) -> dict[str, str]:
    """Narrow fields (< 8 bits) packed first-fit into shared 8-bit containers, in declaration
    order: field name -> container name. ``fields`` are (name, width, writer) triples; fields of
    one writer may share a container with anything."""
    containers: list[tuple[str, int]] = []
    out: dict[str, str] = {}
    for name, width, _writer in fields:
        if width >= 8:
            continue
        for i, (cname, used) in enumerate(containers):
            if used + width <= 8:
                containers[i] = (cname, used + width)
                out[name] = cname
                break
        else:
            cname = f"phv8_{len(containers)}"
            containers.append((cname, width))
            out[name] = cname
    return out
