"""The XDP program on a live interface: two network namespaces joined by a veth pair, the program
attached to the receiving end, packets sent from the other namespace through an AF_PACKET socket.

Packets come from a packet table (synthetic background plus the anomaly scenario, a few hundred
packets in time order) with the MAC addresses rewritten for the veth pair and the IPv4 addresses
mapped one-to-one into 10.213.0.3-254 (the only addresses these tests put on a wire); every other
IP and L4 field is kept. Flow features are time-independent only (packet and byte counts, minimum
and maximum length, length histograms): live packets carry kernel timestamps, so the twin can
reproduce the flow state from packet order alone. Packets are sent from one thread pinned to one
CPU, so the receiving veth processes them in order.

These tests need root and a kernel with XDP on veth; they fail, never skip, without them. Every
namespace (``hmn-test-*``) is deleted afterwards, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from homunculus import deploy as deploy_mod
from homunculus.cli import app
from homunculus.data.attacks import scenario_anomaly, synthetic_background
from homunculus.data.dataset import FeatureDecl
from homunculus.data.pcap import _checksum
from homunculus.features.library import FeatureDef, FlowConfig, histogram
from homunculus.features.reference import reference_features
from homunculus.ir.cpu import CpuProgram
from homunculus.ir.flow import lower_flow_features
from homunculus.ir.pipeline import VerdictKind, VerdictPlan
from homunculus.ir.quantised import QTree, QTreeEnsemble
from homunculus.models.base import all_families
from homunculus.passes.lower_cpu import lower_cpu
from homunculus.targets.xdp.loader import (
    PIN_ROOT,
    BpfObject,
    Pinned,
    attach_xdp,
    attached_prog_id,
    detach_xdp,
    in_netns,
    load_object,
)
from homunculus.targets.xdp.runner import packet_frame, reference, reference_packets
from homunculus.targets.xdp.snapshot import install, push, snapshot_of
from homunculus.targets.xdp.target import XdpTarget

TARGET = XdpTarget()
XDP_DROP, XDP_PASS = 1, 2
SENDER_CPU = min(os.sched_getaffinity(0))
SUBNET = "10.213.0"
STATS = ("packets", "eligible", "classified", "dropped", "marked")


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    assert os.geteuid() == 0, "the live XDP tests create namespaces and attach XDP: run as root"


# --- namespaces ----------------------------------------------------------------------------------


def ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass(frozen=True)
class Link:
    """A veth pair: ``sender`` in namespace ``tx``, ``receiver`` in namespace ``rx``."""

    tx: str
    rx: str
    sender: str = "hmn-tx"
    receiver: str = "hmn-rx"

    def mac(self, netns: str, dev: str) -> bytes:
        info = json.loads(ip("-j", "-n", netns, "link", "show", dev))
        return bytes.fromhex(info[0]["address"].replace(":", ""))

    def xdp_attached(self) -> bool:
        return "xdp" in ip("-n", self.rx, "link", "show", self.receiver)


def _quiet(netns: str) -> None:
    """No IPv6 (no router solicitations, DAD or MLD): the receiver sees only our packets."""
    for key in ("all", "default"):
        ip("netns", "exec", netns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")


@contextlib.contextmanager
def veth_link(tag: str) -> Iterator[Link]:
    link = Link(f"hmn-test-{tag}-tx-{os.getpid()}", f"hmn-test-{tag}-rx-{os.getpid()}")
    try:
        for ns in (link.tx, link.rx):
            ip("netns", "add", ns)
            _quiet(ns)
        ip("-n", link.tx, "link", "add", link.sender, "type", "veth", "peer", "name",
           link.receiver, "netns", link.rx)
        for ns, dev, host in ((link.tx, link.sender, 1), (link.rx, link.receiver, 2)):
            ip("-n", ns, "addr", "add", f"{SUBNET}.{host}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
        yield link
    finally:
        for ns in (link.tx, link.rx):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def send(link: Link, frames: list[bytes], stop: threading.Event | None = None,
         pace: int = 0) -> int:
    """Send ``frames`` in order from the sender namespace (one thread, one CPU); with ``pace``,
    pause 0.5 ms after every ``pace`` frames. Returns how many were sent."""

    def run() -> int:
        os.sched_setaffinity(0, {SENDER_CPU})
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind((link.sender, 0))
            for n, frame in enumerate(frames):
                if stop is not None and stop.is_set():
                    return n
                sock.send(frame)
                if pace and n % pace == pace - 1:
                    time.sleep(0.0005)
        return len(frames)

    return in_netns(link.tx, run)


def wait_for(read: Callable[[], int], target: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    value = read()
    while value < target and time.monotonic() < deadline:
        time.sleep(0.01)
        value = read()
    return value


# --- packets -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def packets() -> pd.DataFrame:
    """A few hundred packets in time order (every third of background plus attacks), one capture,
    IPv4 addresses mapped one-to-one into 10.213.0.3-254."""
    table = scenario_anomaly(synthetic_background(0, 20, 10_000_000), 1)
    table = table.sort_values("ts_us", kind="stable").iloc[::3].reset_index(drop=True)
    addresses = np.unique(np.concatenate([table["ip_src"], table["ip_dst"]]))
    assert len(addresses) <= 252
    base = int.from_bytes(bytes(int(b) for b in SUBNET.split(".")) + b"\0", "big")
    mapping = {int(a): base + 3 + k for k, a in enumerate(addresses)}
    return table.assign(file_id=np.int32(0), ip_src=table["ip_src"].map(mapping),
                        ip_dst=table["ip_dst"].map(mapping))


def frames_of(table: pd.DataFrame, link: Link) -> list[bytes]:
    """Ethernet frames of the rows, addressed sender -> receiver."""
    head = link.mac(link.rx, link.receiver) + link.mac(link.tx, link.sender)
    return [head + packet_frame(row)[12:] for row in table.to_dict("records")]


def numbered(frames: list[bytes], order: np.ndarray) -> list[bytes]:
    """``frames[order[k]]`` with IPv4 identification k (header checksum updated)."""
    out = []
    for k, i in enumerate(order):
        frame = bytearray(frames[i])
        frame[18:20] = struct.pack("!H", k)
        frame[24:26] = b"\0\0"
        frame[24:26] = struct.pack("!H", _checksum(bytes(frame[14:34])))
        out.append(bytes(frame))
    return out


# --- pipelines -----------------------------------------------------------------------------------


def flow_defs() -> list[FeatureDef]:
    """Time-independent flow features and one header field."""
    return [
        FeatureDef("ttl", "header", 8, field="ipv4.ttl"),
        FeatureDef("pkts", "pkt_count", 8),
        FeatureDef("bytes", "byte_count", 16),
        FeatureDef("min", "min_len", 16),
        FeatureDef("max", "max_len", 16),
        *histogram("lh", "len_bin", 3, 8, 6),
    ]


FLOW = FlowConfig(slots=1024)


def decls_of(defs: list[FeatureDef]) -> tuple[FeatureDecl, ...]:
    return tuple(FeatureDecl(d.name, d.width, d.field, None if d.kind == "header" else d.kind)
                 for d in defs)


def table_pipeline() -> CpuProgram:
    """A tree over the TTL and flow features; class 1 is dropped, class 2 marked."""
    defs = flow_defs()
    onehot = [tuple(int(c == k) for k in range(4)) for c in range(4)]
    zero = (0,) * 4
    tree = QTree((0, 1, -2, -2, 4, -2, -2), (60, 3, 0, 0, 200, 0, 0), (1, 2, -1, -1, 5, -1, -1),
                 (4, 3, -1, -1, 6, -1, -1),
                 (zero, zero, onehot[1], onehot[3], zero, onehot[2], onehot[0]))
    program = lower_cpu(QTreeEnsemble((tree,), zero), decls_of(defs),
                        ("benign", "short", "marked", "other"), VerdictPlan(), None,
                        lower_flow_features(defs, FLOW))
    rows = tuple((c, c + 2, int(c == 1), int(c == 2), 46 * (c == 2)) for c in range(4))
    return replace(program, verdict=rows, verdict_kind=VerdictKind.DROP)


def train_mlp(x: np.ndarray, labels: pd.Series, decls: tuple[FeatureDecl, ...], seed: int,
              drop: frozenset[int], flow=None) -> CpuProgram:  # noqa: ANN001
    classes = tuple(sorted(labels.unique()))
    y = np.array(labels.map({c: i for i, c in enumerate(classes)}), dtype=np.int64)
    fam = all_families()["mlp"]
    trained = fam.train(fam.default_params(), x, y, len(classes),
                        tuple(d.width for d in decls), seed)
    plan = VerdictPlan(kind=VerdictKind.DROP, drop=drop)
    return lower_cpu(trained.quantised, decls, classes, plan, trained.winner_to_class, flow)


def flow_mlp(table: pd.DataFrame, seed: int, drop: frozenset[int]) -> CpuProgram:
    """An MLP over the flow features, trained on the table's labels."""
    defs = flow_defs()
    x, mask = reference_features(table, defs, FLOW)
    return train_mlp(x[mask], table["label"][mask], decls_of(defs), seed, drop,
                     lower_flow_features(defs, FLOW))


HEADERS = (("ttl", "ipv4.ttl", 8), ("len", "ipv4.total_len", 16), ("dport", "l4.dst_port", 16),
           ("sport", "l4.src_port", 16), ("proto", "ipv4.protocol", 8))


def header_mlp(table: pd.DataFrame, seed: int, drop: frozenset[int]) -> CpuProgram:
    """An MLP over header fields only: a packet's verdict depends on the packet alone."""
    decls = tuple(FeatureDecl(n, w, f) for n, f, w in HEADERS)
    return train_mlp(header_matrix(table), table["label"], decls, seed, drop)


def header_matrix(table: pd.DataFrame) -> np.ndarray:
    ports = table["has_tcp"] | table["has_udp"]
    return np.stack([table["ip_ttl"], table["ip_total_len"], table["dst_port"].where(ports, 0),
                     table["src_port"].where(ports, 0), table["ip_proto"]], axis=1).astype(
        np.int64)


# --- live counters -------------------------------------------------------------------------------


def expected_counters(pipeline: CpuProgram, table: pd.DataFrame) -> tuple[list[int], list[int]]:
    """hmn_counts (per class, then unclassified) and hmn_stats the twin predicts."""
    result, classified = reference_packets(pipeline, table)
    n = len(pipeline.class_labels)
    counts = [*np.bincount(result.class_index, minlength=n).tolist(), int((~classified).sum())]
    fields = result.fields
    stats = [len(table), int(table["has_ipv4"].sum()), int(classified.sum()),
             int((fields["verdict_drop"] == 1).sum()),
             int((fields.get("verdict_mark", np.zeros(1)) == 1).sum())]
    return counts, stats


def read_counters(obj: BpfObject, n_classes: int) -> tuple[list[int], list[int]]:
    counts = [obj.map("hmn_counts").lookup_u64(i) for i in range(n_classes + 1)]
    return counts, [obj.map("hmn_stats").lookup_u64(i) for i in range(5)]


def loaded(program: CpuProgram, tmp_path: Path, trace: int = 0) -> BpfObject:
    files = TARGET.emit(program, tmp_path, "live", trace=trace)
    obj = load_object(files["bpf_o"])
    install(obj, snapshot_of(program, TARGET.capacity(program)))
    return obj


@contextlib.contextmanager
def attached(link: Link, obj: BpfObject, mode: str) -> Iterator[None]:
    fd = obj.prog_fd("hmn_xdp")
    in_netns(link.rx, lambda: attach_xdp(link.receiver, fd, mode=mode))
    try:
        yield
    finally:
        in_netns(link.rx, lambda: detach_xdp(link.receiver, mode=mode))


@pytest.mark.parametrize("mode", ["skb", "native"])
def test_live_counters_equal_the_twin(packets: pd.DataFrame, mode: str, tmp_path: Path) -> None:
    """Per-class counters and stats after real packets equal the twin's on the same packets
    (native mode: veth runs XDP in its driver)."""
    pipeline = table_pipeline()
    want_counts, want_stats = expected_counters(pipeline, packets)
    assert min(want_counts[:3]) > 0 and want_stats[3] > 0 and want_stats[4] > 0
    with (veth_link(f"c{mode[0]}") as link, loaded(pipeline, tmp_path) as obj,
          attached(link, obj, mode)):
        assert in_netns(link.rx, lambda: attached_prog_id(link.receiver, mode=mode)) > 0
        assert send(link, frames_of(packets, link)) == len(packets)
        wait_for(lambda: obj.map("hmn_stats").lookup_u64(0), len(packets))
        time.sleep(0.05)  # nothing else may arrive
        counts, stats = read_counters(obj, len(pipeline.class_labels))
    assert stats == want_stats
    assert counts == want_counts


def test_native_attach_error_is_clear(tmp_path: Path) -> None:
    """Native mode on a device whose driver has no XDP (loopback) is a clear error, exit 2."""
    out = compile_out(table_pipeline(), tmp_path)
    name = f"hmn_test_n{os.getpid()}"
    try:
        with veth_link("n") as link:
            code, text = cli("deploy", str(out), "--iface", "lo", "--netns", link.rx,
                             "--mode", "native", "--name", name)
    finally:
        with contextlib.suppress(Exception):
            deploy_mod.undeploy(name)
    text = " ".join(text.split())
    assert code == 2 and "cannot attach XDP in native mode to lo" in text, text
    assert "try --mode skb" in text and not (PIN_ROOT / name).exists()


# --- swapping snapshots under traffic ------------------------------------------------------------

SWAP_PUSHES = 50
SWAP_MAX_PACKETS = 60_000
SWAP_SECONDS = 20.0


def test_swaps_under_traffic_never_mix(packets: pd.DataFrame, tmp_path: Path) -> None:
    """While packets flow, push models A and B alternately (50 pushes). Each packet's recorded
    class and action (trace keyed by its IPv4 identification = sequence number) is exactly what
    A or B gives it -- the one its recorded slot held -- and never something neither gives; no
    packet both models pass is dropped."""
    model_a = header_mlp(packets, 0, frozenset({0}))
    model_b = header_mlp(packets, 1, frozenset({1, 2}))
    rows = packets[packets["has_ipv4"]].reset_index(drop=True)
    x = header_matrix(rows)
    ref = [reference(m, x) for m in (model_a, model_b)]  # slot 0 holds A, slot 1 holds B
    cls = np.stack([r.class_index for r in ref])
    act = np.stack([np.where(r.fields["verdict_drop"] == 1, XDP_DROP, XDP_PASS) for r in ref])
    assert (act[0] != act[1]).any() and (cls[0] != cls[1]).any()
    n = SWAP_MAX_PACKETS
    order = np.arange(n) % len(rows)
    with veth_link("s") as link, loaded(model_a, tmp_path, trace=1 << 16) as obj:
        frames = numbered(frames_of(rows, link), order)
        with attached(link, obj, "skb"):
            sent = run_swaps(link, obj, frames, (model_a, model_b))
            wait_for(lambda: obj.map("hmn_stats").lookup_u64(0), sent)
            trace = read_trace(obj, sent)
            total = obj.map("hmn_stats").lookup_u64(0)
    assert total == sent, "every packet reached the program"
    assert trace[:, 0].all(), "every packet was classified and traced"
    slot, k = trace[:, 3].astype(int), order[:sent]
    as_a = (trace[:, 1] == cls[0, k]) & (trace[:, 2] == act[0, k])
    as_b = (trace[:, 1] == cls[1, k]) & (trace[:, 2] == act[1, k])
    assert (as_a | as_b).all(), "a packet got a class and verdict neither model gives"
    np.testing.assert_array_equal(trace[:, 1], cls[slot, k])
    np.testing.assert_array_equal(trace[:, 2], act[slot, k])
    both_pass = (act[0, k] == XDP_PASS) & (act[1, k] == XDP_PASS)
    assert (trace[both_pass, 2] == XDP_PASS).all()
    switches = int((np.diff(slot) != 0).sum())
    assert switches >= 10, f"traffic spanned only {switches} swaps"


def run_swaps(link: Link, obj: BpfObject, frames: list[bytes],
              models: tuple[CpuProgram, ...]) -> int:
    """Send in the background while pushing the models alternately; the number sent."""
    stop, sent = threading.Event(), []
    sender = threading.Thread(target=lambda: sent.append(send(link, frames, stop, pace=16)))
    cap = TARGET.capacity(models[0])
    deadline = time.monotonic() + SWAP_SECONDS
    sender.start()
    try:
        time.sleep(0.02)
        for i in range(SWAP_PUSHES):
            assert push(obj, models[(i + 1) % 2], cap) == (i + 1) % 2
            if time.monotonic() > deadline:
                break
    finally:
        stop.set()
        sender.join(timeout=SWAP_SECONDS)
    assert not sender.is_alive() and sent
    return sent[0]


def read_trace(obj: BpfObject, n: int) -> np.ndarray:
    """(seen, class, action, slot) per sequence number."""
    trace = obj.map("hmn_trace")
    return np.array([struct.unpack("<4Q", trace.lookup(i)) for i in range(n)], dtype=np.int64)


# --- the deployment commands ---------------------------------------------------------------------


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def compile_out(pipeline: CpuProgram, out: Path, name: str = "live") -> Path:
    TARGET.emit(pipeline, out, name)
    return out


def test_deploy_stats_push_undeploy(packets: pd.DataFrame, tmp_path: Path) -> None:
    """deploy -> traffic -> stats shows the twin's counts -> push a retrained model -> more
    traffic (counted by the new model) -> undeploy leaves nothing pinned or attached."""
    name = f"hmn_test_{os.getpid()}"
    first = flow_mlp(packets, 0, frozenset({0}))
    second = flow_mlp(packets, 1, frozenset({0, 1}))
    out_a, out_b = compile_out(first, tmp_path / "a"), compile_out(second, tmp_path / "b")
    twice = pd.concat([packets, packets], ignore_index=True)  # the flows go on after the push
    split = len(packets)
    cls_a, drop_a = per_packet(first, twice)
    cls_b, drop_b = per_packet(second, twice)
    cls = np.concatenate([cls_a[:split], cls_b[split:]])
    drops = int(drop_a[:split].sum() + drop_b[split:].sum())
    assert drops > drop_a.sum(), "after the push, the newer model drops more"
    try:
        with veth_link("d") as link:
            deploy_and_check(name, link, out_a, packets, first, cls[:split])
            assert wait_stats(name, split)["stats"]["dropped"] == drop_a[:split].sum()
            code, text = cli("push", str(out_b), "--name", name)
            assert code == 0, text
            send(link, frames_of(packets, link))
            stats = wait_stats(name, len(twice))
            want = np.bincount(cls[cls >= 0], minlength=len(first.class_labels)).tolist()
            assert list(stats["counts"].values()) == want
            assert stats["stats"]["dropped"] == drops
            assert stats["active_slot"] == 0  # two pushes: the same compile, then the newer
            code, text = cli("undeploy", name)
            assert code == 0, text
            assert not link.xdp_attached()
            assert not (PIN_ROOT / name).exists()
            assert not (deploy_mod.STATE_DIR / f"{name}.json").exists()
    finally:
        with contextlib.suppress(Exception):
            deploy_mod.undeploy(name)


def per_packet(pipeline: CpuProgram, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per packet of ``table``: the class the twin gives it (-1: unclassified) and whether it is
    dropped."""
    result, mask = reference_packets(pipeline, table)
    cls, drop = np.full(len(table), -1), np.zeros(len(table), dtype=bool)
    cls[mask], drop[mask] = result.class_index, result.fields["verdict_drop"] == 1
    return cls, drop


def deploy_and_check(name: str, link: Link, out: Path, packets: pd.DataFrame,
                     pipeline: CpuProgram, cls: np.ndarray) -> None:
    code, text = cli("deploy", str(out), "--iface", link.receiver, "--netns", link.rx,
                     "--name", name)
    assert code == 0, text
    assert link.xdp_attached() and (PIN_ROOT / name / "maps" / "hmn_counts").exists()
    state = json.loads((deploy_mod.STATE_DIR / f"{name}.json").read_text())
    assert state["iface"] == link.receiver and state["netns"] == link.rx
    assert state["mode"] == "skb" and state["out_dir"] == str(out.resolve())
    send(link, frames_of(packets, link))
    stats = wait_stats(name, len(packets))
    labels = list(pipeline.class_labels)
    assert list(stats["counts"]) == labels
    want = np.bincount(cls[cls >= 0], minlength=len(labels)).tolist()
    assert list(stats["counts"].values()) == want
    assert stats["stats"]["packets"] == len(packets) and stats["attached"]
    code, text = cli("stats", name)
    assert code == 0 and all(label in text for label in labels) and "classified" in text
    code, text = cli("push", str(out), "--name", name)  # the same compile: allowed
    assert code == 0, text


def wait_stats(name: str, packets: int) -> dict:
    def read() -> dict:
        code, text = cli("stats", name, "--json")
        assert code == 0, text
        return json.loads(text)

    deadline = time.monotonic() + 5
    stats = read()
    while stats["stats"]["packets"] < packets and time.monotonic() < deadline:
        time.sleep(0.02)
        stats = read()
    time.sleep(0.05)
    return read()


def big_tree_program() -> CpuProgram:
    """The same features and outcomes as table_pipeline, but a deeper, bigger tree."""
    program = table_pipeline()
    n = 255
    feature = tuple(0 if i < n // 2 else -2 for i in range(n))
    left = tuple(2 * i + 1 if i < n // 2 else -1 for i in range(n))
    right = tuple(2 * i + 2 if i < n // 2 else -1 for i in range(n))
    leaves = tuple(tuple(int(k == i % 4) for k in range(4)) for i in range(n))
    tree = QTree(feature, tuple(i % 250 for i in range(n)), left, right, leaves)
    big = lower_cpu(QTreeEnsemble((tree,), (0,) * 4), decls_of(flow_defs()),
                    program.class_labels, VerdictPlan(), None, program.flow)
    return replace(big, verdict=program.verdict, verdict_kind=program.verdict_kind)


def bad_pushes(tmp_path: Path, out: Path) -> list[tuple[Path, str]]:
    """Compiles a push must refuse: too big for the capacity, corrupt, or not a snapshot."""
    import shutil

    big = compile_out(big_tree_program(), tmp_path / "big")
    corrupt, truncated = tmp_path / "corrupt", tmp_path / "truncated"
    for d in (corrupt, truncated):
        shutil.copytree(out, d)
    (corrupt / "xdp" / "snapshot.json").write_text("{not json")
    snap = json.loads((out / "xdp" / "snapshot.json").read_text())
    del snap["model"]["model"]
    (truncated / "xdp" / "snapshot.json").write_text(json.dumps(snap))
    return [(big, "does not fit the program deployed as"),
            (big, "exceeds the compiled capacity of"),
            (corrupt, "snapshot.json: not valid JSON"),
            (truncated, "a corrupt snapshot")]


def test_cli_errors_exit_2(packets: pd.DataFrame, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Clear messages and exit code 2: not compiled for xdp, no such netns or interface, a push
    of a different family, beyond the compiled capacity or of a corrupt OUT (the active model
    untouched), unknown deployments, not root."""
    name = f"hmn_test_e{os.getpid()}"
    out = compile_out(table_pipeline(), tmp_path / "t")
    other = compile_out(header_mlp(packets, 0, frozenset({0})), tmp_path / "m")
    checks = [
        (("deploy", str(tmp_path), "--iface", "lo"), "not compiled for xdp"),
        (("deploy", str(out), "--iface", "lo", "--netns", "hmn-test-none"),
         "no network namespace 'hmn-test-none'"),
        (("deploy", str(out), "--iface", "hmn-nope0"), "no interface 'hmn-nope0'"),
        (("deploy", str(out), "--iface", "lo", "--mode", "hw"), "--mode must be one of"),
        (("stats", "hmn_test_never"), "no deployment named 'hmn_test_never'"),
        (("undeploy", "hmn_test_never"), "no deployment named 'hmn_test_never'"),
    ]
    for args, message in checks:
        code, text = cli(*args)
        assert code == 2 and message in " ".join(text.split()), (args, text)
    try:
        with veth_link("e") as link:
            code, text = cli("deploy", str(out), "--iface", link.receiver, "--netns", link.rx,
                             "--name", name)
            assert code == 0, text
            code, text = cli("deploy", str(out), "--iface", link.receiver, "--netns", link.rx,
                             "--name", name)
            assert code == 2 and "already deployed" in text
            code, text = cli("push", str(other), "--name", name)
            text = " ".join(text.split())
            assert code == 2 and "a different family" in text and "does not fit" in text, text
            for out_bad, message in bad_pushes(tmp_path, out):
                code, text = cli("push", str(out_bad), "--name", name)
                assert code == 2 and message in " ".join(text.split()), (message, text)
            stats = json.loads(cli("stats", name, "--json")[1])
            assert stats["active_slot"] == 0, "a refused push leaves the active model alone"
            assert json.loads((deploy_mod.STATE_DIR / f"{name}.json").read_text())["pushes"] == 0
            monkeypatch.setattr(deploy_mod.os, "geteuid", lambda: 1000)
            code, text = cli("push", str(out), "--name", name)
            assert code == 2 and "needs root" in text
            monkeypatch.undo()
            assert cli("undeploy", name)[0] == 0
    finally:
        with contextlib.suppress(Exception):
            deploy_mod.undeploy(name)


def test_a_schedule_deploys_counts_pushes_and_undeploys(tmp_path: Path) -> None:
    """A schedule's program on a live interface: counters per verdict-table index (every
    model's class or not run) as the kernel test entry predicts, a push of the same schedule
    flips every model at once, a push of one model's compile is refused."""
    from test_schedule import _compiled, _schedule_frame

    from homunculus.schedule import xdp

    name = f"hmn_test_s{os.getpid()}"
    out, _ = _compiled(tmp_path, "kind[media] > dev", "xdp")
    rows = np.array([(ttl, port, length) for ttl in range(0, 256, 16) for port in (100, 600)
                     for length in (100, 900)])
    obj, doc = xdp.load_built(out)
    with obj:
        classes, verdict = xdp.run_vectors(obj, 2, rows)
    sizes = [len(m["labels"]) for m in doc["models"]]
    key = classes[:, 0] * (sizes[1] + 1) + np.where(classes[:, 1] < 0, sizes[1], classes[:, 1])
    want = np.bincount(key, minlength=(sizes[0] + 1) * (sizes[1] + 1)).tolist()
    single = compile_out(table_pipeline(), tmp_path / "single")
    try:
        with veth_link("s") as link:
            code, text = cli("deploy", str(out), "--iface", link.receiver, "--netns", link.rx,
                             "--name", name)
            assert code == 0, text
            head = link.mac(link.rx, link.receiver) + link.mac(link.tx, link.sender)
            send(link, [head + _schedule_frame(*row)[12:] for row in rows])
            stats = wait_stats(name, len(rows))
            assert list(stats["counts"].values()) == want
            assert list(stats["counts"])[0] == f"kind={doc['models'][0]['labels'][0]} " \
                                                f"dev={doc['models'][1]['labels'][0]}"
            assert stats["stats"]["dropped"] == int(verdict[:, 1].sum()) > 0
            assert stats["stats"]["marked"] == int(((verdict[:, 1] == 0)
                                                    & (verdict[:, 2] == 1)).sum())
            code, text = cli("push", str(out), "--name", name)  # the same schedule: allowed
            assert code == 0, text
            assert json.loads(cli("stats", name, "--json")[1])["active_slot"] == 1
            code, text = cli("push", str(single), "--name", name)
            assert code == 2 and "runs a schedule of kind, dev" in " ".join(text.split()), text
            assert json.loads(cli("stats", name, "--json")[1])["active_slot"] == 1
            assert cli("undeploy", name)[0] == 0
            assert not link.xdp_attached() and not (PIN_ROOT / name).exists()
            code, text = cli("deploy", str(single), "--iface", link.receiver, "--netns",
                             link.rx, "--name", name)
            assert code == 0, text
            code, text = cli("push", str(out), "--name", name)
            assert code == 2 and "a schedule's compile" in " ".join(text.split()), text
            assert cli("undeploy", name)[0] == 0
    finally:
        with contextlib.suppress(Exception):
            deploy_mod.undeploy(name)


def test_a_flow_schedule_keeps_its_flow_state_through_a_push(packets: pd.DataFrame,
                                                               tmp_path: Path) -> None:
    """Two models sharing flow registers on a live interface: real packets fill the shared
    registers, ``homunculus push`` flips both models at once and leaves every register as
    it was."""
    from test_schedule_xdp_flow import FLOW, _compiled, flows

    name = f"hmn_test_f{os.getpid()}"
    _, out, report = _compiled(tmp_path, "ad | second", FLOW)
    assert report["flow_state"]["registers"] == 4

    def registers() -> np.ndarray:
        pins = Pinned.open(name)
        try:
            return flows(pins, 256)
        finally:
            pins.close()

    try:
        with veth_link("f") as link:
            code, text = cli("deploy", str(out), "--iface", link.receiver, "--netns", link.rx,
                             "--name", name)
            assert code == 0, text
            assert send(link, frames_of(packets, link)) == len(packets)
            stats = wait_stats(name, len(packets))
            assert stats["stats"]["packets"] == len(packets)
            before = registers()
            assert before.any(axis=0).all()  # every shared register holds flow state
            code, text = cli("push", str(out), "--name", name)
            assert code == 0, text
            assert json.loads(cli("stats", name, "--json")[1])["active_slot"] == 1
            assert (registers() == before).all()
            assert cli("undeploy", name)[0] == 0
    finally:
        with contextlib.suppress(Exception):
            deploy_mod.undeploy(name)
