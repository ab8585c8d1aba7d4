"""P4 flow-state block: declarations, hash key order, nesting, checker, and execution vs the twin.

The last tests run the generated flow block itself: a small interpreter for the restricted P4
the flow templates emit (assignments, if/else, register read/write or RegisterAction, CRC-32
hash) executes it packet by packet, and the flow features must equal the twin's.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from homunculus.features.library import FeatureDef, FlowConfig
from homunculus.features.reference import tuple_bytes
from homunculus.ir.flow import FlowProgram, lower_flow_features
from homunculus.ir.pipeline import (
    Entry,
    Exact,
    FeatureInput,
    Field,
    MatchKind,
    Pipeline,
    Range,
    Table,
    TableRole,
    VerdictKind,
)
from homunculus.targets.p4 import check_program, emit_p4, runtime_entries
from homunculus.targets.p4.codegen import key_byte_slices
from homunculus.targets.p4.flow_tna import UnsupportedOnTofino, check_tofino_flow, storage_width
from homunculus.targets.p4.flow_twin import run_flow_program

from conftest import every_flow_kind

ARCHS = ("v1model", "tna")
UNIT = {"v1model": 1000, "tna": 1024}
VERDICT_OUTPUTS = (Field("verdict_port", 9), Field("verdict_drop", 1), Field("verdict_mark", 1),
                   Field("verdict_dscp", 6))


def feature_defs(header: str = "ipv4.ttl", header_width: int = 8) -> list[FeatureDef]:
    return every_flow_kind(header, header_width)


CLASS = Field("class_id", 1)


def verdict_table(winner: Field) -> Table:
    """Winner c -> class c; class 1 dropped (on the default port), class 0 to port 2."""
    entries = tuple(Entry((Exact(c),), (c, 1 if c == 1 else c + 2, int(c == 1), 0, 0))
                    for c in range(2))
    return Table("verdict", TableRole.VERDICT, (winner,), (MatchKind.EXACT,),
                 (CLASS, *VERDICT_OUTPUTS), entries, (0, 1, 0, 0, 0))


def flow_pipeline(arch: str = "v1model", *, slots: int = 8, time_shift: int = 2,
                  unit_ns: int | None = None, header: str = "ipv4.ttl",
                  header_width: int = 8) -> tuple[Pipeline, list[FeatureDef]]:
    defs = feature_defs(header, header_width)
    if arch == "tna":  # a Tofino stateful ALU cannot shift the stored value (flow_tna.py)
        defs = [d for d in defs if d.kind != "ewma_len"]
    cfg = FlowConfig(slots=slots, time_shift=time_shift, unit_ns=unit_ns or UNIT[arch])
    program = lower_flow_features(defs, cfg)
    assert program is not None
    features = tuple(FeatureInput(f.name, Field(f"f_{i}", f.width), f.field, flow=f.is_flow)
                     for i, f in enumerate(defs))
    winner = Field("winner", 1)
    lut = Table("lut", TableRole.LOOKUP, (features[0].field, features[1].field),
                (MatchKind.RANGE, MatchKind.EXACT), (winner,),
                (Entry((Range(0, 10), Exact(3)), (1,)),), (0,))
    return Pipeline(features, (), (lut,), None, None, CLASS, verdict_table(winner),
                    VerdictKind.DROP, ("benign", "attack"), flow=program,
                    notes={"winner": winner}), defs


def program_of(pipeline: Pipeline) -> FlowProgram:
    assert pipeline.flow is not None
    return pipeline.flow


def block(text: str, open_brace: int) -> str:
    """The text inside the brace at ``open_brace`` and its match."""
    depth = 0
    for i in range(open_brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_brace + 1 : i]
    raise AssertionError("unbalanced braces")


def ingress_apply(text: str) -> str:
    control = text.index("control MyIngress(")
    apply = text.index("    apply {", control)
    return block(text, text.index("{", apply))


# --- declarations ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_every_register_declared_once_with_width_and_slots(arch: str) -> None:
    pipeline, _ = flow_pipeline(arch, slots=1024)
    text = emit_p4(pipeline, arch)
    program = program_of(pipeline)
    # sig, last, first and 13 state registers (12 on Tofino: no EWMA)
    n = 16 if arch == "v1model" else 15
    assert len(program.registers) == n
    for r in program.registers:
        size = storage_width(r.width)  # Tofino registers are 8, 16 or 32 bits
        decl = (f"register<bit<{r.width}>>(1024) {r.name};" if arch == "v1model"
                else f"Register<bit<{size}>, bit<10>>(1024, {size}w0) {r.name};")
        assert text.count(decl) == 1, decl
        assert len(re.findall(rf"\b{r.name};", text)) == 1
    assert text.count("register<" if arch == "v1model" else "Register<") == n


def test_ewma_is_refused_on_tofino() -> None:
    defs = [d for d in feature_defs() if d.kind in ("header", "ewma_len")]
    program = lower_flow_features(defs, FlowConfig(slots=8, unit_ns=1024))
    assert program is not None
    with pytest.raises(UnsupportedOnTofino, match="shift of the stored value"):
        check_tofino_flow(program)


def test_tna_has_one_register_action_per_register() -> None:
    pipeline, _ = flow_pipeline("tna", slots=256)
    text = emit_p4(pipeline, "tna")
    actions = re.findall(r"RegisterAction<bit<(\d+)>, bit<8>, bit<(\d+)>>\((\w+)\) (\w+) = \{",
                         text)
    program = program_of(pipeline)
    assert sorted(a[2] for a in actions) == sorted(r.name for r in program.registers)
    for width, out, reg, name in actions:
        assert int(width) == storage_width(program.register(reg).width)
        assert int(out) == (1 if reg == "r_sig" else int(width))  # sig: the new-flow flag
        assert name == f"{reg}_update"
        assert text.count(f"{name}.execute(meta.hmn_flow_slot);") == 1
    assert "Hash<bit<32>>(HashAlgorithm_t.CUSTOM, hmn_key_poly) hmn_key_hash;" in text
    # ns >> 10, then time_shift 2: a window of the clock, read only inside stateful ALUs
    assert "rv = ig_prsr_md.global_tstamp[43:12] - v;" in text
    assert "global_tstamp" not in ingress_apply(text)
    assert "meta.hmn_flow_sig = meta.hmn_sig_crc[15:0] | 16w1;" in text


def register_bodies(text: str) -> dict[str, str]:
    """RegisterAction name -> the body of its apply."""
    out = {}
    for m in re.finditer(r"RegisterAction<.*?>>\((\w+)\) \w+ = \{", text):
        out[m[1]] = block(text, text.index("{", text.index("void apply(", m.end())))
    return out


def test_tna_register_actions_fit_one_stateful_alu() -> None:
    """Each body: at most two comparisons, at most two distinct values written to v (under
    different predicates), one binary operator per statement, no shifts."""
    text = emit_p4(flow_pipeline("tna")[0], "tna")
    bodies = register_bodies(text)
    assert bodies
    for reg, body in bodies.items():
        conditions = re.findall(r"if \((.*?)\) \{", body)
        compares = sum(len(re.findall(r"==|!=|<|>", c)) for c in conditions)
        assert compares <= 2, reg
        writes = set(re.findall(r"^\s*v = (.*);$", body, flags=re.M))
        assert len(writes) <= 2, (reg, writes)
        for rhs in re.findall(r"= (.*);", body):
            assert len(re.findall(r" (?:\+|-|\|\+\||&|\|) ", rhs)) <= 1, (reg, rhs)
            assert ">>" not in rhs and "<<" not in rhs, (reg, rhs)


@pytest.mark.parametrize("arch", ARCHS)
def test_flow_metadata_fields(arch: str) -> None:
    pipeline, defs = flow_pipeline(arch, slots=4096)
    text = emit_p4(pipeline, arch)
    meta = block(text, text.index("{", text.index("struct metadata_t")))
    widths = {n: int(w) for w, n in re.findall(r"bit<(\d+)> (\w+);", meta)}
    expected = {"hmn_l4_sport": 16, "hmn_l4_dport": 16, "hmn_flow_hash": 32,
                "hmn_flow_slot": 12, "hmn_flow_sig": 16, "hmn_new_flow": 1,
                "hmn_iat": 32, "hmn_age": 32}
    if arch == "v1model":  # Tofino reads its clock inside the stateful ALUs only
        expected["hmn_now"] = 32
    else:
        assert "hmn_now" not in widths
    # flow features are metadata; the header feature (f_0) is matched on its header field
    expected |= {f"f_{i}": f.width for i, f in enumerate(defs) if f.is_flow}
    assert expected.items() <= widths.items()
    assert "f_0" not in widths
    if arch == "tna":  # Tofino metadata is not zeroed: the parser initialises every field
        init = text.split("state parse_ethernet")[0]
        assert all(f"meta.{name} = " in init for name in widths)


def test_v1model_hash_and_time() -> None:
    pipeline, _ = flow_pipeline("v1model", time_shift=0)
    text = emit_p4(pipeline, "v1model")
    assert ("hash(meta.hmn_flow_hash, HashAlgorithm.crc32, 32w0, { hdr.ipv4.src_addr, "
            "hdr.ipv4.dst_addr, meta.hmn_l4_sport, meta.hmn_l4_dport, hdr.ipv4.protocol }, "
            "64w4294967296);") in text
    assert "meta.hmn_now = (bit<32>)(standard_metadata.ingress_global_timestamp);" in text
    assert "meta.hmn_flow_slot = meta.hmn_flow_hash[2:0];" in text
    assert "meta.hmn_flow_sig = meta.hmn_sig_crc[15:0] | 16w1;" in text


def test_signature_byte_list_is_the_key_reversed() -> None:
    rng = np.random.default_rng(1)
    for arch in ARCHS:
        text = emit_p4(flow_pipeline(arch)[0], arch)
        call = re.search(r"(?:hash\(meta\.hmn_sig_crc, HashAlgorithm\.crc32, 32w0,|"
                         r"meta\.hmn_sig_crc = hmn_sig_hash\.get\()\s*\{([^}]*)\}", text)
        assert call is not None
        items = [i.strip() for i in call.group(1).split(",")]
        assert items == key_byte_slices(reverse=True)
        assert len(items) == 13
        for _ in range(50):
            src, dst = (int(v) for v in rng.integers(0, 2**32, 2))
            sport, dport = (int(v) for v in rng.integers(0, 2**16, 2))
            proto = int(rng.integers(0, 256))
            values = {"hdr.ipv4.src_addr": src, "hdr.ipv4.dst_addr": dst,
                      "meta.hmn_l4_sport": sport, "meta.hmn_l4_dport": dport,
                      "hdr.ipv4.protocol": proto}
            emitted = bytes(_byte_of(item, values) for item in items)
            assert emitted == tuple_bytes(src, dst, sport, dport, proto)[::-1]


def _byte_of(item: str, values: dict[str, int]) -> int:
    m = re.fullmatch(r"([\w.]+)(?:\[(\d+):(\d+)\])?", item)
    assert m is not None
    if m.group(2) is None:
        return values[m.group(1)]
    hi, lo = int(m.group(2)), int(m.group(3))
    assert hi - lo == 7
    return (values[m.group(1)] >> lo) & 0xFF


@pytest.mark.parametrize("arch", ARCHS)
def test_unit_ns_mismatch_raises(arch: str) -> None:
    other = UNIT["tna" if arch == "v1model" else "v1model"]
    pipeline, _ = flow_pipeline(arch, unit_ns=other)
    with pytest.raises(ValueError, match="time unit"):
        emit_p4(pipeline, arch)


def test_flow_features_need_a_flow_program() -> None:
    pipeline, _ = flow_pipeline()
    no_program = Pipeline(pipeline.features, pipeline.encoders, pipeline.lookups, None, None,
                          pipeline.class_field, pipeline.verdict, pipeline.verdict_kind,
                          pipeline.class_labels)
    with pytest.raises(ValueError, match="no flow program"):
        emit_p4(no_program, "v1model")


# --- nesting: flow state for every eligible packet, classification inside -------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_flow_update_is_outside_the_classification_condition(arch: str) -> None:
    pipeline, _ = flow_pipeline(arch, header="tcp.flags", header_width=8)
    apply = ingress_apply(emit_p4(pipeline, arch))
    eligible = "if (hdr.ipv4.isValid() && hdr.ipv4.ihl == 4w5) {"
    assert apply.count(eligible) == 1
    outer = block(apply, apply.index(eligible) + len(eligible) - 1)
    classify = "if (hdr.tcp.isValid()) {"
    start = outer.rindex(classify)  # the first one is the L4-port choice of the flow key
    assert outer.index(classify) < outer.index("r_sig") < start
    inner = block(outer, start + len(classify) - 1)
    flow_part = outer[:start]
    sig = "r_sig.read(" if arch == "v1model" else "r_sig_update.execute("
    for r in program_of(pipeline).registers:
        access = f"{r.name}.read(" if arch == "v1model" else f"{r.name}_update.execute("
        assert access in flow_part and access not in inner
    assert sig in flow_part
    assert "meta.f_1 = " in flow_part  # flow features are written before classification
    assert "lut.apply();" in inner  # the deciding table (it carries the verdict)
    assert "lut.apply();" not in flow_part


@pytest.mark.parametrize("arch", ARCHS)
def test_without_required_headers_everything_eligible_is_classified(arch: str) -> None:
    apply = ingress_apply(emit_p4(flow_pipeline(arch)[0], arch))
    eligible = "if (hdr.ipv4.isValid() && hdr.ipv4.ihl == 4w5) {"
    outer = block(apply, apply.index(eligible) + len(eligible) - 1)
    assert outer.index("meta.f_1 = ") < outer.index("lut.apply();")
    assert "isValid()) {\n" not in outer.replace("if (hdr.tcp.isValid()) {", "")\
        .replace("} else if (hdr.udp.isValid()) {", "")


# --- check_program ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_check_program_accepts_flow_and_keeps_old_signature(arch: str) -> None:
    pipeline, _ = flow_pipeline(arch)
    text = emit_p4(pipeline, arch)
    runtime = runtime_entries(pipeline, program_name="demo")
    check_program(text, runtime)
    check_program(text, runtime, flow=pipeline.flow)


@pytest.mark.parametrize("arch", ARCHS)
def test_check_program_rejects_register_mismatches(arch: str) -> None:
    pipeline, _ = flow_pipeline(arch)
    text = emit_p4(pipeline, arch)
    runtime = runtime_entries(pipeline, program_name="demo")
    if arch == "v1model":
        narrow = text.replace("register<bit<12>>(8) r_add_len_w12;",
                              "register<bit<11>>(8) r_add_len_w12;")
        twice = text.replace("register<bit<16>>(8) r_sig;",
                             "register<bit<16>>(8) r_sig;\n    register<bit<16>>(8) r_sig;")
        small = text.replace("register<bit<16>>(8) r_sig;", "register<bit<16>>(4) r_sig;")
    else:
        narrow = text.replace("Register<bit<16>, bit<3>>(8, 16w0) r_add_len_w12;",
                              "Register<bit<11>, bit<3>>(8, 11w0) r_add_len_w12;")
        twice = text.replace("Register<bit<16>, bit<3>>(8, 16w0) r_sig;",
                             "Register<bit<16>, bit<3>>(8, 16w0) r_sig;\n"
                             "    Register<bit<16>, bit<3>>(8, 16w0) r_sig;")
        small = text.replace("Register<bit<16>, bit<3>>(8, 16w0) r_sig;",
                             "Register<bit<16>, bit<3>>(4, 16w0) r_sig;")
    missing = re.sub(r"\n *(register|Register)<bit<32>[^;]*\) r_first;", "", text)
    for tampered, match in ((narrow, "bit<11>|types"), (twice, "twice"), (small, "x 4"),
                            (missing, "flow program")):
        assert tampered != text
        with pytest.raises(ValueError, match=match):
            check_program(tampered, runtime, flow=pipeline.flow)


def test_check_program_needs_one_register_action_per_register() -> None:
    pipeline, _ = flow_pipeline("tna")
    text = emit_p4(pipeline, "tna")
    runtime = runtime_entries(pipeline, program_name="demo")
    action = re.search(r"RegisterAction<bit<8>, bit<3>, bit<8>>\(r_count_w3\)", text)
    assert action is not None
    no_action = text.replace(action.group(0), "RegisterAction<bit<8>, bit<3>, bit<8>>(r_last)")
    with pytest.raises(ValueError, match="RegisterAction"):
        check_program(no_action, runtime, flow=pipeline.flow)


# --- execution of the generated flow block against the twin ----------------------------------

HDR_WIDTHS = {"ipv4.src_addr": 32, "ipv4.dst_addr": 32, "ipv4.protocol": 8,
              "ipv4.total_len": 16, "tcp.src_port": 16, "tcp.dst_port": 16,
              "udp.src_port": 16, "udp.dst_port": 16}


def _mask(width: int) -> int:
    return (1 << width) - 1


def _expr(e: str) -> str:
    """A P4 expression of the flow block as Python (wrap-around happens at assignment)."""
    e = re.sub(r"hdr\.(\w+)\.isValid\(\)", r"H['\1.valid']", e)
    e = re.sub(r"\b\d+w(\d+)\b", r"\1", e)
    e = re.sub(r"ig_prsr_md\.global_tstamp\[(\d+):(\d+)\]",
               lambda m: f"((TS >> {m[2]}) & {_mask(int(m[1]) - int(m[2]) + 1)})", e)
    e = re.sub(r"((?:meta|hdr\.\w+)\.\w+)\[(\d+):(\d+)\]",
               lambda m: f"(({m[1]} >> {m[3]}) & {_mask(int(m[2]) - int(m[3]) + 1)})", e)
    e = re.sub(r"\bmeta\.(\w+)", r"M['\1']", e)
    e = re.sub(r"\bhdr\.(\w+)\.(\w+)", r"H['\1.\2']", e)
    e = re.sub(r"standard_metadata\.ingress_global_timestamp|ig_prsr_md\.global_tstamp", "TS", e)
    e = re.sub(r"\(bit<(\d+)>\)(\([^()]*\)|M\['\w+'\]|H\['[\w.]+'\])",
               lambda m: f"({_mask(int(m[1]))} & {m[2]})", e)
    return e.replace("&&", " and ").replace("||", " or ")


def _hash_items(items: str, meta_widths: dict[str, int]) -> str:
    parts = []
    for item in (i.strip() for i in items.split(",")):
        m = re.fullmatch(r"(meta|hdr)\.([\w.]+?)(?:\[(\d+):(\d+)\])?", item)
        assert m is not None, item
        width = (int(m[3]) - int(m[4]) + 1 if m[3] else
                 meta_widths[m[2]] if m[1] == "meta" else HDR_WIDTHS[m[2]])
        parts.append(f"({_expr(item)}, {width})")
    return f"CRC([{', '.join(parts)}])"


def _statements(code: str) -> list[str]:
    """One statement (or brace line) per entry, comments dropped, multi-line calls joined."""
    lines = [ln.strip() for ln in re.sub(r"//[^\n]*", "", code).splitlines() if ln.strip()]
    out: list[str] = []
    pending = ""
    for line in lines:
        pending = f"{pending} {line}".strip()
        if pending.endswith((";", "{", "}")):
            out.append(pending)
            pending = ""
    assert not pending
    return out


def _const_tables(text: str) -> dict[str, tuple[str, list[tuple[int, int, str]]]]:
    """Tables with const entries (TNA bin tables): name -> (key expression, entries)."""
    tables = {}
    for m in re.finditer(r"\btable (\w+) \{", text):
        body = block(text, m.end() - 1)
        if "const entries" not in body:
            continue
        key = re.search(r"key = \{\s*(.+?): ternary;", body)
        assert key is not None
        entries = [(int(v), int(k), a) for v, k, a in
                   re.findall(r"\(\d+w(\d+) &&& \d+w(\d+)\): (\w+)\(\);", body)]
        tables[m[1]] = (key[1], entries)
    return tables


def _plain_actions(text: str) -> dict[str, str]:
    """Parameterless actions: name -> body."""
    return {m[1]: block(text, m.end() - 1)
            for m in re.finditer(r"\baction (\w+)\(\) \{", text)}


def _translate(code: str, widths: dict[str, int], tables: dict | None = None,
               actions: dict[str, str] | None = None) -> list[str]:
    """Python lines for the flow statements; ``widths`` gives every assignable's width; const
    tables and parameterless actions are inlined."""
    py: list[str] = []
    depth = 0
    for s in _statements(code):
        pad = "    " * depth
        if m := re.fullmatch(r"(\w+)\.apply\(\);", s):
            key, entries = (tables or {})[m[1]]
            py.append(f"{pad}K = {_expr(key)}")
            for i, (value, mask, action) in enumerate(entries):
                py.append(f"{pad}{'el' if i else ''}if K & {mask} == {value}:")
                body = _translate((actions or {})[action], widths)
                py += [f"{pad}    {ln}" for ln in body] or [f"{pad}    pass"]
            continue
        if m := re.fullmatch(r"(\w+)\(\);", s):
            py += [f"{pad}{ln}" for ln in _translate((actions or {})[m[1]], widths)]
            continue
        if m := re.fullmatch(r"if \((.*)\) \{", s):
            py.append(f"{pad}if {_expr(m[1])}:")
            depth += 1
        elif m := re.fullmatch(r"\} else if \((.*)\) \{", s):
            py.append(f"{'    ' * (depth - 1)}elif {_expr(m[1])}:")
        elif s == "} else {":
            py.append(f"{'    ' * (depth - 1)}else:")
        elif s == "}":
            py.append(f"{pad}pass")
            depth -= 1
        elif m := re.fullmatch(r"(\w+)\.read\(meta\.(\w+), \(bit<32>\)meta\.hmn_flow_slot\);", s):
            py.append(f"{pad}M['{m[2]}'] = R['{m[1]}'][M['hmn_flow_slot']]")
        elif m := re.fullmatch(r"(\w+)\.write\(\(bit<32>\)meta\.hmn_flow_slot, (.*)\);", s):
            py.append(f"{pad}R['{m[1]}'][M['hmn_flow_slot']] = {_expr(m[2])}")
        elif m := re.fullmatch(r"hash\(meta\.(\w+), HashAlgorithm\.crc32, 32w0, \{(.*)\}, "
                               r"64w4294967296\);", s):
            py.append(f"{pad}M['{m[1]}'] = {_hash_items(m[2], widths)} % 2**32")
        elif m := re.fullmatch(r"meta\.(\w+) = hmn_\w+_hash\.get\(\{(.*)\}\);", s):
            py.append(f"{pad}M['{m[1]}'] = {_hash_items(m[2], widths)}")
        elif m := re.fullmatch(r"meta\.(\w+) = (\w+)_update\.execute\(meta\.hmn_flow_slot\);", s):
            py.append(f"{pad}M['{m[1]}'] = EXEC('{m[2]}')")
        elif m := re.fullmatch(r"(meta\.(\w+)|v|rv) = (.*) \|\+\| (.*);", s):
            target = f"M['{m[2]}']" if m[2] else m[1]
            width = widths[m[2] or m[1]]  # saturating add at the target's width
            py.append(f"{pad}{target} = min({_expr(m[3])} + {_expr(m[4])}, {_mask(width)})")
        elif m := re.fullmatch(r"(meta\.(\w+)|v|rv) = (.*);", s):
            target = f"M['{m[2]}']" if m[2] else m[1]
            width = widths[m[2] or m[1]]
            py.append(f"{pad}{target} = ({_expr(m[3])}) & {_mask(width)}")
        else:
            raise AssertionError(f"untranslated statement: {s}")
    assert depth == 0
    return py


def _crc(parts: list[tuple[int, int]]) -> int:
    value, bits = 0, 0
    for v, w in parts:
        value, bits = (value << w) | (v & _mask(w)), bits + w
    assert bits % 8 == 0
    return zlib.crc32(value.to_bytes(bits // 8, "big"))


class FlowBlock:
    """The generated flow block of one program, runnable on one packet at a time."""

    def __init__(self, text: str, arch: str, program: FlowProgram) -> None:
        meta = block(text, text.index("{", text.index("struct metadata_t")))
        self.widths = {n: int(w) for w, n in re.findall(r"bit<(\d+)> (\w+);", meta)}
        apply = ingress_apply(text)
        eligible = "if (hdr.ipv4.isValid() && hdr.ipv4.ihl == 4w5) {"
        outer = block(apply, apply.index(eligible) + len(eligible) - 1)
        flow_code = outer[: outer.index("// Classification.")]
        control = text[text.index("control MyIngress("):]
        self.code = compile("\n".join(_translate(flow_code, self.widths, _const_tables(control),
                                                 _plain_actions(control))), "flow", "exec")
        self.registers = {r.name: [0] * program.config.slots for r in program.registers}
        self.actions = self._register_actions(text) if arch == "tna" else {}

    def _register_actions(self, text: str) -> dict[str, Any]:
        actions = {}
        for m in re.finditer(r"RegisterAction<bit<(\d+)>, bit<\d+>, bit<(\d+)>>\((\w+)\) \w+ = ",
                             text):
            body_start = text.index("{", text.index("void apply(", m.end()))
            lines = _translate(block(text, body_start), {"v": int(m[1]), "rv": int(m[2])})
            src = "def act(v, M, H, TS):\n    rv = 0\n" + "".join(f"    {ln}\n" for ln in lines)
            src += "    return v, rv\n"
            scope: dict[str, Any] = {}
            exec(compile(src, m[3], "exec"), scope)
            actions[m[3]] = scope["act"]
        return actions

    def run(self, headers: dict[str, int], ts: int) -> dict[str, int]:
        meta = dict.fromkeys(self.widths, 0)
        slot_of: Callable[[], int] = lambda: meta["hmn_flow_slot"]  # noqa: E731

        def execute(name: str) -> int:
            v, rv = self.actions[name](self.registers[name][slot_of()], meta, headers, ts)
            self.registers[name][slot_of()] = v
            return rv

        exec(self.code, {"M": meta, "H": headers, "R": self.registers, "TS": ts, "CRC": _crc,
                         "EXEC": execute})
        return meta


def packet_table(n: int = 700, seed: int = 0) -> pd.DataFrame:
    """Few flows over few slots (evictions), saturating lengths and counters, time wrap-around."""
    rng = np.random.default_rng(seed)
    flows = [(int(rng.integers(0, 2**32)), int(rng.integers(0, 2**32)),
              int(rng.integers(0, 2**16)), int(rng.integers(0, 2**16)),
              int(rng.choice([6, 17, 1]))) for _ in range(12)]
    pick = rng.integers(0, len(flows), n)
    gaps = rng.choice([0, 1, 3, 700, 5000, 70_000, 3_000_000, 40_000_000], n)
    lengths = rng.choice([20, 40, 576, 1500, 4000, 9000, 65535], n)
    rows = []
    for i in range(n):
        src, dst, sport, dport, proto = flows[pick[i]]
        rows.append({"has_ipv4": bool(rng.random() > 0.05),
                     "ip_ihl": 5 if rng.random() > 0.05 else 6,
                     "ip_src": src, "ip_dst": dst, "src_port": sport, "dst_port": dport,
                     "ip_proto": proto, "has_tcp": proto == 6, "has_udp": proto == 17,
                     "ip_total_len": int(lengths[i])})
    table = pd.DataFrame(rows)
    table["ts_us"] = np.cumsum(gaps) + 5_000_000_000  # microseconds: now wraps 32 bits
    return table


def _headers(row: pd.Series) -> dict[str, int]:
    tcp, udp = bool(row["has_tcp"]), bool(row["has_udp"])
    return {"ipv4.valid": 1, "ipv4.src_addr": int(row["ip_src"]),
            "ipv4.dst_addr": int(row["ip_dst"]), "ipv4.protocol": int(row["ip_proto"]),
            "ipv4.total_len": int(row["ip_total_len"]), "tcp.valid": int(tcp),
            "udp.valid": int(udp),
            **{f"{h}.{p}_port": int(row[f"{p}_port"]) if ok else 0
               for h, ok in (("tcp", tcp), ("udp", udp)) for p in ("src", "dst")}}


@pytest.mark.parametrize(("arch", "slots", "time_shift"),
                         [("v1model", 8, 2), ("tna", 8, 2), ("v1model", 64, 0), ("tna", 4, 5)])
def test_generated_flow_block_matches_the_twin(arch: str, slots: int, time_shift: int) -> None:
    pipeline, defs = flow_pipeline(arch, slots=slots, time_shift=time_shift)
    program = program_of(pipeline)
    table = packet_table()
    expected, eligible = run_flow_program(program, table, len(defs))
    flow_block = FlowBlock(emit_p4(pipeline, arch), arch, program)
    flow_columns = [i for i, f in enumerate(defs) if f.is_flow]
    new_flows = 0
    for i in np.nonzero(eligible)[0]:
        row = table.iloc[i]
        ts = int(row["ts_us"]) * (1000 if arch == "tna" else 1)  # Tofino: ns; bmv2: us
        meta = flow_block.run(_headers(row), ts)
        new_flows += meta["hmn_new_flow"]
        got = [meta[f"f_{c}"] for c in flow_columns]
        assert got == [int(expected[i, c]) for c in flow_columns], f"packet {i}"
    assert 10 < new_flows < eligible.sum() - 10  # evictions and continuing flows both happen
    saturated = {defs[c].name for c in flow_columns
                 if (expected[:, c] == defs[c].max_value).any()}
    assert {"pkts", "bytes", "iat", "age10"} <= saturated
