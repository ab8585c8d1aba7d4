"""P4 backend: program emission, runtime entries (writers and reader) and the program checker."""

from __future__ import annotations

import copy
import itertools
import json
import random
import re

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
from homunculus.targets.p4 import (
    bfrt_loader,
    check_program,
    emit_p4,
    read_runtime_entries,
    runtime_entries,
    simple_switch_commands,
)
from homunculus.targets.p4.codegen import _argmax_context
from homunculus.targets.p4.entries import needs_priority

ARCHS = ("v1model", "tna")
VERDICT_OUTPUTS = (
    Field("verdict_port", 9),
    Field("verdict_drop", 1),
    Field("verdict_mark", 1),
    Field("verdict_dscp", 6),
)


def verdict_table(cls: Field, n_classes: int,
                  outputs: tuple[Field, ...] = VERDICT_OUTPUTS) -> Table:
    """Class c -> port c+2, drop class 2, mark every class with DSCP 10+c."""
    values = {"verdict_port": lambda c: c + 2, "verdict_drop": lambda c: int(c == 2),
              "verdict_mark": lambda c: 1, "verdict_dscp": lambda c: 10 + c}
    entries = tuple(Entry((Exact(c),), tuple(values[o.name](c) for o in outputs))
                    for c in range(n_classes))
    default = tuple(1 if o.name == "verdict_port" else 0 for o in outputs)
    return Table("verdict", TableRole.VERDICT, (cls,), (MatchKind.EXACT,), outputs, entries,
                 default)


def full_pipeline(labels: tuple[str, ...] = ("benign", "scan", "flood"),
                  names: tuple[str, ...] = ("ttl", "length", "carried"),
                  kind: VerdictKind = VerdictKind.DSCP) -> Pipeline:
    """Encoders (range, ternary) -> lookups -> score sum -> arg-max over three classes."""
    f_ttl, f_len, f_x = Field("f_ttl", 8), Field("f_len", 16), Field("f_x", 5)
    c_ttl, c_len = Field("c_ttl", 2), Field("c_len", 3)
    parts = [[Field(f"p{t}_{c}", 6) for c in range(3)] for t in range(2)]
    scores = tuple(Field(f"score_{c}", 8) for c in range(3))
    cls = Field("class_id", 2)
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
    return Pipeline(features, encoders, lookups, score_sum, Argmax(scores, cls), cls,
                    verdict_table(cls, 3), kind, labels)


def direct_pipeline(kind: VerdictKind = VerdictKind.DROP,
                    outputs: tuple[Field, ...] = VERDICT_OUTPUTS) -> Pipeline:
    """A single lookup writes the class directly: no score sum, no arg-max, TCP features only."""
    f_port, f_flags = Field("f_dport", 16), Field("f_flags", 8)
    cls = Field("cls", 1)
    lookup = Table("direct", TableRole.LOOKUP, (f_port, f_flags),
                   (MatchKind.RANGE, MatchKind.TERNARY), (cls,),
                   (Entry((Range(0, 1023), Ternary(0x02, 0x12)), (1,)),
                    Entry((Range(22, 22), Ternary(0, 0)), (0,))), (0,))
    features = (FeatureInput("dst port", f_port, "tcp.dst_port"),
                FeatureInput("flags", f_flags, "tcp.flags"))
    return Pipeline(features, (), (lookup,), None, None, cls, verdict_table(cls, 2, outputs),
                    kind, ("normal", "attack"))


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
    for table in pipeline.tables():
        assert f"table {table.name} {{" in text
        assert f"action {table.name}_set(" in text
    assert text.count("{") == text.count("}")
    check_program(text, runtime_entries(pipeline, program_name="demo"))


def test_v1model_structure() -> None:
    text = emit_p4(full_pipeline(), "v1model", default_port=7)
    assert "#include <v1model.p4>" in text
    assert ("V1Switch(MyParser(), MyVerifyChecksum(), MyIngress(), MyEgress(), "
            "MyComputeChecksum(), MyDeparser()) main;") in text
    assert "mark_to_drop(standard_metadata);" in text
    assert "standard_metadata.egress_spec = 9w7;" in text
    assert "standard_metadata.egress_spec = meta.verdict_port;" in text
    assert "hdr.ipv4.diffserv[7:2] = meta.verdict_dscp;" in text
    assert "HashAlgorithm.csum16" in text


def test_tna_structure() -> None:
    text = emit_p4(full_pipeline(), "tna")
    assert "#include <tna.p4>" in text
    assert "pkt.extract(ig_intr_md);\n        pkt.advance(PORT_METADATA_SIZE);" in text
    assert "Switch(pipe) main;" in text
    assert "Checksum() ipv4_checksum;" in text
    assert "ig_dprsr_md.drop_ctl = 3w1;" in text
    assert "ig_tm_md.ucast_egress_port = meta.verdict_port;" in text
    # Tofino metadata is not zeroed: every metadata field is initialised in the parser.
    for field in ("f_ttl", "score_2", "class_id", "verdict_dscp", "hmn_am_v0"):
        assert f"meta.{field} = " in text.split("state parse_ethernet")[0]


def test_tables_and_defaults() -> None:
    text = emit_p4(full_pipeline(), "v1model")
    assert "meta.f_ttl: range;" in text
    assert "meta.c_ttl: exact;\n            meta.f_x: ternary;" in text
    assert "action lut_a_set(bit<6> p0_0, bit<6> p0_1, bit<6> p0_2) {" in text
    assert "size = 2;" in text
    assert "default_action = enc_ttl_set(2w3);" in text
    assert "const default_action" not in text


def test_score_sum_and_argmax_code() -> None:
    text = emit_p4(full_pipeline(), "v1model")
    assert "meta.score_0 = 8w5 + (bit<8>)meta.p0_0 + (bit<8>)meta.p1_0;" in text
    assert "if (meta.score_1 > meta.score_0) {" in text
    assert "meta.class_id = 2w2;" in text


def test_feature_header_padding_and_port() -> None:
    text = emit_p4(full_pipeline(), "v1model", feature_udp_port=4000)
    assert "header hmn_features_h {\n    bit<5> f_x;\n    bit<3> hmn_pad;\n}" in text
    assert "16w4000: parse_hmn_features;" in text
    assert "meta.f_x = hdr.hmn_features.f_x;" in text
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


def test_argmax_tournament_picks_lowest_index_among_maxima() -> None:
    rng = random.Random(0)
    for n in range(1, 9):
        scores = tuple(Field(f"s{i}", 3) for i in range(n))
        ctx = _argmax_context(Argmax(scores, Field("cls", 4)))
        for _ in range(200):
            values = {f"s{i}": rng.randrange(4) for i in range(n)}
            state = dict(values)
            for node in ctx["nodes"]:
                left, right = node["left"], node["right"]
                winner = right if state[right["value"]["name"]] > state[left["value"]["name"]] \
                    else left
                if node["value"] is not None:
                    state[node["value"]["name"]] = state[winner["value"]["name"]]
                index = winner["const"] if winner["const"] is not None \
                    else state[winner["index"]["name"]]
                state[node["index"]["name"]] = index
            expected = max(range(n), key=lambda i: (values[f"s{i}"], -i))
            assert state.get("cls", 0) == expected


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
    return emit_p4(pipeline, request.param), runtime_entries(pipeline, program_name="demo")


def _table(runtime: dict, name: str) -> dict:
    return next(t for t in runtime["tables"] if t["table"] == f"MyIngress.{name}")


def test_check_rejects_narrower_program_param(program: tuple[str, dict]) -> None:
    text, runtime = program
    tampered = text.replace("action lut_a_set(bit<6> p0_0", "action lut_a_set(bit<5> p0_0")
    with pytest.raises(ValueError, match="fit"):
        check_program(tampered, runtime)


def test_check_rejects_value_too_wide(program: tuple[str, dict]) -> None:
    text, runtime = program
    _table(runtime, "enc_ttl")["entries"][0]["match"]["meta.f_ttl"]["range"]["high"] = "0x100"
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
    if tamper == "kind":
        entry["match"]["meta.f_x"] = {"exact": {"value": "0x4"}}
    elif tamper == "mask":
        entry["match"]["meta.f_x"]["ternary"]["value"] = "0x3"
    elif tamper == "key":
        entry["match"]["meta.other"] = entry["match"].pop("meta.f_x")
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


@pytest.mark.parametrize("name", list(PIPELINES))
def test_runtime_json_round_trip(name: str) -> None:
    pipeline = PIPELINES[name]()
    data = json.loads(json.dumps(runtime_entries(pipeline, program_name="demo")))
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
    assert first["match"] == {"meta.f_len": {"ternary": {"value": "0x100", "mask": "0xff00"}}}
    assert first["action"] == {"action": "MyIngress.enc_len_set", "params": {"c_len": "0x2"}}
    assert (first["priority"], second["priority"]) == (2, 1)  # P4Runtime: larger wins
    assert {e["priority"] for e in _table(data, "verdict")["entries"]} == {0}


def test_reader_parses_values_and_rejects_garbage() -> None:
    pipeline = direct_pipeline()
    data = runtime_entries(pipeline, program_name="demo")
    entry = _table(data, "direct")["entries"][0]
    entry["match"]["meta.f_dport"]["range"]["high"] = 1000  # plain JSON ints are accepted
    entry["priority"] = 5
    entries, default = read_runtime_entries(data, pipeline)["direct"]
    assert entries[0].matches[0] == Range(0, 1000)
    assert default == (0,)
    entry["match"]["meta.f_dport"] = {"exact": {"value": "0x1"}}
    with pytest.raises(ValueError, match="range"):
        read_runtime_entries(data, pipeline)
    with pytest.raises(ValueError, match="lack tables"):
        read_runtime_entries({"tables": []}, pipeline)


def test_simple_switch_commands() -> None:
    lines = simple_switch_commands(full_pipeline()).splitlines()
    table = [line for line in lines if line.split()[1] == "MyIngress.lut_a"]
    assert table == [
        "table_clear MyIngress.lut_a",
        "table_set_default MyIngress.lut_a MyIngress.lut_a_set 0x0 0x0 0x0",
        "table_add MyIngress.lut_a MyIngress.lut_a_set 0x1 0x0&&&0x0 => 0x1 0x2 0x3 0",
        "table_add MyIngress.lut_a MyIngress.lut_a_set 0x2 0x4&&&0x1c => 0x4 0x5 0x3f 1",
    ]
    assert "table_add MyIngress.enc_ttl MyIngress.enc_ttl_set 0x40->0x7f => 0x1 1" in lines
    # exact-only tables take no priority
    assert "table_add MyIngress.verdict MyIngress.verdict_set 0x1 => 0x3 0x0 0x1 0xb" in lines


def test_bfrt_loader() -> None:
    text = bfrt_loader(full_pipeline(), program_name="demo")
    compile(text, "bfrt_loader.py", "exec")
    assert "ingress = bfrt.demo.pipe.MyIngress" in text
    assert ("table.add_with_enc_ttl_set(meta_f_ttl_start=0x40, meta_f_ttl_end=0x7f, "
            "MATCH_PRIORITY=1, c_ttl=0x1)") in text
    assert ("table.add_with_lut_a_set(meta_c_ttl=0x2, meta_f_x=0x4, meta_f_x_mask=0x1c, "
            "MATCH_PRIORITY=1, p0_0=0x4, p0_1=0x5, p0_2=0x3f)") in text
    assert "table.set_default_with_verdict_set(verdict_port=0x1, verdict_drop=0x0" in text
    assert text.count("table.clear()") == 5
    with pytest.raises(ValueError, match="identifier"):
        bfrt_loader(full_pipeline(), program_name="bad name")
