"""P4 backend: program emission, runtime entries (writers and reader) and the program checker."""

from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import replace

import pytest

from homunculus.ir.pipeline import (
    Argmax,
    Entry,
    Exact,
    FeatureInput,
    Field,
    MatchKind,
    Pipeline,
    Range,
    ScoreSum,
    Table,
    TableRole,
    Ternary,
    VerdictKind,
)
from homunculus.passes.switch import lower_for_switch
from homunculus.targets.p4 import (
    bfrt_loader,
    check_program,
    emit_p4,
    read_runtime_entries,
    runtime_entries,
    simple_switch_commands,
)
from homunculus.targets.p4.actions import table_actions
from homunculus.targets.p4.entries import needs_priority

ARCHS = ("v1model", "tna")
VERDICT_OUTPUTS = (
    Field("verdict_port", 9),
    Field("verdict_drop", 1),
    Field("verdict_mark", 1),
    Field("verdict_dscp", 6),
)


CLASS = Field("class_id", 2)


def verdict_table(winner: Field, n_classes: int,
                  outputs: tuple[Field, ...] = VERDICT_OUTPUTS) -> Table:
    """Winner c -> class c; port c+2, drop class 2 (on the default port), mark the others with
    DSCP 10+c (when the outputs have those roles)."""
    roles = {o.name for o in outputs}
    values = {"class_id": lambda c: c,
              "verdict_port": lambda c: 1 if c == 2 and "verdict_drop" in roles else c + 2,
              "verdict_drop": lambda c: int(c == 2), "verdict_mark": lambda c: int(c != 2),
              "verdict_dscp": lambda c: 10 + c if c != 2 else 0}
    outputs = (CLASS, *outputs)
    entries = tuple(Entry((Exact(c),), tuple(values[o.name](c) for o in outputs))
                    for c in range(n_classes))
    default = tuple(1 if o.name == "verdict_port" else 0 for o in outputs)
    return Table("verdict", TableRole.VERDICT, (winner,), (MatchKind.EXACT,), outputs, entries,
                 default)


def full_pipeline(labels: tuple[str, ...] = ("benign", "scan", "flood"),
                  names: tuple[str, ...] = ("ttl", "length", "carried"),
                  kind: VerdictKind = VerdictKind.DSCP) -> Pipeline:
    """Encoders (range, ternary) -> lookups -> score sum -> arg-max over three classes."""
    f_ttl, f_len, f_x = Field("f_ttl", 8), Field("f_len", 16), Field("f_x", 5)
    c_ttl, c_len = Field("c_ttl", 2), Field("c_len", 3)
    parts = [[Field(f"p{t}_{c}", 6) for c in range(3)] for t in range(2)]
    scores = tuple(Field(f"score_{c}", 8) for c in range(3))
    winner = Field("winner", 2)
    encoders = (
        Table("enc_ttl", TableRole.ENCODER, (f_ttl,), (MatchKind.RANGE,), (c_ttl,),
              (Entry((Range(0, 63),), (0,)), Entry((Range(64, 127),), (1,))), (3,)),
        Table("enc_len", TableRole.ENCODER, (f_len,), (MatchKind.TERNARY,), (c_len,),
              (Entry((Ternary(0x0100, 0xFF00),), (2,)), Entry((Ternary(0, 0),), (1,))), (0,)),
    )
    lookups = (
        Table("lut_a", TableRole.LOOKUP, (c_ttl, f_x), (MatchKind.EXACT, MatchKind.TERNARY),
              tuple(parts[0]),
              (Entry((Exact(1), Ternary(0, 0)), (1, 2, 3)),
               Entry((Exact(2), Ternary(4, 0x1C)), (4, 5, 63))), (0, 0, 0)),
        Table("lut_b", TableRole.LOOKUP, (c_len,), (MatchKind.EXACT,), tuple(parts[1]),
              (Entry((Exact(2),), (9, 0, 1)),), (1, 1, 1)),
    )
    score_sum = ScoreSum(scores, tuple((parts[0][c], parts[1][c]) for c in range(3)), (5, 0, 7))
    features = (FeatureInput(names[0], f_ttl, "ipv4.ttl"),
                FeatureInput(names[1], f_len, "udp.length"),
                FeatureInput(names[2], f_x, None))
    return Pipeline(features, encoders, lookups, score_sum, Argmax(scores, winner), CLASS,
                    verdict_table(winner, 3), kind, labels, notes={"winner": winner})


def direct_pipeline(kind: VerdictKind = VerdictKind.DROP,
                    outputs: tuple[Field, ...] = VERDICT_OUTPUTS) -> Pipeline:
    """A single lookup writes the class directly: no score sum, no arg-max, TCP features only."""
    f_port, f_flags = Field("f_dport", 16), Field("f_flags", 8)
    winner = Field("winner", 1)
    lookup = Table("direct", TableRole.LOOKUP, (f_port, f_flags),
                   (MatchKind.RANGE, MatchKind.TERNARY), (winner,),
                   (Entry((Range(0, 1023), Ternary(0x02, 0x12)), (1,)),
                    Entry((Range(22, 22), Ternary(0, 0)), (0,))), (0,))
    features = (FeatureInput("dst port", f_port, "tcp.dst_port"),
                FeatureInput("flags", f_flags, "tcp.flags"))
    return Pipeline(features, (), (lookup,), None, None, CLASS, verdict_table(winner, 2, outputs),
                    kind, ("normal", "attack"), notes={"winner": winner})


def strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", text)


PIPELINES = {
    "full": full_pipeline,
    "direct": direct_pipeline,
    **{f"kind_{k.value}": (lambda k=k: full_pipeline(kind=k)) for k in VerdictKind},
    "port_only": lambda: direct_pipeline(VerdictKind.FORWARD, (Field("verdict_port", 9),)),
}


# --- emission -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "arch"), list(itertools.product(PIPELINES, ARCHS)))
def test_emits_and_checks(name: str, arch: str) -> None:
    pipeline = PIPELINES[name]()
    text = emit_p4(pipeline, arch, program_name="demo")
    assert "#include <core.p4>" in text
    lowered = lower_for_switch(pipeline)
    for table in lowered.tables():
        assert f"table {table.name} {{" in text
        for action in table_actions(table):
            assert f"action {action.name}(" in text
    assert text.count("{") == text.count("}")
    check_program(text, runtime_entries(pipeline, program_name="demo", arch=arch))


def test_v1model_structure() -> None:
    text = emit_p4(replace(full_pipeline(), default_port=7), "v1model")
    assert "#include <v1model.p4>" in text
    assert ("V1Switch(MyParser(), MyVerifyChecksum(), MyIngress(), MyEgress(), "
            "MyComputeChecksum(), MyDeparser()) main;") in text
    assert "mark_to_drop(standard_metadata);" in text
    assert "standard_metadata.egress_spec = 9w7;" in text
    assert "standard_metadata.egress_spec = verdict_port;" in text
    assert "hdr.ipv4.diffserv[7:2] = verdict_dscp;" in text
    assert "HashAlgorithm.csum16" in text


def test_tna_structure() -> None:
    text = emit_p4(full_pipeline(), "tna")
    assert "#include <tna.p4>" in text
    assert "pkt.extract(ig_intr_md);\n        pkt.advance(PORT_METADATA_SIZE);" in text
    assert "Switch(pipe) main;" in text
    assert "Checksum() ipv4_checksum;" in text
    assert "ig_dprsr_md.drop_ctl = 3w1;" in text
    assert "ig_tm_md.ucast_egress_port = verdict_port;" in text
    # Tofino metadata is not zeroed: every metadata field is initialised in the parser.
    for field in ("c_ttl", "p0_2", "class_id", "am_d1_2"):
        assert f"meta.{field} = " in text.split("state parse_ethernet")[0]
    assert "meta.f_x" not in text  # read from the feature header, never copied


def test_tables_and_defaults() -> None:
    text = emit_p4(full_pipeline(), "v1model")
    assert "hdr.ipv4.ttl: range;" in text  # header fields are keys, never copied
    assert "meta.f_ttl" not in text
    assert "meta.c_ttl: exact;\n            hdr.hmn_features.f_x: ternary;" in text
    # terms widen to the score width (largest total 63 + 7 + sign bit: 8 bits)
    assert "action lut_a_set(bit<8> p0_0, bit<8> p0_1, bit<8> p0_2) {" in text
    assert "size = 2;" in text
    assert "default_action = enc_ttl_set(2w3);" in text
    assert "const default_action" not in text


def test_score_sum_and_argmax_code() -> None:
    """Adder levels of two-operand adds (in place), then differences, then the sign table."""
    text = emit_p4(full_pipeline(), "tna")
    assert ("action hmn_sum0() {\n        meta.p0_0 = meta.p0_0 + meta.p1_0;\n"
            "        meta.p0_1 = meta.p0_1 + meta.p1_1;\n"
            "        meta.p0_2 = meta.p0_2 + meta.p1_2;\n    }") in text
    # the biases (5, 0, 7) are folded into the first term's table: no constant operand left
    assert "default_action = lut_a_set(8w5, 8w0, 8w7);" in text
    assert "hmn_sum1" not in text
    assert "meta.am_d0_2 = meta.p0_0 - meta.p0_2;" in text
    assert 'meta.am_d0_2[7:7]: ternary @name("am_d0_2_b7");' in text
    v1 = emit_p4(full_pipeline(), "v1model")
    assert "meta.am_d0_2: ternary;" in v1  # bmv2: the whole field, the sign bit in the mask


def test_feature_header_padding_and_port() -> None:
    text = emit_p4(full_pipeline(), "v1model", feature_udp_port=4000)
    assert "header hmn_features_h {\n    bit<5> f_x;\n    bit<3> hmn_pad;\n}" in text
    assert "16w4000: parse_hmn_features;" in text
    assert "hdr.hmn_features.f_x: ternary;" in text
    assert "hdr.hmn_features.isValid() && hdr.udp.isValid()" in text
    direct = emit_p4(direct_pipeline(), "v1model")
    assert "hmn_features" not in direct
    assert "hdr.tcp.isValid()" in direct


def test_port_only_verdict_has_no_checksum_or_drop() -> None:
    pipeline = PIPELINES["port_only"]()
    v1 = emit_p4(pipeline, "v1model")
    tna = emit_p4(pipeline, "tna")
    assert "mark_to_drop" not in v1 and "update_checksum" not in v1
    assert "Checksum()" not in tna and "drop_ctl" not in tna


def test_hostile_names_stay_in_comments() -> None:
    hostile_labels = ("x */ } control evil {", "a\nV1Switch(evil) main;", "\\u0000 */ /*")
    hostile_names = ("ttl\n} table evil {", "*/ evil", "line\r\nbreak")
    benign = full_pipeline()
    hostile = full_pipeline(labels=hostile_labels, names=hostile_names)
    for arch in ARCHS:
        good = emit_p4(benign, arch, program_name="ok")
        bad = emit_p4(hostile, arch, program_name="evil */ }\n control x {")
        assert strip_comments(bad) == strip_comments(good)
        assert "evil" not in strip_comments(bad)
        assert "/*" not in bad and "*/" not in bad
    assert bfrt_loader(hostile, program_name="ok") == bfrt_loader(benign, program_name="ok")


def test_unsafe_identifiers_and_impossible_features_rejected() -> None:
    pipeline = direct_pipeline()
    bad_table = copy.copy(pipeline.lookups[0])
    object.__setattr__(bad_table, "name", "apply")
    with pytest.raises(ValueError, match="not a safe"):
        emit_p4(Pipeline(pipeline.features, (), (bad_table,), None, None, pipeline.class_field,
                         pipeline.verdict, pipeline.verdict_kind, pipeline.class_labels), "v1model")
    mixed = Pipeline((*pipeline.features, FeatureInput("u", Field("f_u", 16), "udp.length")),
                     (), pipeline.lookups, None, None, pipeline.class_field, pipeline.verdict,
                     pipeline.verdict_kind, pipeline.class_labels)
    with pytest.raises(ValueError, match="both TCP and UDP"):
        emit_p4(mixed, "tna")
    with pytest.raises(ValueError, match="architecture"):
        emit_p4(pipeline, "psa")  # type: ignore[arg-type]


# --- check_program ------------------------------------------------------------------------------


@pytest.fixture(params=ARCHS)
def program(request: pytest.FixtureRequest) -> tuple[str, dict]:
    pipeline = full_pipeline()
    return (emit_p4(pipeline, request.param),
            runtime_entries(pipeline, program_name="demo", arch=request.param))


def _table(runtime: dict, name: str) -> dict:
    return next(t for t in runtime["tables"] if t["table"] == f"MyIngress.{name}")


def test_check_rejects_narrower_program_param(program: tuple[str, dict]) -> None:
    text, runtime = program
    tampered = text.replace("action lut_a_set(bit<8> p0_0", "action lut_a_set(bit<5> p0_0")
    with pytest.raises(ValueError, match="fit"):
        check_program(tampered, runtime)


def test_check_rejects_value_too_wide(program: tuple[str, dict]) -> None:
    text, runtime = program
    _table(runtime, "enc_ttl")["entries"][0]["match"]["hdr.ipv4.ttl"]["range"]["high"] = "0x100"
    with pytest.raises(ValueError, match="does not fit"):
        check_program(text, runtime)


def test_check_rejects_missing_tables(program: tuple[str, dict]) -> None:
    text, runtime = program
    with pytest.raises(ValueError, match="not declared"):
        check_program(text.replace("table lut_b {", "table lut_c {"), runtime)
    partial = copy.deepcopy(runtime)
    partial["tables"] = [t for t in partial["tables"] if t["table"] != "MyIngress.lut_b"]
    with pytest.raises(ValueError, match="without runtime entries"):
        check_program(text, partial)


@pytest.mark.parametrize("tamper", ["kind", "mask", "key", "action", "param", "priority", "size"])
def test_check_rejects_bad_entries(program: tuple[str, dict], tamper: str) -> None:
    text, runtime = program
    lut_a = _table(runtime, "lut_a")
    entry = lut_a["entries"][1]
    key = "hdr.hmn_features.f_x"
    if tamper == "kind":
        entry["match"][key] = {"exact": {"value": "0x4"}}
    elif tamper == "mask":
        entry["match"][key]["ternary"]["value"] = "0x3"
    elif tamper == "key":
        entry["match"]["meta.other"] = entry["match"].pop(key)
    elif tamper == "action":
        entry["action"]["action"] = "MyIngress.lut_b_set"
    elif tamper == "param":
        del entry["action"]["params"]["p0_2"]
    elif tamper == "priority":
        _table(runtime, "lut_b")["entries"][0]["priority"] = 3
    else:
        lut_a["entries"].append(copy.deepcopy(entry) | {"priority": 9})
    with pytest.raises(ValueError):
        check_program(text, runtime)


# --- runtime JSON, CLI and bfrt ----------------------------------------------------------------


@pytest.mark.parametrize(("name", "arch"), list(itertools.product(PIPELINES, ARCHS)))
def test_runtime_json_round_trip(name: str, arch: str) -> None:
    pipeline = lower_for_switch(PIPELINES[name]())
    data = json.loads(json.dumps(runtime_entries(pipeline, program_name="demo", arch=arch)))
    for spec, table in zip(data["tables"], pipeline.tables(), strict=True):
        if needs_priority(table):
            spec["entries"].reverse()  # order on disk must not matter: priorities decide
    parsed = read_runtime_entries(data, pipeline)
    assert parsed == {t.name: (t.entries, t.default) for t in pipeline.tables()}


def test_runtime_json_format_and_priorities() -> None:
    data = runtime_entries(full_pipeline(), program_name="demo")
    assert data["program"] == "demo"
    enc_len = _table(data, "enc_len")
    assert enc_len["default_action"] == {"action": "MyIngress.enc_len_set",
                                         "params": {"c_len": "0x0"}}
    first, second = enc_len["entries"]
    assert first["match"] == {"hdr.udp.length": {"ternary": {"value": "0x100", "mask": "0xff00"}}}
    assert first["action"] == {"action": "MyIngress.enc_len_set", "params": {"c_len": "0x2"}}
    assert (first["priority"], second["priority"]) == (2, 1)  # P4Runtime: larger wins
    verdict = _table(data, "verdict")  # the sign table: ternary, one entry per class
    assert [e["priority"] for e in verdict["entries"]] == [3, 2, 1]
    assert verdict["entries"][0]["match"]["meta.am_d0_1[7:7]"] == {
        "ternary": {"value": "0x0", "mask": "0x1"}}
    assert [e["action"]["action"] for e in verdict["entries"]] == [
        "MyIngress.verdict_mark", "MyIngress.verdict_mark", "MyIngress.verdict_drop"]
    assert verdict["default_action"] == {"action": "MyIngress.verdict_set",
                                         "params": {"class_id": "0x0", "verdict_port": "0x1"}}


def test_reader_parses_values_and_rejects_garbage() -> None:
    pipeline = direct_pipeline()
    data = runtime_entries(pipeline, program_name="demo")
    entry = _table(data, "direct")["entries"][0]
    entry["match"]["hdr.tcp.dst_port"]["range"]["high"] = 1000  # plain JSON ints are accepted
    entry["priority"] = 5
    entries, default = read_runtime_entries(data, pipeline)["direct"]
    assert entries[0].matches[0] == Range(0, 1000)
    assert default == (0, 2, 0, 1, 10)  # the folded verdict: winner 0's verdict
    entry["match"]["hdr.tcp.dst_port"] = {"exact": {"value": "0x1"}}
    with pytest.raises(ValueError, match="range"):
        read_runtime_entries(data, pipeline)
    with pytest.raises(ValueError, match="lack tables"):
        read_runtime_entries({"tables": []}, pipeline)


def test_simple_switch_commands() -> None:
    lines = simple_switch_commands(full_pipeline()).splitlines()
    table = [line for line in lines if line.split()[1] == "MyIngress.lut_a"]
    assert table == [
        "table_clear MyIngress.lut_a",
        "table_set_default MyIngress.lut_a MyIngress.lut_a_set 0x5 0x0 0x7",  # + biases
        "table_add MyIngress.lut_a MyIngress.lut_a_set 0x1 0x0&&&0x0 => 0x6 0x2 0xa 0",
        "table_add MyIngress.lut_a MyIngress.lut_a_set 0x2 0x4&&&0x1c => 0x9 0x5 0x46 1",
    ]
    assert "table_add MyIngress.enc_ttl MyIngress.enc_ttl_set 0x40->0x7f => 0x1 1" in lines
    # the sign table: whole fields with the sign bit (bit 7) in the mask, one action per verdict
    assert ("table_add MyIngress.verdict MyIngress.verdict_mark 0x80&&&0x80 0x0&&&0x0 "
            "0x0&&&0x80 => 0x1 0x3 0xb 1") in lines
    assert ("table_add MyIngress.verdict MyIngress.verdict_drop 0x0&&&0x0 0x80&&&0x80 "
            "0x80&&&0x80 => 0x2 2") in lines
    direct = simple_switch_commands(direct_pipeline()).splitlines()
    assert "table_set_default MyIngress.direct MyIngress.verdict_mark 0x0 0x2 0xa" in direct


def test_bfrt_loader() -> None:
    text = bfrt_loader(full_pipeline(), program_name="demo")
    compile(text, "bfrt_loader.py", "exec")
    assert "ingress = bfrt.demo.pipe.MyIngress" in text
    assert ("table.add_with_enc_ttl_set(hdr_ipv4_ttl_start=0x40, hdr_ipv4_ttl_end=0x7f, "
            "MATCH_PRIORITY=1, c_ttl=0x1)") in text
    assert ("table.add_with_lut_a_set(meta_c_ttl=0x2, hdr_hmn_features_f_x=0x4, "
            "hdr_hmn_features_f_x_mask=0x1c, MATCH_PRIORITY=1, p0_0=0x9, p0_1=0x5, "
            "p0_2=0x46)") in text
    assert ("table.add_with_verdict_drop(am_d0_1_b7=0x0, am_d0_1_b7_mask=0x0, am_d0_2_b7=0x1, "
            "am_d0_2_b7_mask=0x1, am_d1_2_b7=0x1, am_d1_2_b7_mask=0x1, MATCH_PRIORITY=2, "
            "class_id=0x2)") in text
    assert "table.set_default_with_verdict_set(class_id=0x0, verdict_port=0x1)" in text
    assert text.count("table.clear()") == 5
    with pytest.raises(ValueError, match="identifier"):
        bfrt_loader(full_pipeline(), program_name="bad name")
