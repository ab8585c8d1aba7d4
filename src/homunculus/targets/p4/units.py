"""The generated program as units for stage allocation (passes/allocate.py).

This mirrors the templates statement by statement, so that what the allocation counts is what
the program contains: the default forwarding, the flow-state block (port copies, hashes, slot and
signature, one stateful ALU per register, bin tables, time selects, feature clamps), the copies
of TCP-or-UDP ports, every table, every ALU step, the verdict table and, on TNA, the deparser's
checksum condition (bf-p4c places it in a table of its own after the flag's last writer).
Header fields are available from stage 0; every metadata field from the stage after its writer.
"""

from __future__ import annotations

import math
from typing import Any

from homunculus.data.packets import PORT_PAIR_FIELDS
from homunculus.ir.pipeline import MatchKind, Pipeline, Table
from homunculus.passes.allocate import Unit, pack_narrow
from homunculus.passes.switch import FLOW_CLASS, FLOW_COUNT, MODEL_CLASS, ternary_groups
from homunculus.targets.p4.actions import table_actions
from homunculus.targets.p4.codegen import CSUM_FLAG, flow_context
from homunculus.targets.p4.keys import feature_keys
from homunculus.targets.p4.profiles import SwitchProfile

PORT = "ig_tm_md.ucast_egress_port"
CARRY_HEADER = "hdr.hmn_cin"


def table_unit(table: Table, profile: SwitchProfile, reads: frozenset[str],
               writes: frozenset[str], packed: frozenset[str] = frozenset()) -> Unit:
    """A match table: ternary keys in TCAM (action data in SRAM), exact keys hashed into SRAM."""
    n = len(table.entries)
    data = max(table.data_width, 1)
    key_bits = table.key_width
    bus = math.ceil(table.data_width / 8)  # action data bytes on the stage's action bus
    if not table.keys:  # keyless: its default action only
        return Unit(table.name, "table", reads, writes, logical=1, ternary=1, entries=0,
                    packed_writes=packed, action_bus_bytes=bus)
    rows = math.ceil(max(n, 1) / profile.sram_block_entries)
    if table.match_kind is MatchKind.EXACT:
        words = math.ceil((key_bits + data) / profile.sram_block_width)
        return Unit(table.name, "table", reads, writes, sram_blocks=rows * words, entries=n,
                    exact_xbar_bytes=math.ceil(key_bits / 8), packed_writes=packed,
                    action_bus_bytes=bus)
    tcam = math.ceil(max(n, 1) / profile.tcam_block_entries) * ternary_groups(key_bits)
    sram = rows * math.ceil(data / profile.sram_block_width)
    return Unit(table.name, "table", reads, writes, ternary=1, tcam_blocks=tcam,
                sram_blocks=sram, entries=n, action_bus_bytes=bus,
                ternary_xbar_groups=ternary_groups(key_bits), packed_writes=packed)


def _reads_of_keys(table: Table, direct: dict[str, str]) -> frozenset[str]:
    """What a table's keys read: header fields (stage 0) are not dependencies."""
    return frozenset(k.name for k in table.keys if k.name not in direct)


def _flow_units(flow: dict[str, Any], profile: SwitchProfile) -> list[Unit]:
    """The TNA flow block, statement by statement (templates/flow_tna.p4.j2)."""
    tna = flow["tna"]
    slots = flow["slots"]
    units = [Unit("flow_ports", "action", writes=frozenset({"hmn_l4_sport", "hmn_l4_dport"}),
                  logical=3, gateways=2),
             Unit("flow_key_hash", "hash", frozenset({"hmn_l4_sport", "hmn_l4_dport"}),
                  frozenset({"hmn_flow_hash"}), logical=1, hash_bits=32),
             Unit("flow_sig_hash", "hash", frozenset({"hmn_l4_sport", "hmn_l4_dport"}),
                  frozenset({"hmn_sig_crc"}), logical=1, hash_bits=32),
             Unit("flow_slot_sig", "action", frozenset({"hmn_flow_hash", "hmn_sig_crc"}),
                  frozenset({"hmn_flow_slot", "hmn_flow_sig"}))]

    def register(r: dict[str, Any], reads: set[str], output: str) -> Unit:
        blocks = math.ceil(slots * r["size"] / profile.sram_block_bits) + 1  # + a spare bank
        return Unit(r["name"], "register", frozenset({"hmn_flow_slot", *reads}),
                    frozenset({output}), salus=1, sram_blocks=blocks)

    regs = tna["by_name"]
    units.append(register(regs[flow["sig"]["name"]], {"hmn_flow_sig"}, "hmn_new_flow"))
    for r in tna["registers"]:
        if r["len_field"]:
            units.append(Unit(f"flow_in_{r['name']}", "action",
                              writes=frozenset({r["len_field"]}), gateways=1, logical=2))
    units += [_bin_unit(t, profile, frozenset()) for t in tna["len_bin_tables"]]
    for key, out in (("last", "hmn_iat"), ("first", "hmn_age")):
        if flow[key] is not None:
            r = regs[flow[key]["name"]]
            units.append(register(r, {"hmn_new_flow"}, r["value"]))
            units.append(Unit(f"flow_{out}", "action", frozenset({"hmn_new_flow", r["value"]}),
                              frozenset({out}), logical=2, gateways=1))
    for stage in ("stage1", "stage2"):
        if stage == "stage2":
            units += [_bin_unit(t, profile, frozenset({"hmn_iat"}))
                      for t in tna["iat_bin_tables"]]
        for ctx in flow[stage]:
            r = regs[ctx["name"]]
            inputs = {"hmn_new_flow", *([r["len_field"]] if r["len_field"] else []),
                      *([r["hit"]] if "hit" in r else [])}
            units.append(register(r, inputs, r["value"]))
    for o in flow["outputs"]:
        clamp = o["clamp"] is not None
        units.append(Unit(f"flow_out_{o['dst']['name']}", "action",
                          frozenset({o["src"]["name"]}), frozenset({o["dst"]["name"]}),
                          logical=2 if clamp else 1, gateways=int(clamp)))
    if flow["decision"] is not None:
        units.append(decision_count_unit(flow["decision"]))
    return units


def decision_count_unit(decision: dict[str, Any]) -> Unit:
    """The per-flow decision's count, copied where the verdict table reads it."""
    return Unit("flow_count_copy", "action", frozenset({decision["count"]}),
                frozenset({FLOW_COUNT}))


def decision_units(pipeline: Pipeline, flow: dict[str, Any], profile: SwitchProfile,
                   direct: dict[str, str]) -> list[Unit]:
    """The model's class (the decider table), then the decision register (one stateful ALU
    on TNA: it stores the class at n == N and gives back what it holds)."""
    assert pipeline.decider is not None
    d = flow["decision"]
    blocks = math.ceil(flow["slots"] * d["width"] / profile.sram_block_bits) + 1
    return [table_unit(pipeline.decider, profile, _reads_of_keys(pipeline.decider, direct),
                       frozenset({MODEL_CLASS})),
            Unit(d["register"], "register", frozenset({"hmn_flow_slot", MODEL_CLASS, FLOW_COUNT}),
                 frozenset({FLOW_CLASS}), salus=1, sram_blocks=blocks)]


def _bin_unit(t: dict[str, Any], profile: SwitchProfile, reads: frozenset[str]) -> Unit:
    hits = frozenset(h["field"] for a in t["actions"] for h in a["hits"])
    if t["key"] is None:
        return Unit(t["name"], "action", reads, hits)
    n = len(t["entries"])
    return Unit(t["name"], "table", reads, hits, ternary=1, entries=n,
                tcam_blocks=math.ceil(max(n, 1) / profile.tcam_block_entries)
                * ternary_groups(t["key_width"]), ternary_xbar_groups=1)


def program_units(pipeline: Pipeline, profile: SwitchProfile, *, solitary: bool = True,
                  verdict_in_actions: bool = True, telemetry: bool = False) -> list[Unit]:
    """Every unit of the program generated for ``pipeline`` (switch-lowered), in program order.

    ``solitary=False`` and ``verdict_in_actions=False`` describe the programs of earlier
    releases (narrow fields packed; the verdict applied by if/else after its table), which the
    calibration against the real compiler's reports uses.
    """
    arch = profile.arch
    direct = feature_keys(pipeline)
    flow = flow_context(pipeline, arch)
    units = [Unit("default_port", "action", writes=frozenset({PORT}))]
    if flow is not None and arch == "tna":
        units += _flow_units(flow, profile)
    elif flow is not None:  # bmv2: no stages; the flow block is one unit per register
        units += [Unit(r["name"], "register", writes=frozenset({f["name"] for f in r["fields"]}),
                       salus=1) for r in flow["registers"]]
        if flow["decision"] is not None:
            units.append(decision_count_unit(flow["decision"]))
    if any(k.name == "model_version" for t in pipeline.tables() for k in t.keys):
        # the version register, read once; every model table keys on what it read
        units.append(Unit("hmn_version", "register", writes=frozenset({"model_version"}),
                          salus=1, sram_blocks=2))
    copied = [f for f in pipeline.features if not f.flow and f.field.name not in direct]
    pairs = [f.field.name for f in copied if f.header_field in PORT_PAIR_FIELDS]
    for name in [f.field.name for f in copied if f.header_field not in PORT_PAIR_FIELDS]:
        units.append(Unit(f"copy_{name}", "action", writes=frozenset({name}), logical=3,
                          gateways=2))
    if pairs:  # both ports widened, their difference, then a sign-bit select per feature
        ports = frozenset({"hmn_port_a", "hmn_port_b"})
        units += [Unit("port_pair_copy", "action", writes=ports, logical=3, gateways=2),
                  Unit("port_pair_diff", "action", ports, frozenset({"hmn_port_d"}))]
        units += [Unit(f"copy_{name}", "action", ports | {"hmn_port_d"}, frozenset({name}),
                       logical=2, gateways=1) for name in pairs]
    narrow = [(name, width, "") for name, width in _written_fields(pipeline)]
    packed = {} if solitary else pack_narrow(narrow)
    if pipeline.carry_in and not pipeline.carry_out:  # the last device strips the carry header
        units.append(Unit("hmn_carry_strip", "action",
                          writes=frozenset({"hdr.ethernet.ether_type", CARRY_HEADER})))
    for item in pipeline.sequence():
        if isinstance(item, Table):
            writes = frozenset(o.name for o in item.outputs)
            units.append(table_unit(item, profile, _reads_of_keys(item, direct), writes,
                                    frozenset(packed[w] for w in writes if w in packed)))
            continue
        guarded = item.guard is not None
        units.append(Unit(item.name, "action", frozenset(f.name for f in item.reads),
                          frozenset(f.name for f in item.writes), logical=2 if guarded else 1,
                          gateways=int(guarded)))
    if pipeline.decider is not None and flow is not None:
        units += decision_units(pipeline, flow, profile, direct)
    if pipeline.carry_out:  # one action copies the partial results into the carry header
        units.append(Unit("hmn_carry_out", "action",
                          frozenset(f.name for f in pipeline.carry_out),
                          frozenset({"hdr.ethernet.ether_type", CARRY_HEADER, "hdr.hmn_cout"})))
    verdict_writes = {pipeline.class_field.name, PORT}
    kinds = {a.kind for a in table_actions(pipeline.verdict)}
    if "verdict_mark" in kinds:
        verdict_writes |= {CSUM_FLAG, "hdr.ipv4.diffserv"}
    if not verdict_in_actions:  # the verdict's outputs land in metadata, then if/else acts
        outputs = {o.name for o in pipeline.verdict.outputs}
        units.append(table_unit(pipeline.verdict, profile,
                                _reads_of_keys(pipeline.verdict, direct), frozenset(outputs)))
        units.append(Unit("verdict_apply", "action", frozenset(outputs),
                          frozenset(verdict_writes), logical=3, gateways=2))
    else:
        units.append(table_unit(pipeline.verdict, profile,
                                _reads_of_keys(pipeline.verdict, direct),
                                frozenset(verdict_writes)))
    if telemetry:  # the record's ports and flags, the sampling counter, the digest flag
        units.append(Unit("telemetry_fields", "action",
                          writes=frozenset({"hmn_tel_sport", "hmn_tel_dport", "hmn_tel_flags"}),
                          logical=3, gateways=2))
        units.append(Unit("hmn_tel_ctr", "register", frozenset({pipeline.class_field.name}),
                          frozenset({"hmn_sampled"}), salus=1, sram_blocks=2))
        units.append(Unit("telemetry_digest", "condition", frozenset({"hmn_sampled"}),
                          frozenset({"ig_dprsr_md.digest_type"}), gateways=1))
    if arch == "tna" and "verdict_mark" in kinds:
        units.append(Unit("ipv4_checksum_condition", "condition", frozenset({CSUM_FLAG}),
                          frozenset({"hmn_deparser_csum"}), exact_xbar_bytes=1))
    return units


def _written_fields(pipeline: Pipeline) -> list[tuple[str, int]]:
    """Fields written by tables, in declaration order."""
    out: list[tuple[str, int]] = []
    decider = (pipeline.decider,) if pipeline.decider is not None else ()
    for t in (*[i for i in pipeline.sequence() if isinstance(i, Table)], *decider,
              pipeline.verdict):
        out += [(o.name, o.width) for o in t.outputs]
    return out
