"""The eBPF/XDP backend, run for real: every generated program must pass the kernel verifier and,
through BPF_PROG_TEST_RUN, compute exactly what the P4 twin computes (feature vectors and packet
tables with flow state) -- for MLP pipelines, what ``QMLP.scores`` arg-max and the verdict table
compute -- act on the verdict, and take a new snapshot atomically.

These tests need root, clang and a kernel with bpf_loop (>= 5.17). They fail, never skip, when
that is missing: the backend is only verified where it can run.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from homunculus.data.attacks import scenario_anomaly, synthetic_background
from homunculus.data.dataset import FeatureDecl, make_dataset
from homunculus.data.pcap import _checksum
from homunculus.features.library import FeatureDef, FlowConfig
from homunculus.ir.flow import lower_flow_features
from homunculus.ir.pipeline import (
    VERDICT_FIELDS,
    Entry,
    Exact,
    FeatureInput,
    Field,
    MatchKind,
    Pipeline,
    Range,
    Table,
    TableRole,
    Ternary,
    VerdictKind,
    VerdictPlan,
)
from homunculus.models.base import all_families
from homunculus.passes.lower import lower
from homunculus.targets.p4.twin import simulate, simulate_packets
from homunculus.targets.xdp import cost
from homunculus.targets.xdp.codegen import crc_table_rows, emit_xdp
from homunculus.targets.xdp.layout import table_capacity
from homunculus.targets.xdp.loader import BpfError, load_object, prog_test_run
from homunculus.targets.xdp.runner import (
    load_built,
    packet_frame,
    run_frames,
    run_vectors,
)
from homunculus.targets.xdp.snapshot import active_slot, push, snapshot_of
from homunculus.targets.xdp.target import XdpTarget

from conftest import every_flow_kind

TABLE_FAMILIES = sorted(set(all_families()) - {"mlp"})  # the MLP family lowers to a QMLP
XDP_DROP, XDP_PASS = 1, 2
TARGET = XdpTarget()


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    assert os.geteuid() == 0, "the XDP backend tests load BPF programs: run them as root"


# --- pipelines ---------------------------------------------------------------------------------


def family_pipeline(family: str, widths: tuple[int, ...] = (8, 16, 4), seed: int = 0,
                    verdict: VerdictPlan | None = None) -> tuple[Pipeline, np.ndarray]:
    """A trained, lowered and prepared pipeline (as test_equivalence_property builds them) and
    probe rows covering every width's extremes."""
    rng = np.random.default_rng(seed)
    n, n_classes = 60, 3
    x = np.stack([rng.integers(0, 1 << w, n) for w in widths], axis=1)
    y = (x[:, 0] * 3 // (1 << widths[0]) + rng.integers(0, 2, n)) % n_classes
    y[:n_classes] = np.arange(n_classes)
    feats = [FeatureDecl(f"x{i}", w) for i, w in enumerate(widths)]
    ds = make_dataset(feats, x, [f"c{v}" for v in y], x[:2], [f"c{v}" for v in y[:2]], "xdp")
    fam = all_families()[family]
    trained = fam.train(fam.default_params(), ds.x_train, ds.y_train, ds.n_classes, ds.widths,
                        seed)
    verdict = verdict or VerdictPlan(kind=VerdictKind.DROP, drop=frozenset({0}))
    pipeline = TARGET.prepare(lower(trained.quantised, ds.features, ds.class_labels, verdict,
                                    trained.winner_to_class))
    probe = np.stack([rng.integers(0, 1 << w, 300) for w in widths], axis=1)
    probe[0], probe[1] = 0, [(1 << w) - 1 for w in widths]
    return pipeline, np.vstack([x, probe])


def flow_defs(header: str, header_width: int) -> list[FeatureDef]:
    return every_flow_kind(header, header_width)


def flow_pipeline(slots: int = 8, time_shift: int = 2, header: str = "ipv4.ttl",
                  header_width: int = 8, verdict_kind: VerdictKind = VerdictKind.DROP
                  ) -> Pipeline:
    """Flow features of every kind, a lookup mixing range/exact/ternary keys over a header
    feature and flow features, and a verdict that drops class 1 and marks class 2."""
    defs = flow_defs(header, header_width)
    program = lower_flow_features(defs, FlowConfig(slots=slots, time_shift=time_shift))
    assert program is not None
    features = tuple(FeatureInput(f.name, Field(f"f_{i}", f.width), f.field, flow=f.is_flow)
                     for i, f in enumerate(defs))
    cls = Field("cls", 2)
    keys = (features[0].field, features[1].field, features[8].field)
    lut = Table("lut", TableRole.LOOKUP, keys, (MatchKind.RANGE, MatchKind.EXACT,
                                                MatchKind.TERNARY), (cls,),
                (Entry((Range(0, 60), Exact(3), Ternary(0, 0)), (1,)),
                 Entry((Range(0, 255), Exact(1), Ternary(0, 0)), (2,)),
                 Entry((Range(100, 255), Exact(7), Ternary(0, 0xF0000)), (3,))), (0,))
    verdict = Table("verdict", TableRole.VERDICT, (cls,), (MatchKind.EXACT,), VERDICT_FIELDS,
                    tuple(Entry((Exact(c),), (c + 2, int(c == 1), int(c == 2),
                                              46 if c == 2 else 0)) for c in range(4)),
                    (1, 0, 0, 0))
    return Pipeline(features, (), (lut,), None, None, cls, verdict, verdict_kind,
                    ("benign", "attack", "marked", "other"), flow=program)


@pytest.fixture(scope="module")
def traffic() -> pd.DataFrame:
    """Background plus injected attacks: two captures (file_id 0 and -1) interleaved."""
    return scenario_anomaly(synthetic_background(0, 40, 20_000_000), 1)


def emit(pipeline: Pipeline, tmp_path: Path, name: str = "prog") -> Path:
    TARGET.emit(pipeline, tmp_path, name)
    return tmp_path


def assert_same(result, expected) -> None:  # noqa: ANN001  (TwinResult)
    np.testing.assert_array_equal(result.class_index, expected.class_index)
    for name, values in result.fields.items():
        np.testing.assert_array_equal(values, expected.fields[name], err_msg=name)


# --- build and verifier -------------------------------------------------------------------------


def test_crc_table_is_zlibs() -> None:
    table = [int(v.rstrip("u,"), 16) for row in crc_table_rows() for v in row.split()]
    crc = 0xFFFFFFFF
    for b in b"homunculus":
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    assert crc ^ 0xFFFFFFFF == zlib.crc32(b"homunculus")


def test_capacity_rule() -> None:
    assert [table_capacity(n) for n in (0, 1, 16, 17, 100, 1024)] == [16, 16, 16, 32, 128, 1024]


@pytest.mark.parametrize("family", TABLE_FAMILIES)
def test_every_family_passes_the_verifier(family: str, tmp_path: Path) -> None:
    pipeline, _ = family_pipeline(family)
    files = TARGET.emit(pipeline, tmp_path, f"{family}_prog")
    with load_object(files["bpf_o"]) as obj:
        stats = obj.verifier_stats
        assert set(stats) == {"hmn_xdp", "hmn_xdp_vec"}
        assert all(0 < s.insns_processed < 1_000_000 for s in stats.values())


@pytest.mark.parametrize("slots", [2, 4096, 65536])
def test_flow_programs_pass_the_verifier(slots: int, tmp_path: Path) -> None:
    files = TARGET.emit(flow_pipeline(slots=slots), tmp_path, "flow")
    with load_object(files["bpf_o"]) as obj:
        # register ops are global functions: verification stays linear in the registers
        assert obj.verifier_stats["hmn_xdp"].insns_processed < 50_000


def test_clang_errors_are_reported(tmp_path: Path) -> None:
    from homunculus.targets.xdp.build import BuildError, build_source

    with pytest.raises(BuildError, match="clang failed"):
        build_source("int broken(", tmp_path, "bad")


def test_verifier_rejection_is_a_clear_error(tmp_path: Path) -> None:
    from homunculus.targets.xdp.build import build_source

    src = ('#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\nchar LICENSE[] SEC("license")'
           ' = "GPL";\nSEC("xdp") int bad(struct xdp_md *ctx) { return *(int *)(long)ctx->data; }'
           '\n')
    _, obj = build_source(src, tmp_path, "bad")
    with pytest.raises(BpfError, match=r"bpf_object__load\(bad.bpf.o\).*errno"):
        load_object(obj)


# --- feature vectors ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", TABLE_FAMILIES)
def test_feature_vectors_agree_with_the_twin(family: str, tmp_path: Path) -> None:
    pipeline, x = family_pipeline(family, seed=3)
    emit(pipeline, tmp_path)
    with load_built(tmp_path)[0] as obj:
        result, codes = run_vectors(obj, pipeline, x)
    expected = simulate(pipeline, x)
    assert_same(result, expected)
    drop = expected.fields["verdict_drop"] == 1
    assert drop.any() and (~drop).any()
    np.testing.assert_array_equal(codes, np.where(drop, XDP_DROP, XDP_PASS))


def test_run_twin_uses_the_written_snapshot(tmp_path: Path) -> None:
    pipeline, x = family_pipeline("dt", widths=(3, 12), seed=5)
    emit(pipeline, tmp_path)
    assert_same(TARGET.run_twin(pipeline, tmp_path, x), simulate(pipeline, x))
    snap = json.loads((tmp_path / "xdp" / "snapshot.json").read_text())
    verdict = snap["tables"][-1]
    verdict["default"], verdict["entries"] = [0, 1, 1, 0, 0], []  # everything: class 0, dropped
    (tmp_path / "xdp" / "snapshot.json").write_text(json.dumps(snap))
    twin = TARGET.run_twin(pipeline, tmp_path, x)
    assert (twin.class_index == 0).all() and (twin.fields["verdict_drop"] == 1).all()


def test_carried_features_use_the_feature_header(tmp_path: Path) -> None:
    """Features bound to no header ride after UDP on port 0x4D4C, bit-packed as in P4."""
    pipeline, x = family_pipeline("dt", widths=(3, 12, 5), seed=2)
    emit(pipeline, tmp_path)
    expected = simulate(pipeline, x)
    with load_built(tmp_path)[0] as obj:
        fd = obj.prog_fd("hmn_xdp")
        for row, cls, drop in zip(x, expected.class_index, expected.fields["verdict_drop"],
                                  strict=True):
            bits = (int(row[0]) << 17) | (int(row[1]) << 5) | int(row[2])  # 20 bits, pad 4
            payload = (bits << 4).to_bytes(3, "big")
            run = prog_test_run(fd, udp_frame(0x4D4C, payload))
            assert run.retval == (XDP_DROP if drop else XDP_PASS), cls
        counts = [obj.map("hmn_counts").lookup_u64(c) for c in range(4)]
        assert counts[:3] == np.bincount(expected.class_index, minlength=3).tolist()
        # another port, or a payload too short for the header: not classified
        prog_test_run(fd, udp_frame(53, payload))
        prog_test_run(fd, udp_frame(0x4D4C, payload[:2]))
        assert obj.map("hmn_counts").lookup_u64(3) == counts[3] + 2


def udp_frame(dport: int, payload: bytes, tos: int = 0) -> bytes:
    row = {"ip_src": 0x0A000001, "ip_dst": 0x0A000002, "eth_type": 0x0800, "has_ipv4": True,
           "ip_ihl": 5, "ip_proto": 17, "ip_total_len": 28 + len(payload), "ip_diffserv": tos,
           "ip_id": 1, "ip_frag_offset": 0, "ip_ttl": 64, "has_tcp": False, "has_udp": True,
           "src_port": 1234, "dst_port": dport, "udp_len": 8 + len(payload), "wire_len": 0}
    frame = packet_frame(row)
    return frame[:42] + payload + frame[42 + len(payload):]


# --- packets and flow state ---------------------------------------------------------------------


@pytest.mark.parametrize(("slots", "header", "width"), [
    (2, "tcp.flags", 8),  # heavy collisions; TCP-only classification
    (8, "ipv4.ttl", 8),
    (1024, "l4.dst_port", 16),
    (64, "udp.length", 16),
])
def test_packets_agree_with_simulate_packets(traffic: pd.DataFrame, slots: int, header: str,
                                             width: int, tmp_path: Path) -> None:
    pipeline = flow_pipeline(slots=slots, header=header, header_width=width)
    emit(pipeline, tmp_path)
    result, classified = TARGET.run_packets(pipeline, tmp_path, traffic)
    expected, mask = simulate_packets(pipeline, traffic)
    np.testing.assert_array_equal(classified, mask)
    assert mask.sum() > 100
    assert_same(result, expected)


def test_verdicts_act_on_the_packet(traffic: pd.DataFrame, tmp_path: Path) -> None:
    """Drop -> XDP_DROP; mark -> DSCP rewritten (ECN kept) with a valid IPv4 checksum."""
    pipeline = flow_pipeline(slots=256)
    emit(pipeline, tmp_path)
    expected, mask = simulate_packets(pipeline, traffic)
    with load_built(tmp_path)[0] as obj:
        _, classified, runs = run_frames(obj, pipeline, traffic)
        stats = [obj.map("hmn_stats").lookup_u64(i) for i in range(5)]
    np.testing.assert_array_equal(classified, mask)
    drop = np.zeros(len(traffic), dtype=bool)
    mark = np.zeros(len(traffic), dtype=bool)
    drop[mask] = expected.fields["verdict_drop"] == 1
    mark[mask] = expected.fields["verdict_mark"] == 1
    assert drop.any() and mark.any()
    codes = np.array([r.retval for r in runs])
    np.testing.assert_array_equal(codes, np.where(drop, XDP_DROP, XDP_PASS))
    assert stats == [len(traffic), int(traffic["has_ipv4"].sum()), int(mask.sum()),
                     int(drop.sum()), int(mark.sum())]
    tos_in = traffic["ip_diffserv"].to_numpy()
    for i in np.flatnonzero(mask):
        ip = runs[i].data[14:34]
        want = (46 << 2) | (tos_in[i] & 3) if mark[i] else tos_in[i]
        assert ip[1] == want
        assert _checksum(ip) == 0  # the incrementally updated checksum is still valid


def test_vlan_tagged_frames_classify_like_untagged(traffic: pd.DataFrame, tmp_path: Path) -> None:
    pipeline = flow_pipeline(slots=4096, header="ipv4.ttl")
    emit(pipeline, tmp_path)
    rows = traffic.head(300)
    with load_built(tmp_path)[0] as obj:
        fd = obj.prog_fd("hmn_xdp")
        plain = [prog_test_run(fd, packet_frame(r)).retval for r in rows.to_dict("records")]
    with load_built(tmp_path)[0] as obj:
        fd = obj.prog_fd("hmn_xdp")
        tagged = []
        for k, r in enumerate(rows.to_dict("records")):
            frame = packet_frame(r)
            tags = b"\x81\x00\x00\x05" if k % 2 else b"\x88\xa8\x00\x07\x81\x00\x00\x05"
            tagged.append(prog_test_run(fd, frame[:12] + tags + frame[12:]).retval)
        # three tags: not parsed, never classified
        frame = packet_frame(rows.iloc[0].to_dict())
        prog_test_run(fd, frame[:12] + b"\x81\x00\x00\x01" * 3 + frame[12:])
        unclassified = obj.map("hmn_counts").lookup_u64(4)
    assert plain == tagged
    assert unclassified == int((~simulate_packets(pipeline, rows)[1]).sum()) + 1


# --- snapshots and push -------------------------------------------------------------------------


def test_push_flips_the_active_slot_and_changes_verdicts(tmp_path: Path) -> None:
    pipeline, x = family_pipeline("dt", widths=(8, 8), seed=7)
    emit(pipeline, tmp_path)
    plan = VerdictPlan(kind=VerdictKind.DROP, drop=frozenset({1, 2}))
    newer, _ = family_pipeline("dt", widths=(8, 8), seed=7, verdict=plan)
    with load_built(tmp_path)[0] as obj:
        assert active_slot(obj) == 0
        before, _ = run_vectors(obj, pipeline, x)
        assert push(obj, newer, grace_s=0.001) == 1
        assert active_slot(obj) == 1
        after, codes = run_vectors(obj, pipeline, x)
        assert push(obj, snapshot_of(pipeline), grace_s=0.0) == 0
        again, _ = run_vectors(obj, pipeline, x)
    assert_same(before, simulate(pipeline, x))
    assert_same(after, simulate(newer, x))
    assert_same(again, before)
    np.testing.assert_array_equal(codes, np.where(after.class_index != 0, XDP_DROP, XDP_PASS))


def test_push_takes_a_retrained_model_of_the_same_shape(tmp_path: Path) -> None:
    """Entries change (up to each table's capacity): the standby slot gets all of them."""
    pipeline, x = family_pipeline("gnb", widths=(8, 8), seed=1)
    emit(pipeline, tmp_path)

    def shuffled(table: Table) -> Table:
        return replace(table, entries=table.entries[::-1][:max(1, len(table.entries) - 1)])

    newer = replace(pipeline, lookups=tuple(shuffled(t) for t in pipeline.lookups))
    with load_built(tmp_path)[0] as obj:
        push(obj, newer, grace_s=0.0)
        result, _ = run_vectors(obj, pipeline, x)
    assert_same(result, simulate(newer, x))


def test_push_rejects_a_different_shape(tmp_path: Path) -> None:
    from homunculus.targets.xdp.snapshot import SnapshotError

    pipeline, _ = family_pipeline("dt", widths=(8, 8), seed=7)
    other, _ = family_pipeline("gnb", widths=(8, 8), seed=7)
    emit(pipeline, tmp_path)
    with load_built(tmp_path)[0] as obj:
        with pytest.raises(SnapshotError):
            push(obj, snapshot_of(other, None) | {"row_words": 99}, grace_s=0.0)
        assert active_slot(obj) == 0


def test_pin_and_reopen(tmp_path: Path) -> None:
    from homunculus.targets.xdp.loader import Pinned, unpin

    pipeline, x = family_pipeline("dt", widths=(8, 8), seed=7)
    emit(pipeline, tmp_path)
    obj, _ = load_built(tmp_path)
    with obj:
        obj.pin("pytest_xdp_backend")
    try:
        pinned = Pinned.open("pytest_xdp_backend")
        assert {"hmn_xdp", "hmn_xdp_vec"} <= set(pinned.progs)
        fd = pinned.prog_fd("hmn_xdp_vec")
        from homunculus.targets.xdp.runner import vector_frame

        run = prog_test_run(fd, vector_frame(x[0], 1 + len(pipeline.verdict.outputs)))
        assert run.retval in (XDP_DROP, XDP_PASS)
        assert push(pinned, pipeline, grace_s=0.0) == 1
        pinned.close()
    finally:
        unpin("pytest_xdp_backend")


# --- safety and cost ----------------------------------------------------------------------------


def test_hostile_identifiers_cannot_alter_the_program(tmp_path: Path) -> None:
    """Names (program, labels, features, fields, tables) only reach // comments, sanitised."""
    pipeline, x = family_pipeline("dt", widths=(8, 8), seed=7)
    evil = '*/ #include "/etc/passwd"\n int x; /* \\'
    renamed = {f.field.name: Field(evil + f.field.name, f.field.width)
               for f in pipeline.features}

    def rename_keys(table: Table) -> Table:
        return replace(table, name=evil + table.name,
                       keys=tuple(renamed.get(k.name, k) for k in table.keys))

    hostile = replace(pipeline, class_labels=(evil,) * 3,
                      features=tuple(replace(f, name=evil, field=renamed[f.field.name])
                                     for f in pipeline.features),
                      encoders=tuple(rename_keys(t) for t in pipeline.encoders),
                      lookups=tuple(rename_keys(t) for t in pipeline.lookups),
                      verdict=rename_keys(pipeline.verdict))
    text = emit_xdp(hostile, name=evil)
    assert all(line.lstrip().startswith("//") for line in text.splitlines() if "passwd" in line)
    assert all(line.lstrip().startswith("//") for line in text.splitlines() if "int x" in line)
    code = [ln for ln in text.splitlines() if not ln.lstrip().startswith("//")]
    plain = [ln for ln in emit_xdp(pipeline, name="p").splitlines()
             if not ln.lstrip().startswith("//")]
    assert code == plain  # the program itself depends on the pipeline's shape only
    files = TARGET.emit(hostile, tmp_path, evil)
    assert files["bpf_o"].parent == tmp_path / "xdp"
    with load_built(tmp_path)[0] as obj:
        assert_same(run_vectors(obj, hostile, x)[0], simulate(hostile, x))


def test_estimate(tmp_path: Path) -> None:
    small, _ = family_pipeline("dt", widths=(8, 8), seed=7)
    big, _ = family_pipeline("rf", seed=3)
    a, b = TARGET.estimate(small), TARGET.estimate(big)
    assert a.stages == b.stages == 0 and a.tcam_kbit == 0
    assert a.latency_ns < b.latency_ns and a.sram_kbit < b.sram_kbit
    assert b.entries == big.n_entries and b.tables == len(list(big.tables()))
    assert cost.cost(flow_pipeline()).instructions > cost.cost(small).instructions


def test_unit_mismatch_and_unknown_header_are_errors() -> None:
    pipeline = flow_pipeline()
    assert pipeline.flow is not None
    bad = replace(pipeline, flow=replace(pipeline.flow, config=FlowConfig(slots=8, unit_ns=1024)))
    with pytest.raises(ValueError, match="time unit"):
        emit_xdp(bad)
    feats = (replace(pipeline.features[0], header_field="ipv6.hop_limit"),
             *pipeline.features[1:])
    with pytest.raises(ValueError, match="unsupported header field"):
        emit_xdp(replace(pipeline, features=feats))


# --- quantised MLPs -----------------------------------------------------------------------------


MLP_PARAMS = {
    "default": {},
    "minimal": "minimal",
    "tanh-lut": {"mlp_activation": "tanh"},
    "largest": {"mlp_layers": 3, "mlp_width_0": 64, "mlp_width_1": 64, "mlp_width_2": 64,
                "mlp_activation": "sigmoid"},
}


def mlp_pipeline(params: dict | str, seed: int = 0, widths: tuple[int, ...] = (8, 16, 4, 12),
                 drop: frozenset[int] = frozenset({0})) -> tuple[Pipeline, np.ndarray]:
    """An MLP trained (homunculus.models.mlp) on small synthetic data, lowered and prepared for
    XDP, and probe rows covering every width's extremes."""
    from homunculus.passes.lower_mlp import lower_mlp

    rng = np.random.default_rng(seed)
    n = 200
    x = np.stack([rng.integers(0, 1 << w, n) for w in widths], axis=1)
    y = (x[:, 0] * 3 // (1 << widths[0]) + (x[:, 2] > 8)) % 3
    feats = [FeatureDecl(f"x{i}", w) for i, w in enumerate(widths)]
    ds = make_dataset(feats, x, [f"c{v}" for v in y], x[:2], [f"c{v}" for v in y[:2]], "xdp")
    fam = all_families()["mlp"]
    chosen = fam.minimal_params() if params == "minimal" else fam.default_params() | dict(params)
    trained = fam.train(chosen, ds.x_train, ds.y_train, ds.n_classes, ds.widths, seed)
    pipeline = lower_mlp(trained.quantised, ds.features, ds.class_labels,
                         VerdictPlan(kind=VerdictKind.DROP, drop=drop), trained.winner_to_class)
    probe = np.stack([rng.integers(0, 1 << w, 300) for w in widths], axis=1)
    probe[0], probe[1] = 0, [(1 << w) - 1 for w in widths]
    return TARGET.prepare(pipeline), np.vstack([x, probe])


@pytest.mark.parametrize("params", list(MLP_PARAMS))
def test_mlp_vectors_agree_with_the_qmlp(params: str, tmp_path: Path) -> None:
    """QMLP.scores arg-max + verdict, exactly; the verifier accepts every architecture up to
    3 hidden layers of 64."""
    from homunculus.targets.xdp.runner import reference

    pipeline, x = mlp_pipeline(MLP_PARAMS[params], seed=len(params))
    emit(pipeline, tmp_path)
    with load_built(tmp_path)[0] as obj:
        assert all(0 < s.insns_processed < 100_000 for s in obj.verifier_stats.values())
        result, codes = run_vectors(obj, pipeline, x)
    expected = reference(pipeline, x)
    assert_same(result, expected)
    assert len(np.unique(expected.class_index)) > 1
    drop = expected.fields["verdict_drop"] == 1
    np.testing.assert_array_equal(codes, np.where(drop, XDP_DROP, XDP_PASS))


def test_mlp_integer_semantics_at_the_extremes(tmp_path: Path) -> None:
    """Hand-made networks at the edges of ir/dense.py: int8 extremes, large multipliers and
    shifts (int64 products), negative accumulators (floor shift), every activation."""
    from homunculus.data.dataset import FeatureDecl as Decl
    from homunculus.ir.dense import QMLP, DenseLayer
    from homunculus.passes.lower_mlp import lower_mlp
    from homunculus.targets.xdp.runner import reference

    rng = np.random.default_rng(11)
    lut = tuple(int(v) for v in rng.integers(-128, 128, 256))
    hidden = [DenseLayer(tuple(tuple(int(v) for v in rng.integers(-128, 128, n_in))
                               for _ in range(n_out)),
                         tuple(int(v) for v in rng.integers(-2**12, 2**12, n_out)), m, s, act,
                         lut if act == "lut" else None)
              for (n_in, n_out, m, s, act) in [(3, 7, 2**31 - 1, 40, "none"),
                                               (7, 5, 12345, 23, "lut"),
                                               (5, 6, 3, 12, "relu")]]
    out = DenseLayer(tuple(tuple(int(v) for v in rng.integers(-128, 128, 6)) for _ in range(4)),
                     (-300, 0, 250, 40), activation="none")
    model = QMLP((0, 3, 9), (*hidden, out))
    feats = (Decl("a", 8), Decl("b", 12), Decl("c", 16))
    labels = ("w", "x", "y", "z")
    pipeline = lower_mlp(model, feats, labels, VerdictPlan(kind=VerdictKind.DROP,
                                                           drop=frozenset({1})))
    x = np.vstack([rng.integers(0, 1 << 16, (2000, 3)) & [0xFF, 0xFFF, 0xFFFF],
                   [[0, 0, 0], [255, 4095, 65535]]])
    emit(pipeline, tmp_path)
    with load_built(tmp_path)[0] as obj:
        result, _ = run_vectors(obj, pipeline, x)
    expected = reference(pipeline, x)
    assert_same(result, expected)
    assert len(np.unique(expected.class_index)) > 2


def test_push_takes_a_retrained_mlp_of_the_same_shape(tmp_path: Path) -> None:
    from homunculus.targets.xdp.runner import reference

    pipeline, x = mlp_pipeline({}, seed=1)
    newer, _ = mlp_pipeline({}, seed=2, drop=frozenset({1, 2}))
    emit(pipeline, tmp_path)
    with load_built(tmp_path)[0] as obj:
        before, _ = run_vectors(obj, pipeline, x)
        assert push(obj, newer, grace_s=0.0) == 1
        after, codes = run_vectors(obj, pipeline, x)
    assert_same(before, reference(pipeline, x))
    expected = reference(newer, x)
    assert_same(after, expected)
    assert (after.fields["verdict_drop"] != before.fields["verdict_drop"]).any()
    np.testing.assert_array_equal(codes, np.where(expected.fields["verdict_drop"] == 1,
                                                  XDP_DROP, XDP_PASS))


def test_mlp_shape_is_checked(tmp_path: Path) -> None:
    """A push of another network shape is refused; networks beyond the XDP limits are errors."""
    from homunculus.errors import NotSupportedError
    from homunculus.targets.xdp.snapshot import SnapshotError

    pipeline, _ = mlp_pipeline("minimal", seed=1)
    wider, _ = mlp_pipeline({"mlp_layers": 1, "mlp_width_0": 8}, seed=1)
    emit(pipeline, tmp_path)
    with load_built(tmp_path)[0] as obj, pytest.raises(SnapshotError, match="shape"):
        push(obj, snapshot_of(wider, snapshot_layout(pipeline)), grace_s=0.0)
    assert pipeline.mlp is not None
    deep = replace(pipeline, mlp=replace(pipeline.mlp, layers=(pipeline.mlp.layers[0],) * 4
                                         + pipeline.mlp.layers[1:]))
    with pytest.raises(NotSupportedError, match="at most 3 hidden"):
        emit_xdp(deep)


def snapshot_layout(pipeline: Pipeline):  # noqa: ANN201  (Layout)
    from homunculus.targets.xdp.layout import layout_of

    return layout_of(pipeline)


def test_mlp_packets_agree_with_the_reference(traffic: pd.DataFrame, tmp_path: Path) -> None:
    """An MLP over flow features of every kind (test clock = capture time), packet by packet."""
    from homunculus.data.dataset import FeatureDecl as Decl
    from homunculus.features.reference import reference_features
    from homunculus.passes.lower_mlp import lower_mlp
    from homunculus.targets.xdp.runner import reference_packets

    defs, config = flow_defs("ipv4.ttl", 8), FlowConfig(slots=256, time_shift=2)
    x, mask = reference_features(traffic, defs, config)
    classes = tuple(sorted(traffic["label"].unique()))
    y = np.array(traffic["label"].map({c: i for i, c in enumerate(classes)}), dtype=np.int64)
    decls = tuple(Decl(d.name, d.width, d.field, None if d.kind == "header" else d.kind)
                  for d in defs)
    fam = all_families()["mlp"]
    trained = fam.train(fam.default_params(), x[mask], y[mask], len(classes),
                        tuple(d.width for d in decls), 0)
    pipeline = lower_mlp(trained.quantised, decls, classes,
                         VerdictPlan(kind=VerdictKind.DROP, drop=frozenset({0})))
    pipeline = TARGET.prepare(replace(pipeline, flow=lower_flow_features(defs, config)))
    emit(pipeline, tmp_path)
    result, classified = TARGET.run_packets(pipeline, tmp_path, traffic)
    expected, want = reference_packets(pipeline, traffic)
    np.testing.assert_array_equal(classified, want)
    assert_same(result, expected)
    assert len(np.unique(expected.class_index)) > 1


def test_mlp_compiles_for_xdp(tmp_path: Path, example_csv: Path) -> None:
    """Through the compiler: the MLP family on the XDP target, verified in the kernel."""
    from homunculus.compile import CompileOptions, compile_plan
    from homunculus.frontend.yaml_spec import plan_from_yaml

    from conftest import spec_text, write_spec

    text = spec_text(example_csv, algorithms="[mlp]", target="xdp", trials=2).replace(
        "resources: {stages: 12}", "resources: {}")
    result = compile_plan(plan_from_yaml(write_spec(tmp_path / "s.yaml", text)),
                          CompileOptions(tmp_path / "out", progress=False))
    assert result.family == "mlp" and result.metrics["agreement"] == 1.0
    snap = json.loads((tmp_path / "out" / "xdp" / "snapshot.json").read_text())
    assert snap["mlp"] and snap["layout"]["mlp"] and len(snap["shape"]) == 32
