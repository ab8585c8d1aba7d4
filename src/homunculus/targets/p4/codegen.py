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

from homunculus.features.headers import lookup_header_field
from homunculus.ir.flow import REGISTER_OPS, FlowOutput, FlowProgram, Register
from homunculus.ir.names import safe_comment
from homunculus.ir.pipeline import Argmax, Field, Pipeline, Table
from homunculus.targets.templating import code_env

INGRESS_CONTROL = "MyIngress"
"""Name of the ingress control in both architectures (tables are ``MyIngress.<table>``)."""

CSUM_FLAG = "hmn_ipv4_csum_update"
"""Internal metadata flag: the DSCP was rewritten, so the IPv4 checksum must be recomputed."""

VERDICT_ROLES = ("port", "drop", "mark", "dscp")
"""Verdict outputs the program interprets, by name ``verdict_<role>``."""

UNIT_NS = {"v1model": 1000, "tna": 1024}
"""Flow time unit per architecture: bmv2 timestamps are microseconds; Tofino's ns clock >> 10."""

TIME_BASE_SHIFT = {"v1model": 0, "tna": 10}
"""Right shift turning the architecture's timestamp into ``UNIT_NS`` units."""

LEN_EXPR, LEN_WIDTH = "hdr.ipv4.total_len", 16
"""The packet length of the flow features (features/library.py): the IPv4 total length."""

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


def table_context(table: Table) -> dict[str, Any]:
    """Template dict for one table and its single ``<table>_set`` action."""
    check_identifier(table.name, "table name")
    check_identifier(f"{table.name}_set", "action name")
    return {
        "name": table.name,
        "key_fields": [
            {**_field(k, f"key of {table.name}"), "kind": str(kind)}
            for k, kind in zip(table.keys, table.kinds, strict=True)
        ],
        "params": [_field(o, f"output of {table.name}") for o in table.outputs],
        "size": max(1, len(table.entries)),
        "default": [
            _literal(v, o.width, f"default of {table.name}")
            for v, o in zip(table.default, table.outputs, strict=True)
        ],
    }


def _feature_context(pipeline: Pipeline) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Feature copies (header or feature-header source) and the feature header layout, if any.

    Flow features are written by the flow-state block (:func:`flow_context`), not copied.
    """
    copies: list[dict[str, Any]] = []
    carried: list[dict[str, Any]] = []
    for feat in pipeline.features:
        dst = _field(feat.field, "feature field")
        if feat.flow:
            continue
        if feat.header_field is None:
            carried.append(dst)
            copies.append({"dst": dst, "header": "hmn_features", "field": dst["name"],
                           "width": dst["width"]})
            continue
        try:
            hf = lookup_header_field(feat.header_field)
        except KeyError as exc:
            raise ValueError(str(exc)) from None
        copies.append({"dst": dst, "header": hf.header, "field": hf.field, "width": hf.width})
    if not carried:
        return copies, None
    total = sum(f["width"] for f in carried)
    return copies, {"fields": carried, "pad": -total % 8}


def _score_context(pipeline: Pipeline) -> list[dict[str, Any]]:
    """Score sums: output, bias literal and the terms to cast to the output width."""
    ss = pipeline.score_sum
    if ss is None:
        return []
    if not len(ss.outputs) == len(ss.terms) == len(ss.bias):
        raise ValueError("score_sum: outputs, terms and bias differ in length")
    return [
        {
            "out": _field(out, "score output"),
            "bias": _literal(bias, out.width, f"bias of {out.name}"),
            "terms": [_field(t, "score term") for t in terms],
        }
        for out, terms, bias in zip(ss.outputs, ss.terms, ss.bias, strict=True)
    ]


def _argmax_context(argmax: Argmax) -> dict[str, Any]:
    """A pairwise tournament; the left (lower-index) side wins ties, so the lowest max index wins.

    Each node compares two operands (a score with a constant index, or an earlier node's value and
    index temporaries) and writes the winner; the last node writes ``argmax.output`` directly.
    """
    if not argmax.scores:
        raise ValueError("argmax has no scores")
    out = _field(argmax.output, "argmax output")
    if len(argmax.scores) > (1 << out["width"]):
        raise ValueError(
            f"argmax output '{out['name']}' too narrow for {len(argmax.scores)} classes")
    vwidth = max(s.width for s in argmax.scores)
    ops: list[dict[str, Any]] = [
        {"value": _field(s, "argmax score"), "index": None, "const": i}
        for i, s in enumerate(argmax.scores)
    ]
    nodes: list[dict[str, Any]] = []
    while len(ops) > 1:
        root = len(ops) == 2
        nxt: list[dict[str, Any]] = []
        for left, right in zip(ops[0::2], ops[1::2], strict=False):
            k = len(nodes)
            node = {
                "left": left,
                "right": right,
                "value": None if root else {"name": f"hmn_am_v{k}", "width": vwidth},
                "index": out if root else {"name": f"hmn_am_i{k}", "width": out["width"]},
            }
            nodes.append(node)
            nxt.append({"value": node["value"], "index": node["index"], "const": None})
        if len(ops) % 2:
            nxt.append(ops[-1])
        ops = nxt
    return {"nodes": nodes, "vwidth": vwidth, "output": out}


def _verdict_context(verdict: Table) -> dict[str, Any]:
    """The verdict outputs the program acts on, by role (``None`` when the table lacks one)."""
    by_name = {o.name: o for o in verdict.outputs}
    return {
        role: (_field(by_name[f"verdict_{role}"], "verdict output")
               if f"verdict_{role}" in by_name else None)
        for role in VERDICT_ROLES
    }


def _metadata(pipeline: Pipeline, argmax: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every field the pipeline uses, once, in pipeline order (conflicting widths are an error)."""
    fields: list[Field] = [f.field for f in pipeline.features]
    for table in (*pipeline.encoders, *pipeline.lookups):
        fields += [*table.keys, *table.outputs]
    if pipeline.score_sum is not None:
        for out, terms in zip(pipeline.score_sum.outputs, pipeline.score_sum.terms, strict=True):
            fields += [*terms, out]
    if pipeline.argmax is not None:
        fields += list(pipeline.argmax.scores)
    fields.append(pipeline.class_field)
    fields += [*pipeline.verdict.keys, *pipeline.verdict.outputs]
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
    if argmax is not None:
        for node in argmax["nodes"]:
            result += [t for t in (node["value"], node["index"]) if t and t["name"] not in seen]
    return result


def _check_structure(pipeline: Pipeline) -> None:
    """Cross-field consistency the templates rely on."""
    names = [t.name for t in pipeline.tables()]
    names += [f"{name}_set" for name in names]
    if len(set(names)) != len(names):
        raise ValueError(f"table and action names collide: {sorted(names)}")
    if (pipeline.score_sum is None) != (pipeline.argmax is None):
        raise ValueError("score_sum and argmax must be both present or both absent")


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
        ctx |= {"len_in": f"hmn_in_{r.name}", "room": f"hmn_room_{r.name}",
                "clamp_len": r.width < LEN_WIDTH}
        ctx["fields"] += [{"name": ctx["len_in"], "width": r.width},
                          {"name": ctx["room"], "width": r.width}]
    elif r.op == "ewma":
        ctx["len_in"] = f"hmn_in_{r.name}"
        ctx["fields"].append({"name": ctx["len_in"], "width": LEN_WIDTH})
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
    return {"dst": dst, "src": src, "clamp": top if src["width"] > o.width else None}


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
        ("hmn_flow_slot", idx_width), ("hmn_flow_sig", 16), ("hmn_new_flow", 1), ("hmn_now", 32))]
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
    names = [r.name for r in program.registers] + [f"{r.name}_update" for r in program.registers]
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
    _check_flow_names(pipeline, program)
    idx_width = cfg.slots.bit_length() - 1
    regs = _flow_registers(program)
    values = {r["name"]: {"name": r["value"], "width": r["width"]} for r in regs["registers"]}
    values |= {"iat": {"name": "hmn_iat", "width": 32}, "age": {"name": "hmn_age", "width": 32}}
    if regs["last"] is None:
        del values["iat"]
    if regs["first"] is None:
        del values["age"]
    return {
        **regs,
        "slots": cfg.slots,
        "idx_width": idx_width,
        "time_shift": TIME_BASE_SHIFT[arch] + cfg.time_shift,
        "len_expr": LEN_EXPR,
        "key": [expr for expr, _ in KEY_FIELDS],
        "sig_key": key_byte_slices(reverse=True),
        "len_bins": _unique([r["bin"] for r in regs["stage1"] if "bin" in r]),
        "iat_bins": _unique([r["bin"] for r in regs["stage2"] if "bin" in r]),
        "outputs": [_output_context(o, pipeline, values) for o in program.outputs],
        "meta_fields": _flow_meta_fields(idx_width, regs),
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
                  default_port: int) -> dict[str, Any]:
    """The plain dict both architecture templates render from."""
    _check_structure(pipeline)
    _literal(feature_udp_port, 16, "feature_udp_port")
    _literal(default_port, 9, "default_port")
    copies, feature_header = _feature_context(pipeline)
    argmax = _argmax_context(pipeline.argmax) if pipeline.argmax is not None else None
    verdict = _verdict_context(pipeline.verdict)
    required = sorted({c["header"] for c in copies} - {"ethernet", "ipv4", "l4"})
    if "tcp" in required and ("udp" in required or feature_header is not None):
        raise ValueError("features need both TCP and UDP (or feature-header) fields; "
                         "no packet carries both")
    flow = flow_context(pipeline, arch)
    meta_fields = _metadata(pipeline, argmax)
    if flow is not None:
        meta_fields += flow["meta_fields"]
    return {
        "comment": _header_comment(pipeline, program_name, arch),
        "control": INGRESS_CONTROL,
        "csum_flag": CSUM_FLAG if verdict["mark"] and verdict["dscp"] else None,
        "meta_fields": meta_fields,
        "flow": flow,
        "feature_header": feature_header,
        "feature_udp_port": feature_udp_port,
        "default_port": default_port,
        "copies": copies,
        "required_headers": required,
        "tables": [table_context(t) for t in pipeline.tables()],
        "encoders": [t.name for t in pipeline.encoders],
        "lookups": [t.name for t in pipeline.lookups],
        "verdict_table": pipeline.verdict.name,
        "score_sums": _score_context(pipeline),
        "argmax": argmax,
        "verdict": verdict,
    }


def emit_p4(pipeline: Pipeline, arch: Literal["v1model", "tna"], *,
            program_name: str = "homunculus", feature_udp_port: int = 0x4D4C,
            default_port: int = 1) -> str:
    """Return the P4_16 source of ``pipeline`` for ``arch`` ("v1model" or "tna")."""
    if arch not in ("v1model", "tna"):
        raise ValueError(f"unknown P4 architecture '{safe_comment(str(arch))}'")
    context = build_context(pipeline, arch, program_name=program_name,
                            feature_udp_port=feature_udp_port, default_port=default_port)
    return render(f"{arch}.p4.j2", context)
