"""Emit a P4_16 program (v1model or TNA) for an integer table pipeline.

Python only prepares a plain context dict; all P4 text lives in the Jinja2 templates next to this
module (``templates/common.p4.j2`` holds what both architectures share). Names that reach code are
the pipeline's sanitised field and table names, re-checked here; user strings (class labels,
feature names, the program name) only ever appear through :func:`safe_comment` in comments.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import jinja2

from homunculus.data.packets import PORT_PAIR_FIELDS
from homunculus.features.headers import lookup_header_field
from homunculus.ir.flow import REGISTER_OPS, FlowOutput, FlowProgram, Register
from homunculus.ir.names import safe_comment
from homunculus.ir.pipeline import AluKind, AluOp, AluStep, Field, Pipeline, Table
from homunculus.passes.switch import lower_for_switch
from homunculus.targets.p4.actions import ActionDecl, action_call, table_actions
from homunculus.targets.p4.flow_tna import bin_tables, now_expr, tna_meta_fields, tna_registers
from homunculus.targets.p4.keys import KeyView, feature_keys, header_key, key_views
from homunculus.targets.templating import code_env

INGRESS_CONTROL = "MyIngress"
"""Name of the ingress control in both architectures (tables are ``MyIngress.<table>``)."""

CSUM_FLAG = "hmn_ipv4_csum_update"
"""Internal metadata flag: the DSCP was rewritten, so the IPv4 checksum must be recomputed."""

UNIT_NS = {"v1model": 1000, "tna": 1024}
"""Flow time unit per architecture: bmv2 timestamps are microseconds; Tofino's ns clock >> 10."""

TIME_BASE_SHIFT = {"v1model": 0, "tna": 10}
"""Right shift turning the architecture's timestamp into ``UNIT_NS`` units."""

LEN_EXPR, LEN_WIDTH = "hdr.ipv4.total_len", 16
"""The packet length of the flow features (features/library.py): the IPv4 total length."""

PORT_PAIR_META = (("hmn_port_a", 17), ("hmn_port_b", 17), ("hmn_port_d", 17))
"""Server/client ports (``l4.server_port``: the smaller TCP/UDP port, ``l4.client_port``: the
larger): both ports widened by a bit, their difference, whose top bit says which is smaller (a
condition may not compare two fields)."""

KEY_FIELDS = (("hdr.ipv4.src_addr", 32), ("hdr.ipv4.dst_addr", 32), ("meta.hmn_l4_sport", 16),
              ("meta.hmn_l4_dport", 16), ("hdr.ipv4.protocol", 8))
"""The flow key, big endian in this order (features/library.py): 13 bytes."""

_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
_RESERVED = frozenset({
    "abstract", "action", "actions", "apply", "bit", "bool", "break", "const", "continue",
    "control", "default", "default_action", "else", "entries", "enum", "error", "exact", "exit",
    "extern", "false", "header", "header_union", "if", "in", "inout", "int", "key", "list", "lpm",
    "match_kind", "out", "package", "parser", "priority", "range", "return", "select", "selector",
    "size", "state", "string", "struct", "switch", "table", "ternary", "this", "transition",
    "true", "tuple", "type", "typedef", "value_set", "varbit", "void", "accept", "reject",
    "start", "meta", "hdr", "pkt", "packet", "standard_metadata", "ig_intr_md", "ig_prsr_md",
    "ig_dprsr_md", "ig_tm_md", "eg_intr_md", "main", "pipe",
    # architecture externs and functions (v1model, tna) and names the templates declare
    "counter", "meter", "register", "hash", "random", "digest", "clone", "resubmit",
    "recirculate", "truncate", "mark_to_drop", "verify_checksum", "update_checksum", "verify",
    "direct_counter", "direct_meter", "action_profile", "action_selector", "min", "max",
    "invalidate", "ethernet", "ipv4", "tcp", "udp", "ethernet_h", "ipv4_h", "tcp_h", "udp_h",
    "vlan0", "vlan1", "vlan_h", "l4",
    "headers_t", "metadata_t", "packet_in", "packet_out", "noaction",
})


def template_env() -> jinja2.Environment:
    """The Jinja2 environment over this package's ``templates`` directory."""
    return code_env("homunculus.targets.p4")


def render(template: str, context: dict[str, Any]) -> str:
    """Render the named template with ``context``."""
    return template_env().get_template(template).render(**context)


def check_identifier(name: str, what: str) -> str:
    """Return ``name`` if it is a safe, non-reserved P4/Python identifier, else raise ValueError."""
    if not _IDENT.match(name) or name in _RESERVED or name.startswith("hmn_"):
        raise ValueError(f"{what} '{safe_comment(name)}' is not a safe generated identifier")
    return name


def _field(f: Field, what: str) -> dict[str, Any]:
    """A checked field as a template dict."""
    check_identifier(f.name, what)
    if f.width < 1:
        raise ValueError(f"{what} '{f.name}' has width {f.width} < 1")
    return {"name": f.name, "width": f.width}


def _literal(value: int, width: int, what: str) -> dict[str, int]:
    """A checked unsigned literal of ``width`` bits as a template dict."""
    if not 0 <= value < (1 << width):
        raise ValueError(f"{what}: value {value} does not fit in {width} bits")
    return {"value": value, "width": width}


def _key_context(table: Table, views: tuple[KeyView, ...]) -> list[dict[str, Any]]:
    keys = []
    for key, kind, view in zip(table.keys, table.kinds, views, strict=True):
        _field(key, f"key of {table.name}")
        keys.append({"expr": view.expr, "kind": str(kind), "name": view.name})
    return keys


def _action_context(action: ActionDecl, table: Table) -> dict[str, Any]:
    check_identifier(action.name, f"action of {table.name}")
    params = [_field(p, f"parameter of {action.name}") for p in action.params]
    roles = {p["name"].removeprefix("verdict_") if p["name"].startswith("verdict_") else "class":
             p for p in params}
    return {"name": action.name, "kind": action.kind, "params": params, "roles": roles}


def table_context(table: Table, views: tuple[KeyView, ...]) -> dict[str, Any]:
    """Template dict for one table, its actions and its default action call."""
    check_identifier(table.name, "table name")
    default_action, args = action_call(table, table.default)
    return {
        "name": table.name,
        "role": str(table.role),
        "key_fields": _key_context(table, views),
        "actions": [_action_context(a, table) for a in table_actions(table)],
        "size": max(1, len(table.entries)),
        "default": {"action": default_action.name, "args": [
            _literal(v, p.width, f"default of {table.name}")
            for v, p in zip(args, default_action.params, strict=True)]},
    }


def _feature_context(pipeline: Pipeline) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Features copied into metadata (those not matched on their header field directly) and the
    feature header layout, if any. Flow features are written by the flow-state block."""
    copies: list[dict[str, Any]] = []
    carried: list[dict[str, Any]] = []
    for feat in pipeline.features:
        dst = _field(feat.field, "feature field")
        if feat.flow:
            continue
        if feat.header_field is None:
            carried.append(dst)
            continue
        try:
            hf = lookup_header_field(feat.header_field)
        except KeyError as exc:
            raise ValueError(str(exc)) from None
        if header_key(feat.header_field, feat.field.name, feat.field.width, False) is None:
            copies.append({"dst": dst, "header": hf.header, "field": hf.field,
                           "width": hf.width, "pair": PORT_PAIR_FIELDS.get(feat.header_field)})
    if not carried:
        return copies, None
    total = sum(f["width"] for f in carried)
    return copies, {"fields": carried, "pad": -total % 8}


CARRY_ETHER_TYPE = 0x88B5
"""EtherType of the Homunculus carry header (IEEE 802 local experimental EtherType 1): a split
model's partial results between devices, inserted right after the Ethernet header."""

CARRY_HEADERS = {"tcp", "udp", "hmn_cin"}
"""Header groups a pipeline's ``requires`` may name."""


def _required_headers(pipeline: Pipeline, feature_header: dict[str, Any] | None) -> list[str]:
    """Headers a packet must carry to be classified (besides IPv4)."""
    needed = set(pipeline.requires)
    if not needed <= CARRY_HEADERS:
        raise ValueError(f"unknown required headers {sorted(needed - CARRY_HEADERS)}")
    if pipeline.carry_in:
        needed.add("hmn_cin")
    for feat in pipeline.features:
        if feat.flow or feat.header_field is None:
            continue
        header = lookup_header_field(feat.header_field).header
        if header not in ("ethernet", "ipv4", "l4"):
            needed.add(header)
    if "tcp" in needed and ("udp" in needed or feature_header is not None):
        raise ValueError("features need both TCP and UDP (or feature-header) fields; "
                         "no packet carries both")
    if feature_header is not None:
        needed.add("hmn_features")
    return sorted(needed)


def _operand(operand: Field | int, width: int, what: str) -> str:
    if isinstance(operand, Field):
        return f"meta.{_field(operand, what)['name']}"
    lit = _literal(operand, width, what)
    return f"{lit['width']}w{lit['value']}"


def _op_context(op: AluOp) -> dict[str, Any]:
    """``meta.dst = a [+-] b`` with every operand at the destination's width (no casts)."""
    dst = _field(op.dst, "ALU destination")
    what = f"operand of {op.dst.name}"
    a = _operand(op.a, op.dst.width, what)
    if op.kind is AluKind.SET:
        return {"dst": dst["name"], "expr": a}
    assert op.b is not None
    sign = "+" if op.kind is AluKind.ADD else "-"
    return {"dst": dst["name"], "expr": f"{a} {sign} {_operand(op.b, op.dst.width, what)}"}


def _step_context(step: AluStep) -> dict[str, Any]:
    """One ALU step: an action (two, chosen by a one-bit gateway, when guarded)."""
    name = check_identifier(step.name, "ALU step")
    ctx: dict[str, Any] = {"name": name, "action": f"hmn_{name}",
                           "ops": [_op_context(op) for op in step.ops], "guard": None}
    if step.guard is not None:
        field, bit = step.guard
        _field(field, "guard field")
        if not 0 <= bit < field.width:
            raise ValueError(f"step {name}: guard bit {bit} outside {field.name}")
        ctx["guard"] = {"field": field.name, "bit": bit}
        ctx["else_action"] = f"hmn_{name}_else"
        ctx["else_ops"] = [_op_context(op) for op in step.otherwise]
    return ctx


def _metadata(pipeline: Pipeline, direct: dict[str, str]) -> list[dict[str, Any]]:
    """Every metadata field the program uses, once, in pipeline order (conflicting widths are an
    error). Features matched on their header field and verdict outputs the verdict's actions
    apply directly are not metadata."""
    fields: list[Field] = [f.field for f in pipeline.features if f.field.name not in direct]
    decider = (pipeline.decider,) if pipeline.decider is not None else ()
    for table in (*pipeline.encoders, *pipeline.lookups, *decider):
        fields += [k for k in table.keys if k.name not in direct]
        fields += list(table.outputs)
    for step in pipeline.alu:
        fields += [*step.reads, *step.writes]
    fields += [k for k in pipeline.verdict.keys if k.name not in direct]
    fields.append(pipeline.class_field)
    fields += [*pipeline.carry_in, *pipeline.carry_out]
    seen: dict[str, int] = {}
    result: list[dict[str, Any]] = []
    for f in fields:
        entry = _field(f, "pipeline field")
        if f.name in seen:
            if seen[f.name] != f.width:
                raise ValueError(f"field '{f.name}' used with widths {seen[f.name]} and {f.width}")
            continue
        seen[f.name] = f.width
        result.append(entry)
    return result


def _check_structure(pipeline: Pipeline) -> None:
    """Cross-field consistency the templates rely on."""
    names = [t.name for t in pipeline.tables()]
    names += [a.name for t in pipeline.tables() for a in table_actions(t)]
    names += [f"hmn_{s.name}" for s in pipeline.alu] + [f"hmn_{s.name}_else" for s in pipeline.alu]
    if len(set(names)) != len(names):
        raise ValueError(f"table and action names collide: {sorted(names)}")
    if pipeline.score_sum is not None or pipeline.argmax is not None:
        raise ValueError("the pipeline is not lowered for a switch (passes/switch.py)")
    pipeline.sequence()  # the order names every table and step once


def _sequence_context(pipeline: Pipeline) -> list[dict[str, Any]]:
    """The classification body in execution order: table applications and ALU steps."""
    out: list[dict[str, Any]] = []
    for item in pipeline.sequence():
        if isinstance(item, Table):
            out.append({"kind": "table", "name": item.name})
        else:
            out.append({"kind": "step", "step": _step_context(item)})
    return out


def carry_layout(fields: tuple[Field, ...]) -> dict[str, Any]:
    """The carry header's fields (checked), their padding to whole bytes, and its size."""
    checked = [_field(f, "carried field") for f in fields]
    total = sum(f["width"] for f in checked)
    pad = -total % 8
    return {"fields": checked, "pad": pad, "bytes": (total + pad) // 8 + 2}


def _carry_context(pipeline: Pipeline) -> dict[str, Any] | None:
    """The Homunculus carry header of a split model's device: what it reads from the previous
    device (``in``) and writes for the next (``out``); None on a device of its own."""
    if not pipeline.carry_in and not pipeline.carry_out:
        return None
    return {"ether_type": CARRY_ETHER_TYPE,
            "in": carry_layout(pipeline.carry_in) if pipeline.carry_in else None,
            "out": carry_layout(pipeline.carry_out) if pipeline.carry_out else None}


# --- flow state (ir/flow.py) --------------------------------------------------------------------


def key_byte_slices(*, reverse: bool = False) -> list[str]:
    """The 13 flow-key bytes as P4 expressions, most significant first (or ``reverse``d)."""
    out: list[str] = []
    for expr, width in KEY_FIELDS:
        if width == 8:
            out.append(expr)
            continue
        out += [f"{expr}[{hi}:{hi - 7}]" for hi in range(width - 1, 0, -8)]
    return out[::-1] if reverse else out


def _check_register(r: Register) -> None:
    """Names and widths the templates rely on (ir/flow.py fixes them; re-checked here)."""
    check_identifier(r.name, "flow register")
    check_identifier(f"{r.name}_update", "register action")
    if r.op not in REGISTER_OPS:
        raise ValueError(f"register {r.name}: unknown op '{safe_comment(r.op)}'")
    fixed = {"sig": 16, "last": 32, "first": 32, "min_len": LEN_WIDTH, "max_len": LEN_WIDTH,
             "ewma": LEN_WIDTH}.get(r.op)
    if fixed is not None and r.width != fixed:
        raise ValueError(f"register {r.name} ({r.op}) must be {fixed} bits, not {r.width}")
    if not 1 <= r.width <= 32:
        raise ValueError(f"register {r.name}: width {r.width} outside 1..32")
    if r.op == "ewma" and not 1 <= r.param <= 8:
        raise ValueError(f"register {r.name}: ewma shift {r.param} outside 1..8")
    if r.op in ("len_bin", "iat_bin") and (r.bins < 1 or not 0 <= r.param < r.bins
                                           or not 0 <= r.bin_shift <= 31):
        raise ValueError(f"register {r.name}: bad histogram bin")


def _bin_context(r: Register) -> dict[str, Any]:
    """``min(src >> shift, bins - 1)`` of a histogram register, in a shared metadata field."""
    src, width = (LEN_EXPR, LEN_WIDTH) if r.op == "len_bin" else ("meta.hmn_iat", 32)
    largest = ((1 << width) - 1) >> r.bin_shift
    prefix = "hmn_lbin" if r.op == "len_bin" else "hmn_ibin"
    return {"name": f"{prefix}_s{r.bin_shift}_n{r.bins}", "width": width, "src": src,
            "shift": r.bin_shift, "clamp": r.bins - 1 if r.bins - 1 < largest else None,
            "reachable": r.param <= largest}


def _register_context(r: Register) -> dict[str, Any]:
    """One register: its value field (what the packet reads) and the per-packet inputs."""
    _check_register(r)
    ctx: dict[str, Any] = {"name": r.name, "width": r.width, "op": r.op, "top": r.max_value,
                           "stage": r.stage, "param": r.param, "value": f"hmn_rv_{r.name}",
                           "fields": [{"name": f"hmn_rv_{r.name}", "width": r.width}]}
    if r.op == "add_len":
        ctx |= {"len_in": f"hmn_in_{r.name}", "room": f"hmn_sum_{r.name}",
                "clamp_len": r.width < LEN_WIDTH}
        ctx["fields"] += [{"name": ctx["len_in"], "width": r.width},
                          {"name": ctx["room"], "width": r.width + 1}]
    elif r.op in ("min_len", "max_len"):
        ctx["room"] = f"hmn_diff_{r.name}"
        ctx["fields"].append({"name": ctx["room"], "width": LEN_WIDTH + 1})
    elif r.op == "ewma":
        ctx |= {"len_in": f"hmn_in_{r.name}", "room": f"hmn_shr_{r.name}"}
        ctx["fields"] += [{"name": ctx["len_in"], "width": LEN_WIDTH},
                          {"name": ctx["room"], "width": LEN_WIDTH}]
    elif r.op in ("len_bin", "iat_bin"):
        ctx |= {"hit": f"hmn_hit_{r.name}", "bin": _bin_context(r)}
        ctx["fields"].append({"name": ctx["hit"], "width": r.width})
    return ctx


def _unique(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dicts without repeats, by name, in first-seen order."""
    seen: dict[str, dict[str, Any]] = {}
    for item in items:
        seen.setdefault(item["name"], item)
    return list(seen.values())


def _output_context(o: FlowOutput, pipeline: Pipeline,
                    values: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``feature field = min(source, 2**width - 1)``."""
    if not 0 <= o.feature < len(pipeline.features) or not pipeline.features[o.feature].flow:
        raise ValueError(f"flow output {o.feature} is not a flow feature of the pipeline")
    if o.source not in values:
        raise ValueError(f"flow output reads unknown source '{safe_comment(o.source)}'")
    dst = _field(pipeline.features[o.feature].field, "flow feature field")
    if not 1 <= o.width <= dst["width"]:
        raise ValueError(f"flow feature '{dst['name']}': output width {o.width} does not fit")
    src = values[o.source]
    top = (1 << o.width) - 1
    return {"dst": dst, "src": src, "width": o.width,
            "clamp": top if src["width"] > o.width else None}


def _flow_registers(program: FlowProgram) -> dict[str, Any]:
    """The registers by role: signature, last/first time, and the state ops by stage."""
    regs = [_register_context(r) for r in sorted(program.registers, key=lambda r: r.stage)]
    by_op: dict[str, list[dict[str, Any]]] = {}
    for r in regs:
        by_op.setdefault(r["op"], []).append(r)
    if len(by_op.get("sig", [])) != 1 or any(len(by_op.get(op, [])) > 1
                                             for op in ("last", "first")):
        raise ValueError("flow program needs one signature register and at most one last/first")
    if by_op.get("iat_bin") and not by_op.get("last"):
        raise ValueError("inter-arrival histograms need the 'last' register")
    state = [r for r in regs if r["op"] not in ("sig", "last", "first")]
    return {"registers": regs, "sig": by_op["sig"][0], "last": by_op.get("last", [None])[0],
            "first": by_op.get("first", [None])[0],
            "stage1": [r for r in state if r["stage"] == 1],
            "stage2": [r for r in state if r["stage"] == 2]}


def _flow_meta_fields(idx_width: int, regs: dict[str, Any]) -> list[dict[str, Any]]:
    fields = [{"name": n, "width": w} for n, w in (
        ("hmn_l4_sport", 16), ("hmn_l4_dport", 16), ("hmn_flow_hash", 32), ("hmn_sig_crc", 32),
        ("hmn_flow_slot", idx_width), ("hmn_flow_sig", 16), ("hmn_sig_diff", 16),
        ("hmn_new_flow", 1), ("hmn_now", 32))]
    if regs["last"] is not None:
        fields.append({"name": "hmn_iat", "width": 32})
    if regs["first"] is not None:
        fields.append({"name": "hmn_age", "width": 32})
    for r in regs["registers"]:
        fields += r["fields"]
        if "bin" in r:
            fields.append({"name": r["bin"]["name"], "width": r["bin"]["width"]})
    return _unique(fields)


def _check_flow_names(pipeline: Pipeline, program: FlowProgram) -> None:
    """Register names (and their ``_update`` actions) must not collide with tables or actions."""
    taken = {t.name for t in pipeline.tables()} | {f"{t.name}_set" for t in pipeline.tables()}
    regs = [r.name for r in program.registers]
    if program.decision is not None:
        regs.append(program.decision.register)
    names = regs + [f"{r}_update" for r in regs]
    if len(set(names)) != len(names) or taken & set(names):
        raise ValueError("flow register names collide with each other or with tables/actions")


def flow_context(pipeline: Pipeline, arch: str) -> dict[str, Any] | None:
    """The flow-state block of the ingress control (None without flow state)."""
    program = pipeline.flow
    flow_features = {i for i, f in enumerate(pipeline.features) if f.flow}
    if program is None:
        if flow_features:
            raise ValueError("pipeline has flow features but no flow program")
        return None
    cfg = program.config
    if cfg.unit_ns != UNIT_NS[arch]:
        raise ValueError(f"flow time unit {cfg.unit_ns} ns does not match {arch} "
                         f"({UNIT_NS[arch]} ns)")
    if {o.feature for o in program.outputs} != flow_features:
        raise ValueError("flow outputs and the pipeline's flow features differ")
    if (program.decision is None) != (pipeline.decider is None):
        raise ValueError("a per-flow decision needs both its register and its decider table")
    _check_flow_names(pipeline, program)
    idx_width = cfg.slots.bit_length() - 1
    regs = _flow_registers(program)
    tna = tna_registers(program) if arch == "tna" else None
    values = {r["name"]: {"name": r["value"], "width": r["width"]} for r in regs["registers"]}
    if tna is not None:  # Tofino stores registers at 8/16/32 bits (flow_tna.py)
        values |= {r["name"]: {"name": r["value"], "width": r["size"]} for r in tna}
    values |= {"iat": {"name": "hmn_iat", "width": 32}, "age": {"name": "hmn_age", "width": 32}}
    if regs["last"] is None:
        del values["iat"]
    if regs["first"] is None:
        del values["age"]
    decision = None
    if program.decision is not None:
        d = program.decision
        check_identifier(d.register, "decision register")
        if d.count not in values or values[d.count]["width"] != d.width or not 1 <= d.at < 255:
            raise ValueError("the per-flow decision needs its 8-bit count register")
        decision = {"at": d.at, "width": d.width, "register": d.register,
                    "count": values[d.count]["name"]}
    return {
        **regs,
        "decision": decision,
        "slots": cfg.slots,
        "idx_width": idx_width,
        "time_shift": TIME_BASE_SHIFT[arch] + cfg.time_shift,
        "len_expr": LEN_EXPR,
        "key": [expr for expr, _ in KEY_FIELDS],
        "sig_key": key_byte_slices(reverse=True),
        "len_bins": _unique([r["bin"] for r in regs["stage1"] if "bin" in r]),
        "iat_bins": _unique([r["bin"] for r in regs["stage2"] if "bin" in r]),
        "outputs": [_output_context(o, pipeline, values) for o in program.outputs],
        "meta_fields": (_flow_meta_fields(idx_width, regs) if tna is None else
                        tna_meta_fields(tna, idx_width, regs["last"] is not None,
                                        regs["first"] is not None)),
        "tna": None if tna is None else {
            "registers": tna,
            "by_name": {r["name"]: r for r in tna},
            "now": now_expr(cfg.time_shift),
            "len_bin_tables": bin_tables(tna, "len_bin"),
            "iat_bin_tables": bin_tables(tna, "iat_bin"),
        },
    }


def _header_comment(pipeline: Pipeline, program_name: str, arch: str) -> dict[str, Any]:
    """Comment-safe descriptions of the program, its classes and its features."""
    return {
        "program": safe_comment(program_name),
        "arch": arch,
        "labels": [safe_comment(label) for label in pipeline.class_labels],
        "features": [
            {"name": safe_comment(f.name), "field": f.field.name,
             "source": "flow state" if f.flow else safe_comment(f.header_field or "feature header")}
            for f in pipeline.features
        ],
        "verdict_kind": safe_comment(str(pipeline.verdict_kind)),
    }


def build_context(pipeline: Pipeline, arch: str, *, program_name: str, feature_udp_port: int,
                  ) -> dict[str, Any]:
    """The plain dict both architecture templates render from (``pipeline`` switch-lowered)."""
    _check_structure(pipeline)
    _literal(feature_udp_port, 16, "feature_udp_port")
    _literal(pipeline.default_port, 9, "default_port")
    copies, feature_header = _feature_context(pipeline)
    direct = feature_keys(pipeline)
    flow = flow_context(pipeline, arch)
    meta_fields = _metadata(pipeline, direct)
    if flow is not None:
        meta_fields = _unique(meta_fields + flow["meta_fields"])
    if any(c["pair"] for c in copies):
        meta_fields = _unique(meta_fields + [{"name": n, "width": w} for n, w in PORT_PAIR_META])
    verdict = table_context(pipeline.verdict, key_views(pipeline.verdict, direct, arch))
    kinds = {a["kind"] for a in verdict["actions"]}
    return {
        "comment": _header_comment(pipeline, program_name, arch),
        "control": INGRESS_CONTROL,
        "csum_flag": CSUM_FLAG if "verdict_mark" in kinds else None,
        "meta_fields": meta_fields,
        # Rule (Tofino): tables writing parts of one PHV container cannot share a stage; a field
        # that is not 8, 16 or 32 bits gets a container of its own so no two tables share one.
        "solitary": [f["name"] for f in meta_fields if f["width"] not in (8, 16, 32)],
        "flow": flow,
        "feature_header": feature_header,
        "feature_udp_port": feature_udp_port,
        "default_port": pipeline.default_port,
        "copies": [c for c in copies if not c["pair"]],
        "pair_copies": [c for c in copies if c["pair"]],
        "required_headers": _required_headers(pipeline, feature_header),
        "tables": [table_context(t, key_views(t, direct, arch))
                   for t in (*pipeline.encoders, *pipeline.lookups)],
        "decider": None if pipeline.decider is None else table_context(
            pipeline.decider, key_views(pipeline.decider, direct, arch)),
        "verdict": verdict,
        "encoders": [t.name for t in pipeline.encoders],
        "lookups": [t.name for t in pipeline.lookups],
        "steps": [_step_context(s) for s in pipeline.alu],
        "sequence": _sequence_context(pipeline),
        "carry": _carry_context(pipeline),
    }


VERSION_TABLE_HEADROOM = 2
"""Versioned tables hold two versions of up to this many times the compiled model's entries."""


def adapt_context(context: dict[str, Any], pipeline: Pipeline, *, versioned: bool,
                  telemetry: Any) -> None:
    """Add the version register (atomic installs) and the telemetry digest to ``context``."""
    from homunculus.targets.p4.keys import feature_keys

    context["version"] = None
    context["digest"] = None
    if versioned:
        context["version"] = {"register": "hmn_version", "field": "model_version"}
        for t in [*context["tables"], context["verdict"]]:
            t["size"] = 2 * VERSION_TABLE_HEADROOM * t["size"]
    if telemetry is None:
        return
    if telemetry.sampling != "rate":
        raise ValueError(f"adapt.sampling: {telemetry.sampling} needs per-flow counters that "
                         "only the XDP target keeps; switches sample at a rate (adapt.sampling: "
                         "rate)")
    direct = feature_keys(pipeline)
    features = [{"name": f"x{j}", "width": f.field.width,
                 "expr": direct.get(f.field.name, f"meta.{f.field.name}")}
                for j, f in enumerate(pipeline.features)]
    context["meta_fields"] = context["meta_fields"] + [
        {"name": "hmn_tel_sport", "width": 16}, {"name": "hmn_tel_dport", "width": 16},
        {"name": "hmn_tel_flags", "width": 8}, {"name": "hmn_tel_n", "width": 32},
        {"name": "hmn_sampled", "width": 1}]
    context["digest"] = {"every": telemetry.one_in, "features": features,
                         "class": pipeline.class_field.name,
                         "class_width": pipeline.class_field.width,
                         "version": "meta.model_version" if versioned else "8w0"}


def emit_p4(pipeline: Pipeline, arch: Literal["v1model", "tna"], *,
            program_name: str = "homunculus", feature_udp_port: int = 0x4D4C,
            versioned: bool = False, telemetry: Any = None) -> str:
    """Return the P4_16 source of ``pipeline`` for ``arch`` ("v1model" or "tna"); the pipeline
    is lowered for a switch first (passes/switch.py) if it is not already. ``versioned``: model
    tables keyed on a version register (targets/p4/versioned.py); ``telemetry``: sampled
    packets sent to the control plane as a digest (ir/telemetry.py)."""
    if arch not in ("v1model", "tna"):
        raise ValueError(f"unknown P4 architecture '{safe_comment(str(arch))}'")
    lowered = lower_for_switch(pipeline)
    if versioned:
        from homunculus.targets.p4.versioned import versioned as keyed

        lowered = keyed(lowered, 0)
    context = build_context(lowered, arch, program_name=program_name,
                            feature_udp_port=feature_udp_port)
    adapt_context(context, lowered, versioned=versioned, telemetry=telemetry)
    return render(f"{arch}.p4.j2", context)
