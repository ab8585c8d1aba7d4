"""The flow-state block on Tofino 1 (TNA): what one stateful ALU per register can do.

A Tofino 1 stateful ALU (bf-p4c ``TofinoDevice::getStatefulAluSpec``) holds a register of 8, 16
or 32 bits, makes at most two comparisons (memory, one PHV field and a constant each), computes
at most two values (two writes of one value need different predicates) and outputs one word. So:

* registers are stored at 8, 16 or 32 bits and saturate there (``|+|``); the flow feature reads
  ``min(stored, feature max)``, which equals the IR's saturation at the feature width because
  every saturating register only grows between resets;
* the signature register returns the new-flow flag itself (a predicate output), the last/first
  time registers return ``now - stored`` (the ALU-hi output) while storing ``now``, so time never
  passes through an action (``global_tstamp[41:10]`` crosses PHV containers: reading it in an
  action failed PHV allocation; a stateful ALU takes any 32-bit window as input);
* histogram bins come from one table per bin source over the value's top bits (a gateway may
  only compare a field with a constant and ranges are costly there), setting each register's
  ``hit`` input; the EWMA (``v - (v >> k) + (len >> k)``) needs a shift of the stored value,
  which a stateful ALU cannot do, so it is not available on Tofino.
"""

from __future__ import annotations

from typing import Any

from homunculus.ir.flow import FlowProgram, Register
from homunculus.passes.encode import range_to_prefixes

LEN_EXPR, LEN_WIDTH = "hdr.ipv4.total_len", 16
CLOCK = "ig_prsr_md.global_tstamp"
CLOCK_WIDTH = 48
CLOCK_SHIFT = 10  # ns >> 10: 1024 ns units (UNIT_NS["tna"])


class UnsupportedOnTofino(ValueError):
    """A flow feature a Tofino 1 stateful ALU cannot compute."""


def storage_width(width: int) -> int:
    """The Tofino register width holding a ``width``-bit value: 8, 16 or 32."""
    for size in (8, 16, 32):
        if width <= size:
            return size
    raise ValueError(f"register of {width} bits: Tofino registers hold at most 32")


def check_tofino_flow(program: FlowProgram) -> None:
    """Raise UnsupportedOnTofino naming the first register Tofino 1 cannot update."""
    for r in program.registers:
        if r.op == "ewma":
            raise UnsupportedOnTofino(
                f"flow register {r.name}: an EWMA of the packet length needs a shift of the "
                "stored value, which a Tofino stateful ALU cannot do (use bmv2, or another "
                "length feature)")


def now_expr(time_shift: int) -> str:
    """The flow clock as a 32-bit stateful-ALU input: bits of the 48-bit ns timestamp."""
    lo = CLOCK_SHIFT + time_shift
    hi = min(CLOCK_WIDTH - 1, lo + 31)
    window = f"{CLOCK}[{hi}:{lo}]"
    return window if hi - lo + 1 == 32 else f"(bit<32>){window}"


def bin_table(r: Register) -> dict[str, Any]:
    """The bin source of a histogram register: key = the value's bits above ``bin_shift``."""
    src, width = (LEN_EXPR, LEN_WIDTH) if r.op == "len_bin" else ("meta.hmn_iat", 32)
    prefix = "hmn_lbin" if r.op == "len_bin" else "hmn_ibin"
    key_width = width - r.bin_shift
    name = f"{prefix}_s{r.bin_shift}_n{r.bins}"
    if key_width <= 0:  # every value is in bin 0
        return {"name": name, "key": None, "key_width": 0, "entries": []}
    top = (1 << key_width) - 1
    entries = []
    for b in range(r.bins):
        lo = b
        hi = b if b < r.bins - 1 else top
        if lo > top:
            break
        entries += [{"value": t.value, "mask": t.mask, "bin": b}
                    for t in range_to_prefixes(lo, min(hi, top), key_width)]
    return {"name": name, "key": f"{src}[{width - 1}:{r.bin_shift}]", "key_width": key_width,
            "entries": entries}


def tofino_register_width(r: Register) -> int:
    """The declared width of a register on Tofino."""
    if r.op == "sig":
        return 16
    return 32 if r.op in ("last", "first") else storage_width(r.width)


def tna_registers(program: FlowProgram) -> list[dict[str, Any]]:
    """Per register: storage width and the stateful-ALU inputs it needs (for the template)."""
    check_tofino_flow(program)
    out = []
    for r in sorted(program.registers, key=lambda r: (r.stage, r.name)):
        size = tofino_register_width(r)
        ctx: dict[str, Any] = {"name": r.name, "op": r.op, "size": size, "stage": r.stage,
                               "value": f"hmn_rv_{r.name}", "param": r.param,
                               "len_field": None}
        if r.op == "add_len":
            ctx["len"] = LEN_EXPR if size == LEN_WIDTH else f"meta.hmn_in_{r.name}"
            ctx["len_field"] = None if size == LEN_WIDTH else f"hmn_in_{r.name}"
        if r.op in ("len_bin", "iat_bin"):
            ctx["hit"] = f"hmn_hit_{r.name}"
            ctx["bin"] = bin_table(r)
        out.append(ctx)
    return out


def bin_tables(registers: list[dict[str, Any]], op: str) -> list[dict[str, Any]]:
    """One table per bin source with one action per bin that some register counts."""
    tables: dict[str, dict[str, Any]] = {}
    for r in registers:
        if r["op"] != op:
            continue
        t = tables.setdefault(r["bin"]["name"], {**r["bin"], "actions": {}})
        t["actions"].setdefault(r["param"], []).append(r)
    result = []
    for t in tables.values():
        actions = [{"name": f"{t['name']}_b{b}", "bin": b,
                    "hits": [{"field": r["hit"], "size": r["size"]} for r in regs]}
                   for b, regs in sorted(t["actions"].items())]
        counted = {a["bin"] for a in actions}
        entries = [e for e in t["entries"] if e["bin"] in counted]
        result.append({"name": t["name"], "key": t["key"], "key_width": t["key_width"],
                       "actions": actions, "entries": entries})
    return result


def tna_meta_fields(registers: list[dict[str, Any]], idx_width: int, has_last: bool,
                    has_first: bool) -> list[dict[str, Any]]:
    """Metadata the TNA flow block writes."""
    fields = [{"name": n, "width": w} for n, w in (
        ("hmn_l4_sport", 16), ("hmn_l4_dport", 16), ("hmn_flow_hash", 32), ("hmn_sig_crc", 32),
        ("hmn_flow_slot", idx_width), ("hmn_flow_sig", 16), ("hmn_new_flow", 1))]
    if has_last:
        fields.append({"name": "hmn_iat", "width": 32})
    if has_first:
        fields.append({"name": "hmn_age", "width": 32})
    for r in registers:
        if r["op"] == "sig":
            continue
        fields.append({"name": r["value"], "width": r["size"]})
        if r.get("len_field"):
            fields.append({"name": r["len_field"], "width": r["size"]})
        if "hit" in r:
            fields.append({"name": r["hit"], "width": r["size"]})
    return fields
