"""Emit the XDP program (eBPF C) of an integer table pipeline.

Python prepares a plain context dict; the C lives in ``templates/hmn_xdp.bpf.c.j2``. What reaches
code: integers, index-based identifiers (``env->v[3]``, ``hmn_t2``) and fixed C snippets chosen
here from closed tables (header field -> expression). Pipeline and user names only ever appear in
``//`` comments through :func:`safe_comment`, so hostile identifiers cannot alter the program.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jinja2

from homunculus.features.headers import lookup_header_field
from homunculus.ir.flow import REGISTER_OPS, FlowProgram, Register
from homunculus.ir.names import safe_comment
from homunculus.ir.pipeline import Pipeline
from homunculus.targets.templating import code_env
from homunculus.targets.xdp.layout import Layout, TableLayout, layout_of, mask_of

UNIT_NS = 1000
"""Flow time unit of this target: bpf_ktime_get_ns() / 1000 (microseconds), as on bmv2."""

FEATURE_UDP_PORT = 0x4D4C
"""UDP destination port of the feature header carrying features bound to no header field."""

MAX_MAPS = 64
"""Maps one BPF program may use (kernel MAX_USED_MAPS)."""

FIXED_MAPS = 11
"""Maps besides the flow registers, at most: active slot, clock, counters, stats, scratch, tables,
defaults, the score bias or the MLP's parameters and activations, the debug trace, .rodata."""

TRACE_MAX = 1 << 16
"""Entries of the debug trace map (keyed by the 16-bit IPv4 identification)."""

# header field -> (C expression over the parsed headers, the header pointer it needs or None)
HEADER_EXPR: dict[str, tuple[str, str | None]] = {
    "ipv4.diffserv": ("ip->tos", None),
    "ipv4.total_len": ("bpf_ntohs(ip->tot_len)", None),
    "ipv4.identification": ("bpf_ntohs(ip->id)", None),
    "ipv4.frag_offset": ("bpf_ntohs(ip->frag_off) & 0x1FFF", None),
    "ipv4.ttl": ("ip->ttl", None),
    "ipv4.protocol": ("ip->protocol", None),
    "tcp.src_port": ("bpf_ntohs(tcp->source)", "tcp"),
    "tcp.dst_port": ("bpf_ntohs(tcp->dest)", "tcp"),
    "tcp.data_offset": ("tcp->doff", "tcp"),
    "tcp.flags": ("((const __u8 *)tcp)[13]", "tcp"),
    "tcp.window": ("bpf_ntohs(tcp->window)", "tcp"),
    "udp.src_port": ("bpf_ntohs(udp->source)", "udp"),
    "udp.dst_port": ("bpf_ntohs(udp->dest)", "udp"),
    "udp.length": ("bpf_ntohs(udp->len)", "udp"),
    "l4.src_port": ("sport", None),
    "l4.dst_port": ("dport", None),
}


def template_env() -> jinja2.Environment:
    """The Jinja2 environment over this package's ``templates`` directory."""
    return code_env("homunculus.targets.xdp")


def crc_table_rows() -> list[str]:
    """The CRC-32 (IEEE, reflected) lookup table as C initialiser rows of eight."""
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (0xEDB88320 ^ (c >> 1)) if c & 1 else c >> 1
        table.append(c)
    return [" ".join(f"0x{v:08x}u," for v in table[i:i + 8]) for i in range(0, 256, 8)]


def _feature_header(pipeline: Pipeline, layout: Layout) -> tuple[list[dict[str, Any]],
                                                                 dict[str, int] | None]:
    """Copies of the features carried in the feature header (bit-packed, most significant bit
    first, in feature order, padded to a byte: the P4 feature header's layout)."""
    copies: list[dict[str, Any]] = []
    bit = 0
    for j, feat in enumerate(pipeline.features):
        if feat.flow or feat.header_field is not None:
            continue
        width = feat.field.width
        first, last = bit // 8, (bit + width - 1) // 8
        shift = (last - first + 1) * 8 - bit % 8 - width
        parts = [f"((__u64)fh[{b}] << {8 * (last - b)})" for b in range(first, last + 1)]
        expr = f"(({' | '.join(parts)}) >> {shift})"
        copies.append({"idx": layout.features[j], "expr": expr, "mask": mask_of(width)})
        bit += width
    if not copies:
        return [], None
    return copies, {"length": -(-bit // 8)}


def _header_copies(pipeline: Pipeline, layout: Layout) -> tuple[list[dict[str, Any]], set[str]]:
    copies: list[dict[str, Any]] = []
    required: set[str] = set()
    for j, feat in enumerate(pipeline.features):
        if feat.flow or feat.header_field is None:
            continue
        try:
            lookup_header_field(feat.header_field)
            expr, header = HEADER_EXPR[feat.header_field]
        except KeyError:
            raise ValueError(f"feature '{safe_comment(feat.name)}': unsupported header field "
                             f"'{safe_comment(feat.header_field)}'") from None
        if header is not None:
            required.add(header)
        copies.append({"idx": layout.features[j], "expr": expr, "mask": feat.field.max_value})
    return copies, required


def _table_context(t: TableLayout, role: str) -> dict[str, Any]:
    return {
        "index": t.index, "role": role, "capacity": t.capacity, "key_fields": list(t.keys),
        "base": t.base, "param_offset": 3 * len(t.keys),
        "outputs": [{"idx": i, "mask": mask_of(w)}
                    for i, w in zip(t.outputs, t.output_widths, strict=True)],
        "comment": safe_comment(f"{role} table '{t.name}': {len(t.keys)} keys, "
                                f"{len(t.outputs)} outputs, capacity {t.capacity}"),
    }


def _argmax_context(layout: Layout) -> dict[str, Any] | None:
    """A pairwise tournament in the P4 program's order (the twin's ``run_argmax``)."""
    if layout.argmax_output is None:
        return None
    ops = [(f"env->v[{s}]", str(i)) for i, s in enumerate(layout.argmax_scores)]
    nodes: list[dict[str, str]] = []
    while len(ops) > 1:
        nxt = []
        for (lv, li), (rv, ri) in zip(ops[0::2], ops[1::2], strict=False):
            k = len(nodes)
            nodes.append({"left_value": lv, "left_index": li, "right_value": rv,
                          "right_index": ri})
            nxt.append((f"hmn_av{k}", f"hmn_ai{k}"))
        if len(ops) % 2:
            nxt.append(ops[-1])
        ops = nxt
    return {"nodes": nodes, "output": layout.argmax_output, "result": ops[0][1]}


def _check_register(r: Register) -> None:
    if r.op not in REGISTER_OPS:
        raise ValueError(f"unknown register op '{safe_comment(r.op)}'")
    if not 1 <= r.width <= 32:
        raise ValueError(f"register width {r.width} outside 1..32")
    if r.op == "ewma" and not 1 <= r.param <= 8:
        raise ValueError("ewma shift outside 1..8")
    if r.op in ("len_bin", "iat_bin") and (not 1 <= r.bins < (1 << 24) or not 0 <= r.param < r.bins
                                           or not 0 <= r.bin_shift <= 31):
        raise ValueError("bad histogram bin")


def flow_context(pipeline: Pipeline, layout: Layout) -> dict[str, Any] | None:
    program: FlowProgram | None = pipeline.flow
    flow_features = {i for i, f in enumerate(pipeline.features) if f.flow}
    if program is None:
        if flow_features:
            raise ValueError("pipeline has flow features but no flow program")
        return None
    if program.config.unit_ns != UNIT_NS:
        raise ValueError(f"flow time unit {program.config.unit_ns} ns does not match the XDP "
                         f"target ({UNIT_NS} ns)")
    if {o.feature for o in program.outputs} != flow_features:
        raise ValueError("flow outputs and the pipeline's flow features differ")
    regs: list[dict[str, Any]] = []
    roles: dict[str, int] = {}
    for i, r in enumerate(program.registers):
        _check_register(r)
        if r.op in ("sig", "last", "first"):
            if r.op in roles:
                raise ValueError(f"more than one '{r.op}' register")
            roles[r.op] = i
        regs.append({"index": i, "op": r.op, "top": r.max_value, "param": r.param,
                     "bin_spec": r.bin_shift | (r.param << 8) | ((r.bins - 1) << 32),
                     "stage": r.stage,
                     "comment": safe_comment(f"register {r.name} ({r.op}, {r.width} bits)")})
    if FIXED_MAPS + len(regs) > MAX_MAPS:
        raise ValueError(f"{len(regs)} flow registers: a BPF program may use at most "
                         f"{MAX_MAPS} maps ({FIXED_MAPS} are taken)")
    if "sig" not in roles:
        raise ValueError("flow program needs a signature register")
    sources = {r.name: f"hmn_rv{i}" for i, r in enumerate(program.registers)
               if r.op not in ("sig", "last", "first")}
    if "last" in roles:
        sources["iat"] = "iat"
    if "first" in roles:
        sources["age"] = "age"
    if any(r.op == "iat_bin" for r in program.registers) and "last" not in roles:
        raise ValueError("inter-arrival histograms need the 'last' register")
    outputs = []
    for o in program.outputs:
        if o.source not in sources:
            raise ValueError(f"flow output reads unknown source '{safe_comment(o.source)}'")
        field = pipeline.features[o.feature].field
        outputs.append({"idx": layout.features[o.feature], "src": sources[o.source],
                        "top": mask_of(o.width), "mask": field.max_value})
    state = sorted((r for r in regs if r["op"] not in ("sig", "last", "first")),
                   key=lambda r: r["stage"])
    return {"slots": program.config.slots, "unit_ns": UNIT_NS,
            "time_shift": program.config.time_shift, "registers": regs,
            "sig": roles["sig"], "last": roles.get("last"), "first": roles.get("first"),
            "state": state, "outputs": outputs}


def mlp_context(layout: Layout) -> dict[str, Any] | None:
    """Dimensions only: the parameters live in ``hmn_mlp`` (layout.py)."""
    if layout.mlp is None:
        return None
    shapes = layout.mlp.shapes()
    return {"n_in": layout.mlp.n_in, "inputs": list(layout.mlp.inputs),
            "winner": layout.mlp.winner, "n_scores": layout.mlp.widths[-1],
            "layers": [{"index": i, "n_out": n_out, "n_in": n_in, "last": i == len(shapes) - 1}
                       for i, (n_out, n_in) in enumerate(shapes)]}


def _check_trace(trace: int) -> None:
    if trace and (trace & (trace - 1) or not 1 <= trace <= TRACE_MAX):
        raise ValueError(f"trace entries must be 0 or a power of two up to {TRACE_MAX}")


def build_context(pipeline: Pipeline, *, name: str, trace: int = 0) -> dict[str, Any]:
    """The plain dict the template renders from (``trace``: entries of the debug trace map,
    0 for none)."""
    _check_trace(trace)
    layout = layout_of(pipeline)
    copies, required = _header_copies(pipeline, layout)
    carried, feature_header = _feature_header(pipeline, layout)
    if feature_header is not None:
        required.add("fh")
    if "tcp" in required and ("udp" in required or "fh" in required):
        raise ValueError("features need both TCP and UDP (or feature-header) fields; "
                         "no packet carries both")
    roles = {t.name: str(t.role) for t in pipeline.tables()}
    score = None
    if layout.score is not None:
        score = [{"idx": o, "mask": mask_of(w), "terms": list(ts)}
                 for o, w, ts in zip(layout.score.outputs, layout.score.widths,
                                     layout.score.terms, strict=True)]
    verdict_outputs = list(layout.tables[-1].outputs)
    return {
        "comment": {
            "program": safe_comment(name),
            "verdict_kind": safe_comment(str(pipeline.verdict_kind)),
            "labels": [safe_comment(label) for label in pipeline.class_labels],
            "fields": [safe_comment(f"{f.name} ({f.width} bits)") for f in layout.fields],
        },
        "n_fields": layout.n_fields,
        "row_words": layout.row_words,
        "meta_words": layout.meta_words,
        "total_rows": layout.total_rows,
        "n_classes": max(layout.n_classes, 1),
        "tables": [_table_context(t, roles[t.name]) for t in layout.tables],
        "score": score,
        "argmax": _argmax_context(layout),
        "class_index": layout.class_index,
        "verdict": layout.verdict,
        "flow": flow_context(pipeline, layout),
        "crc_table": crc_table_rows(),
        "feature_header": feature_header,
        "feature_udp_port": FEATURE_UDP_PORT,
        "required": sorted(required),
        "copies": copies + carried,
        "n_features": len(pipeline.features),
        "vec_features": [{"idx": layout.features[j], "mask": f.field.max_value}
                         for j, f in enumerate(pipeline.features)],
        "vec_results": [layout.class_index, *verdict_outputs],
        "mlp": mlp_context(layout),
        "trace": trace,
    }


def emit_xdp(pipeline: Pipeline, *, name: str = "homunculus", trace: int = 0) -> str:
    """The eBPF C source of ``pipeline``'s XDP program (and its ``hmn_xdp_vec`` test entry);
    ``trace`` > 0 adds the per-packet debug map ``hmn_trace`` (test builds)."""
    return template_env().get_template("hmn_xdp.bpf.c.j2").render(
        **build_context(pipeline, name=name, trace=trace))


def shape_digest(source: str) -> str:
    """A digest of the program's code without its comments: equal digests mean equal programs
    (names only reach comments), so a snapshot compiled for one fits the other."""
    code = "\n".join(line.rstrip() for line in source.splitlines()
                     if line.strip() and not line.lstrip().startswith("//"))
    return hashlib.sha256(code.encode()).hexdigest()[:32]
