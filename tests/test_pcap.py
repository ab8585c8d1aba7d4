"""Capture ingestion: round trips, formats, link types and damaged captures."""

from __future__ import annotations

import struct
from pathlib import Path

import dpkt
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import ARP, IP, TCP, UDP, Dot1Q, Ether, IPv6
from scapy.utils import PcapNgWriter

from homunculus.data.packets import PACKET_COLUMNS, as_packet_table
from homunculus.data.pcap import IngestStats, ingest, read_packets, write_pcap
from homunculus.errors import DataError

COMPARED = [c for c in PACKET_COLUMNS if c not in ("file_id", "record")]


@st.composite
def packet_rows(draw: st.DrawFn) -> dict[str, int]:
    """A consistent packet-table row (the reader's conventions: zeros where absent)."""
    kind = draw(st.sampled_from(["tcp", "udp", "ipv4", "frag", "other"]))
    row = dict.fromkeys(PACKET_COLUMNS, 0)
    row["ts_us"] = draw(st.integers(0, 2**32 * 10**6 - 1))
    if kind == "other":
        row["eth_type"] = draw(st.sampled_from([0x0806, 0x86DD, 0x88CC]))
        row["wire_len"] = draw(st.integers(14, 1514))
        return row
    ihl = draw(st.integers(5, 15))
    row.update(eth_type=0x0800, has_ipv4=1, ip_ihl=ihl, ip_src=draw(st.integers(0, 2**32 - 1)),
               ip_dst=draw(st.integers(0, 2**32 - 1)), ip_ttl=draw(st.integers(0, 255)),
               ip_diffserv=draw(st.integers(0, 255)), ip_id=draw(st.integers(0, 65535)))
    l4 = 0
    if kind == "tcp":
        doff = draw(st.integers(5, 15))
        row.update(ip_proto=6, has_tcp=1, tcp_data_offset=doff,
                   src_port=draw(st.integers(0, 65535)), dst_port=draw(st.integers(0, 65535)),
                   tcp_flags=draw(st.integers(0, 255)), tcp_window=draw(st.integers(0, 65535)))
        l4 = doff * 4
    elif kind == "udp":
        row.update(ip_proto=17, has_udp=1, src_port=draw(st.integers(0, 65535)),
                   dst_port=draw(st.integers(0, 65535)), udp_len=draw(st.integers(8, 1480)))
        l4 = 8
    elif kind == "frag":
        row.update(ip_proto=draw(st.sampled_from([6, 17, 1])),
                   ip_frag_offset=draw(st.integers(1, 8191)))
    else:
        row["ip_proto"] = draw(st.sampled_from([1, 2, 47, 112]))
    row["ip_total_len"] = draw(st.integers(ihl * 4 + l4, 1500))
    row["wire_len"] = draw(st.integers(14 + row["ip_total_len"], 1600))
    return row


def table_of(rows: list[dict[str, int]]) -> pd.DataFrame:
    cols = {c: np.array([r[c] for r in rows], dtype=np.int64) for c in PACKET_COLUMNS}
    return as_packet_table(cols)


def sample_table(n: int = 5) -> pd.DataFrame:
    rows = []
    for i in range(n):
        row = dict.fromkeys(PACKET_COLUMNS, 0)
        row.update(ts_us=1_700_000_000_000_000 + 1000 * i, eth_type=0x0800, has_ipv4=1,
                   ip_src=0x0A000001, ip_dst=0x0A000002 + i, ip_proto=6, ip_ttl=64, ip_ihl=5,
                   ip_total_len=40 + 10 * i, ip_id=i, has_tcp=1, src_port=1000 + i, dst_port=80,
                   tcp_flags=0x18, tcp_window=512, tcp_data_offset=5, wire_len=54 + 10 * i)
        rows.append(row)
    return table_of(rows)


def record_offsets(data: bytes) -> list[int]:
    """Offsets of the records of a little-endian microsecond pcap."""
    pos, out = 24, []
    while pos < len(data):
        out.append(pos)
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
    return out


def read(path: Path) -> tuple[pd.DataFrame, IngestStats, list[str]]:
    warnings: list[str] = []
    table, stats = ingest([path], on_warning=warnings.append)
    return table, stats, warnings


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(packet_rows(), min_size=1, max_size=20))
def test_write_read_round_trip(tmp_path: Path, rows: list[dict[str, int]]) -> None:
    table = table_of(rows)
    path = tmp_path / "rt.pcap"
    write_pcap(table, path)
    back, stats, warnings = read(path)
    assert warnings == [] and stats.skipped == 0
    assert back["record"].tolist() == list(range(len(rows)))
    pd.testing.assert_frame_equal(back[COMPARED], table[COMPARED])


def test_written_pcap_is_valid_for_dpkt(tmp_path: Path) -> None:
    path = tmp_path / "t.pcap"
    write_pcap(sample_table(3), path)
    with open(path, "rb") as f:
        frames = [buf for _, buf in dpkt.pcap.Reader(f)]
    ip = dpkt.ethernet.Ethernet(frames[2]).data
    assert isinstance(ip.data, dpkt.tcp.TCP)
    raw = bytes(ip)[:20]
    assert dpkt.in_cksum(raw) == 0  # header checksum verifies
    assert len(ip) == 60 and ip.data.dport == 80


def test_write_rejects_inconsistent_rows(tmp_path: Path) -> None:
    table = sample_table(2)
    table.loc[1, "has_udp"] = True
    with pytest.raises(DataError, match="has_tcp and has_udp"):
        write_pcap(table, tmp_path / "bad.pcap")


def test_chunks_and_max_packets(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"c{i}.pcap")
        write_pcap(sample_table(5), paths[-1])
    chunks = list(read_packets(paths, chunk_size=4))
    assert [len(c) for c in chunks] == [4, 4, 4, 3]
    table = pd.concat(chunks, ignore_index=True)
    assert table["file_id"].tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert list(table.dtypes.astype(str)) == list(PACKET_COLUMNS.values())
    assert sum(len(c) for c in read_packets(paths, max_packets=7)) == 7


def test_wire_len_is_orig_len_and_nanosecond_pcap(tmp_path: Path) -> None:
    frame = bytes(Ether() / IP(src="1.1.1.1", dst="2.2.2.2") / UDP(sport=5, dport=6) / (b"x" * 100))
    head = struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 64, 1)
    rec = struct.pack("<IIII", 1_600_000_000, 123_456_789, 64, len(frame)) + frame[:64]
    path = tmp_path / "nano.pcap"
    path.write_bytes(head + rec)
    table, stats, warnings = read(path)
    assert warnings == []
    assert table.loc[0, "wire_len"] == len(frame)  # the original length, not the 64 captured
    assert table.loc[0, "ts_us"] == 1_600_000_000_123_456
    assert table.loc[0, "has_udp"] and table.loc[0, "src_port"] == 5


def test_vlan_and_non_ipv4_frames(tmp_path: Path) -> None:
    pkts = [Ether() / Dot1Q(vlan=7) / IP(src="10.0.0.1", dst="10.0.0.2", ttl=9) / TCP(dport=443),
            Ether() / Dot1Q(vlan=7) / Dot1Q(vlan=8) / IP(src="10.0.0.1") / UDP(dport=53),
            Ether() / ARP(), Ether() / IPv6() / UDP()]
    path = tmp_path / "vlan.pcap"
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f)
        for p in pkts:
            w.writepkt(bytes(p), ts=1.0)
    table, _, _ = read(path)
    assert table["has_ipv4"].tolist() == [True, True, False, False]
    assert table["eth_type"].tolist() == [0x0800, 0x0800, 0x0806, 0x86DD]
    assert table.loc[0, "ip_ttl"] == 9 and table.loc[0, "dst_port"] == 443
    assert table.loc[1, "has_udp"] and table.loc[1, "dst_port"] == 53


@pytest.mark.parametrize(("linktype", "prefix"), [
    (113, b"\x00\x00\x00\x01\x00\x06" + b"\0" * 8 + b"\x08\x00"),  # Linux cooked (SLL)
    (101, b""),  # raw IP
    (0, struct.pack("<I", 2)),  # BSD loopback, AF_INET
])
def test_other_link_types(tmp_path: Path, linktype: int, prefix: bytes) -> None:
    ip = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / TCP(sport=1234, dport=22))
    path = tmp_path / "lt.pcap"
    with open(path, "wb") as f:
        dpkt.pcap.Writer(f, linktype=linktype).writepkt(prefix + ip, ts=2.5)
    table, stats, warnings = read(path)
    assert warnings == [] and stats.files[0].linktypes == {linktype}
    assert table.loc[0, "has_tcp"] and table.loc[0, "src_port"] == 1234
    assert table.loc[0, "ts_us"] == 2_500_000


def test_pcapng_from_scapy(tmp_path: Path) -> None:
    path = tmp_path / "s.pcapng"
    w = PcapNgWriter(str(path))
    pkts = [Ether() / IP(src="1.2.3.4", dst="5.6.7.8") / TCP(sport=10, dport=20, flags="SA"),
            Ether() / Dot1Q(vlan=3) / IP(src="5.6.7.8", dst="1.2.3.4") / UDP(sport=20, dport=10),
            Ether() / ARP()]
    for i, p in enumerate(pkts):
        p.time = 1_700_000_000 + i + 0.25
        w.write(p)
    w.close()
    table, stats, warnings = read(path)
    assert warnings == [] and stats.files[0].format == "pcapng"
    assert table["ts_us"].tolist() == [1_700_000_000_250_000 + i * 1_000_000 for i in range(3)]
    assert table["has_tcp"].tolist() == [True, False, False]
    assert table["has_udp"].tolist() == [False, True, False]
    assert table.loc[0, "tcp_flags"] == 0x12 and table.loc[1, "src_port"] == 20
    assert table["wire_len"].tolist() == [len(p) for p in pkts]


def _block(btype: int, body: bytes) -> bytes:
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def _epb(iface: int, ticks: int, frame: bytes, orig: int | None = None) -> bytes:
    pad = b"\0" * (-len(frame) % 4)
    return _block(6, struct.pack("<IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(frame),
                                 orig or len(frame)) + frame + pad)


def hand_pcapng(*packets: bytes) -> bytes:
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    tsresol_ns = struct.pack("<HH", 9, 1) + b"\x09\0\0\0" + b"\0\0\0\0"  # if_tsresol = 10^-9
    idb0 = _block(1, struct.pack("<HHI", 1, 0, 65535) + tsresol_ns)
    idb1 = _block(1, struct.pack("<HHI", 101, 0, 65535))  # raw IP, default microseconds
    return shb + idb0 + idb1 + b"".join(packets)


def test_hand_built_pcapng_interfaces_and_tsresol(tmp_path: Path) -> None:
    eth = bytes(Ether() / IP(src="9.9.9.9") / UDP(sport=1, dport=2))
    raw = bytes(IP(src="8.8.8.8") / TCP(sport=3, dport=4))
    path = tmp_path / "h.pcapng"
    path.write_bytes(hand_pcapng(_epb(0, 1_500_000_000_123_456_789, eth, orig=1000),
                                 _epb(1, 1_500_000_000_654_321, raw)))
    table, stats, warnings = read(path)
    assert warnings == []
    assert table["ts_us"].tolist() == [1_500_000_000_123_456, 1_500_000_000_654_321]
    assert table["wire_len"].tolist() == [1000, len(raw)]
    assert table["has_udp"].tolist() == [True, False]
    assert table["has_tcp"].tolist() == [False, True]
    assert stats.files[0].linktypes == {1, 101}


def test_pcapng_bad_block_and_truncation(tmp_path: Path) -> None:
    frame = bytes(Ether() / IP() / UDP())
    good = [_epb(0, 10**18 + i, frame) for i in range(3)]
    broken = bytearray(_epb(0, 10**18, frame))
    broken[4:8] = struct.pack("<I", 0x7FFFFFF0)  # block length far beyond the file
    path = tmp_path / "b.pcapng"
    path.write_bytes(hand_pcapng(good[0], bytes(broken), good[1], good[2][:-10]))
    table, stats, warnings = read(path)
    assert table["record"].tolist() == [0, 2]
    assert stats.skipped == 2 and stats.truncated_files == 1
    assert any("record 1" in w and str(path) in w for w in warnings)
    assert any("record 3" in w and "truncated" in w for w in warnings)


def test_truncated_last_record(tmp_path: Path) -> None:
    path = tmp_path / "t.pcap"
    write_pcap(sample_table(5), path)
    path.write_bytes(path.read_bytes()[:-10])
    table, stats, warnings = read(path)
    assert len(table) == 4 and stats.skipped == 1 and stats.truncated_files == 1
    assert len(warnings) == 1 and str(path) in warnings[0] and "record 4" in warnings[0]


def test_record_with_caplen_beyond_the_file_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    write_pcap(sample_table(5), path)
    data = bytearray(path.read_bytes())
    at = record_offsets(bytes(data))[2]
    data[at + 8:at + 12] = struct.pack("<I", 200_000)  # caplen larger than what is left
    path.write_bytes(bytes(data))
    table, stats, warnings = read(path)
    assert table["record"].tolist() == [0, 1, 3, 4]
    assert table["ip_id"].tolist() == [0, 1, 3, 4]
    assert stats.skipped == 1 and stats.truncated_files == 0
    assert "record 2" in warnings[0] and "beyond the end" in warnings[0]


def test_garbage_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "g.pcap"
    table = sample_table(5)
    write_pcap(table, path)
    data = path.read_bytes()
    at = record_offsets(data)[3]
    path.write_bytes(data[:at] + b"\xff" * 37 + data[at:])
    back, stats, warnings = read(path)
    assert back["ip_id"].tolist() == [0, 1, 2, 3, 4]  # every real packet survives
    assert back["record"].tolist() == [0, 1, 2, 4, 5]  # the garbage counts as record 3
    assert stats.skipped == 1 and len(warnings) == 1 and "record 3" in warnings[0]
    pd.testing.assert_frame_equal(back[COMPARED], table[COMPARED])


def test_not_a_capture_and_empty_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.pcap"
    text.write_text("hello, not a capture\n")
    with pytest.raises(DataError, match="notes.pcap"):
        ingest([text])
    empty = tmp_path / "zero.pcap"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="zero.pcap"):
        ingest([empty])
    header_only = tmp_path / "empty.pcap"
    write_pcap(sample_table(0), header_only)
    table, stats, warnings = read(header_only)
    assert len(table) == 0 and warnings == [] and stats.packets == 0
    assert list(table.dtypes.astype(str)) == list(PACKET_COLUMNS.values())
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(header_only.read_bytes()[:10])
    table, stats, warnings = read(cut)
    assert len(table) == 0 and stats.truncated_files == 1 and "cut.pcap" in warnings[0]


def test_stats_per_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    write_pcap(sample_table(3), a)
    write_pcap(sample_table(5), b)
    b.write_bytes(b.read_bytes()[:-3])
    _, stats = ingest([a, b], on_warning=lambda m: None)
    assert [f.packets for f in stats.files] == [3, 4]
    assert (stats.packets, stats.skipped, stats.truncated_files) == (7, 1, 1)
    assert [f.truncated for f in stats.files] == [False, True]
