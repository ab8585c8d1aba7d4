"""Emit the XDP program (eBPF C) of a CPU program (ir/cpu.py) for a capacity (layout.py).

Python prepares a plain context dict; the C lives in ``templates/hmn_xdp.bpf.c.j2``. What reaches
code: integers, index-based identifiers (``env->x[3]``) and fixed C snippets chosen here from
closed tables (header field -> expression). User names only ever appear in ``//`` comments
through :func:`safe_comment`, so hostile identifiers cannot alter the program. The code depends
on the program's interface and capacity only; the model itself lives in the maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jinja2

from homunculus.features.headers import lookup_header_field
from homunculus.ir.cpu import SCALAR, WINNER, CpuProgram
from homunculus.ir.dense import QMLP
from homunculus.ir.flow import REGISTER_OPS, FlowProgram, Register
from homunculus.ir.names import safe_comment
from homunculus.ir.pipeline import FeatureInput
from homunculus.ir.telemetry import FLOW_TABLE, RING_BYTES, TelemetryConfig
from homunculus.targets.p4.codegen import CARRY_ETHER_TYPE
from homunculus.targets.templating import code_env
from homunculus.targets.xdp.layout import Capacity, even

UNIT_NS = 1000
"""Flow time unit of this target: bpf_ktime_get_ns() / 1000 (microseconds), as on bmv2."""

FEATURE_UDP_PORT = 0x4D4C
"""UDP destination port of the feature header carrying features bound to no header field."""

MAX_MAPS = 64
"""Maps one BPF program may use (kernel MAX_USED_MAPS)."""

FIXED_MAPS = 10
"""Maps besides the flow registers, at most: active slot, clock, counters, stats, scratch, meta,
the model's parameters (and the MLP's activations), the debug trace, .rodata."""

TELEMETRY_MAPS = 5
"""Maps telemetry adds: the ring buffer, its configuration, counters, sampled flows, versions."""

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
    "l4.server_port": ("(sport < dport ? sport : dport)", None),
    "l4.client_port": ("(sport < dport ? dport : sport)", None),
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


def mask_of(width: int) -> int:
    return (1 << width) - 1


def _feature_header(features: Sequence[FeatureInput]
                    ) -> tuple[list[dict[str, Any]], dict[str, int] | None]:
    """Copies of the features carried in the feature header (bit-packed, most significant bit
    first, in feature order, padded to a byte: the P4 feature header's layout)."""
    copies: list[dict[str, Any]] = []
    bit = 0
    for j, feat in enumerate(features):
        if feat.flow or feat.header_field is not None:
            continue
        width = feat.field.width
        first, last = bit // 8, (bit + width - 1) // 8
        shift = (last - first + 1) * 8 - bit % 8 - width
        parts = [f"((__u64)fh[{b}] << {8 * (last - b)})" for b in range(first, last + 1)]
        expr = f"(({' | '.join(parts)}) >> {shift})"
        copies.append({"idx": j, "expr": expr, "mask": mask_of(width)})
        bit += width
    if not copies:
        return [], None
    return copies, {"length": -(-bit // 8)}


def _header_copies(features: Sequence[FeatureInput]) -> tuple[list[dict[str, Any]], set[str]]:
    copies: list[dict[str, Any]] = []
    required: set[str] = set()
    for j, feat in enumerate(features):
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
        copies.append({"idx": j, "expr": expr, "mask": feat.field.max_value})
    return copies, required


def packet_features_context(features: Sequence[FeatureInput]) -> dict[str, Any]:
    """What features.c.j2 renders from: the feature header (if features are carried in one),
    the headers a packet must carry, and every header or carried feature's copy."""
    copies, required = _header_copies(features)
    carried, feature_header = _feature_header(features)
    if feature_header is not None:
        required.add("fh")
    if "tcp" in required and ("udp" in required or "fh" in required):
        raise ValueError("features need both TCP and UDP (or feature-header) fields; "
                         "no packet carries both")
    return {"feature_header": feature_header, "feature_udp_port": FEATURE_UDP_PORT,
            "required": sorted(required), "copies": copies + carried}


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


def flow_context(cpu: CpuProgram, extra_maps: int = 0) -> dict[str, Any] | None:
    """What flow.c.j2 renders from for one CPU program (None: it keeps no flow state)."""
    return flow_program_context(cpu.flow, cpu.features, extra_maps, bool(cpu.class_rows))


def flow_program_context(program: FlowProgram | None, features: Sequence[FeatureInput],
                         extra_maps: int = 0, class_rows: bool = False, packed: bool = False
                         ) -> dict[str, Any] | None:
    """What flow.c.j2 renders from: the register program ``program`` writing the flow features
    among ``features`` (a schedule's: the merged program over the union of the features);
    ``class_rows``: the program has the verdict rows a per-flow decision applies; ``packed``:
    every register in one map entry per flow slot (one map) rather than one map each."""
    flow_features = {i for i, f in enumerate(features) if f.flow}
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
    if FIXED_MAPS + extra_maps + (1 if packed else len(regs)) > MAX_MAPS:
        raise ValueError(f"{len(regs)} flow registers: a BPF program may use at most "
                         f"{MAX_MAPS} maps ({FIXED_MAPS + extra_maps} are taken)")
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
        field = features[o.feature].field
        outputs.append({"idx": o.feature, "src": sources[o.source],
                        "top": mask_of(o.width), "mask": field.max_value})
    state = sorted((r for r in regs if r["op"] not in ("sig", "last", "first")),
                   key=lambda r: r["stage"])
    decision = None
    if program.decision is not None:
        d = program.decision
        names = [r.name for r in program.registers]
        if d.count not in names or not 1 <= d.at < 255 or not class_rows:
            raise ValueError("the per-flow decision needs its count register and class rows")
        decision = {"at": d.at, "count": f"hmn_rv{names.index(d.count)}"}
    return {"slots": program.config.slots, "unit_ns": UNIT_NS, "decision": decision,
            "packed": packed,
            "time_shift": program.config.time_shift, "registers": regs,
            "sig": roles["sig"], "last": roles.get("last"), "first": roles.get("first"),
            "state": state, "outputs": outputs}


def model_context(program: CpuProgram, cap: Capacity) -> dict[str, Any]:
    """The model's dimensions (its parameters live in the maps)."""
    kind = cap.kind.split("-")[0]
    ctx: dict[str, Any] = {"kind": kind, "mode": cap.kind.split("-")[-1], "k": cap.n_scores,
                           "kp": even(cap.n_scores), "nw": cap.n_winners}
    if kind == "trees":
        ctx |= {"trees": cap.trees, "nodes": cap.nodes, "leaves": cap.leaves,
                "depth": cap.depth, "levels": cap.implicit_depth, "width": cap.leaf_width,
                "winner": cap.kind.endswith(WINNER),
                "scalar": cap.kind.endswith(SCALAR)}
    elif kind == "lookup":
        encoders = []
        for j, (w, at, row) in enumerate(zip(cap.feature_widths, cap.direct, cap.wide,
                                             strict=True)):
            enc = {"feature": j, "direct": at >= 0, "offset": at, "mask": mask_of(w),
                   "row": row}
            enc["steps"] = [cap.bins >> k for k in range(1, cap.bins.bit_length())]
            encoders.append(enc)
        ctx |= {"bins": cap.bins, "direct_total": cap.direct_total, "n_wide": cap.n_wide,
                "encoders": encoders,
                "pad": cap.enc_bytes() - (2 * cap.direct_total + 4 * cap.n_wide * cap.bins
                                          + 4 * cap.n_features * cap.bins * even(cap.n_scores))}
    else:
        shapes = cap.mlp_shapes()
        emits = cap.kind.endswith("-out")  # a split MLP's part carrying its activations on
        ctx |= {"n_in": cap.n_features, "shift_words": even(cap.n_features),
                "carried_in": cap.kind.startswith("mlp-in"), "carries_out": emits,
                "layers": [{"index": i, "pairs": o // 2, "outs": o, "ins": n_in,
                            "last": i == len(shapes) - 1,
                            "emit": emits and i == len(shapes) - 1,
                            "chunks": list(range(0, n_in, 8))}
                           for i, (o, n_in) in enumerate(shapes)],
                "width_words": even(len(shapes))}
    return ctx


def model_section_context(program: CpuProgram, cap: Capacity) -> dict[str, Any]:
    """What model.c.j2 renders one model from: its dimensions and its model's."""
    kp, vw = cap.meta_words()
    return {
        "n_features": cap.n_features,
        "x_slots": cap.x_slots,
        "score_slots": cap.score_slots,
        "n_classes": max(len(program.class_labels), 1),
        "bias_words": kp,
        "verdict_words": vw,
        "verdict_rows": cap.verdict_rows,
        "category": None if not cap.categories else {
            "size": cap.categories, "feature": cap.cat_feature,
            "steps": [cap.categories >> k for k in range(1, cap.categories.bit_length())]},
        "model": model_context(program, cap),
        "carry": None,  # a chain's host only (build_context)
    }


def _check_trace(trace: int) -> None:
    if trace and (trace & (trace - 1) or not 1 <= trace <= TRACE_MAX):
        raise ValueError(f"trace entries must be 0 or a power of two up to {TRACE_MAX}")


def carry_context(program: CpuProgram) -> dict[str, Any] | None:
    """A chain's host: the carry header after Ethernet (targets/p4 carry_layout: the carried
    columns' fields, big endian, padded to bytes, then the displaced EtherType) and, per
    carried column, the header bytes holding its field, the right shift and the mask."""
    if not program.carry_in:
        return None
    if program.kind not in ("trees-scalar", "trees-vector", "lookup"):
        raise ValueError("a program starting from carried scores must sum scores")
    w = program.carry_bits
    if not 1 <= w <= 30:
        raise ValueError(f"carried fields of {w} bits; at most 30 are summed in int32")
    fields = []
    for i, c in enumerate(program.carry_in):
        first, last = i * w // 8, (i * w + w - 1) // 8
        fields.append({"column": c, "bytes": list(range(first, last + 1)),
                       "shift": 8 * (last + 1) - (i + 1) * w, "mask": mask_of(w)})
    bits = len(program.carry_in) * w
    size = -(-bits // 8)
    return {"ether_type": CARRY_ETHER_TYPE, "fields": fields, "bytes": size + 2,
            "inner": size}


def activation_carry_context(program: CpuProgram) -> dict[str, Any] | None:
    """A part of an MLP split by layers (schedule/split_mlp.py): the carry header it reads
    (``n_in`` int8 activations, its inputs) and the one it writes (``n_out``, its last layer's
    activations), each one byte per activation after Ethernet, then the displaced EtherType;
    None for a whole model."""
    model = program.model
    if not isinstance(model, QMLP) or not (model.carried_in or model.carries_out):
        return None
    n_in = len(program.features) if model.carried_in else 0
    n_out = model.n_classes if model.carries_out else 0
    return {"ether_type": CARRY_ETHER_TYPE, "n_in": n_in, "in_bytes": n_in + 2,
            "n_out": n_out, "out_bytes": n_out + 2}


def build_context(program: CpuProgram, cap: Capacity, *, name: str,
                  trace: int = 0, telemetry: TelemetryConfig | None = None) -> dict[str, Any]:
    """The plain dict the template renders from (``trace``: entries of the debug trace map,
    0 for none; ``telemetry``: sample packets into the ring buffer ``hmn_samples``)."""
    _check_trace(trace)
    act = activation_carry_context(program)
    packet = packet_features_context(program.features)
    if act is not None and act["n_in"]:  # the inputs come from the carry header, not the packet
        packet = {"feature_header": None, "feature_udp_port": FEATURE_UDP_PORT, "required": [],
                  "copies": []}
    return model_section_context(program, cap) | {
        "comment": {
            "program": safe_comment(name),
            "verdict_kind": safe_comment(str(program.verdict_kind)),
            "labels": [safe_comment(label) for label in program.class_labels],
            "features": [safe_comment(f"{f.name} ({f.field.width} bits)")
                         for f in program.features],
            "capacity": safe_comment(", ".join(f"{k} {v}" for k, v in cap.as_json().items()
                                               if k not in ("feature_widths",) and v)),
        },
        "flow": flow_context(program, TELEMETRY_MAPS if telemetry else 0),
        "crc_table": crc_table_rows(),
        **packet,
        "act": act,
        "vec_features": [{"idx": j, "mask": f.field.max_value}
                         for j, f in enumerate(program.features)],
        "carry": carry_context(program),
        "trace": trace,
        "telemetry": None if telemetry is None else {"ring_bytes": RING_BYTES,
                                                      "flow_table": FLOW_TABLE},
    }


def emit_xdp(program: CpuProgram, cap: Capacity, *, name: str = "homunculus",
             trace: int = 0, telemetry: TelemetryConfig | None = None) -> str:
    """The eBPF C source of ``program``'s XDP program for ``cap`` (and its ``hmn_xdp_vec`` test
    entry); ``trace`` > 0 adds the per-packet debug map ``hmn_trace`` (test builds);
    ``telemetry`` adds packet sampling into the ring buffer ``hmn_samples``."""
    return template_env().get_template("hmn_xdp.bpf.c.j2").render(
        **build_context(program, cap, name=name, trace=trace, telemetry=telemetry))
