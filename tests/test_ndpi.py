"""nDPI dataset: result-file parsing, category mapping, file-level splits, the real build."""

from __future__ import annotations

import ipaddress

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from homunculus.data.labels import flow_key
from homunculus.data.ndpi import (
    CLASSES,
    build_ndpi_dataset,
    category_class,
    parse_ndpi_result,
    split_by_file,
)
from homunculus.data.packets import PACKET_COLUMNS

# three flow lines of nDPI 4.2's tests/result/1kxun.pcap.out (shortened after the category),
# one IPv6 flow, one flow without category, and summary lines that must be ignored
SAMPLE = "\n".join([
    "Guessed flow protos:\t27",
    "Unknown\t24\t6428\t14",
    "\t1\tTCP 192.168.115.8:49613 <-> 183.131.48.144:80 [proto: 7/HTTP][ClearText]"
    "[Confidence: DPI][cat: Media/1][260 pkts/15070 bytes <-> 159 pkts/168623 bytes]",
    "\t16\tUDP 192.168.119.1:67 -> 255.255.255.255:68 [proto: 18/DHCP][ClearText]"
    "[Confidence: DPI][cat: Network/14][14 pkts/4788 bytes -> 0 pkts/0 bytes]",
    "\t17\tTCP 192.168.5.16:53580 <-> 31.13.87.36:443 [proto: 91.119/TLS.Facebook][Encrypted]"
    "[Confidence: Match by IP][cat: SocialNetwork/6][4 pkts/2050 bytes <-> 5 pkts/2297 bytes]",
    "\t12\tUDP [fe80::9bd:81dd:2fdc:5750]:1900 -> [ff02::c]:1900 [proto: 12/SSDP][cat: System/18]",
    "\t1\tUDP 10.10.100.25:62367 -> 10.10.101.2:17000 [VLAN: 505][proto: 0/Unknown][ClearText]",
    "\t1\t 192.168.5.16             \t 2      ",
])


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def test_parse_result_lines() -> None:
    flows, counts = parse_ndpi_result(SAMPLE)
    assert (counts.flows, counts.ipv6, counts.other) == (5, 1, 0)
    assert [f.category for f in flows] == ["Media", "Network", "SocialNetwork", "Unknown"]
    assert [f.app for f in flows] == ["HTTP", "DHCP", "TLS.Facebook", "Unknown"]
    http = flows[0]
    assert (http.proto, http.src, http.sport, http.dst, http.dport) == (
        6, ip("192.168.115.8"), 49613, ip("183.131.48.144"), 80)
    assert http.key == flow_key(ip("183.131.48.144"), ip("192.168.115.8"), 80, 49613, 6)
    assert flows[1].proto == 17


def test_category_mapping() -> None:
    assert [category_class(c) for c in ("Web", "SocialNetwork", "System", "VoIP", "Download",
                                        "Chat", "Video", "Mining", "NoSuchCategory")] == [
        "Web", "Web", "Network", "VoIP", "Cloud", "Chat", "Streaming", "other", "other"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=2, max_size=200), st.floats(0.05, 0.95),
       st.integers(0, 2**32 - 1))
def test_split_by_file_never_leaks(file_ids: list[int], fraction: float, seed: int) -> None:
    if len(set(file_ids)) < 2:
        file_ids = [*file_ids, max(file_ids) + 1]
    table = pd.DataFrame({"file_id": np.array(file_ids, dtype=np.int32),
                          "label": ["x"] * len(file_ids)})
    train, test = split_by_file(table, fraction, seed)
    assert set(train["file_id"]).isdisjoint(test["file_id"])
    assert len(train) + len(test) == len(table)
    assert len(train) and len(test)
    again = split_by_file(table, fraction, seed)
    assert again[1]["file_id"].tolist() == test["file_id"].tolist()


def test_real_ndpi_fetch_and_build() -> None:
    """Fetches Debian's ndpi source package with apt (root). A failed fetch fails the test."""
    ds = build_ndpi_dataset(first_n=4)
    print(ds.summary())
    table = ds.table
    assert list(table.columns) == [*PACKET_COLUMNS, "label"]
    assert len(ds.files) > 200 and len(table) > 10_000
    assert set(table["label"]) == set(CLASSES)
    assert table["has_ipv4"].all()
    assert table.groupby(["file_id", "label"]).size().gt(0).all()
    assert ds.flows["packets"].max() <= 4
    assert ds.category_flows["Web"] > 1000 and ds.counts.ipv6 > 0
    train, test = split_by_file(table, 0.25, seed=1)
    assert set(train["file_id"]).isdisjoint(test["file_id"])
    again = build_ndpi_dataset(first_n=4, max_files=10, seed=3)  # cached: no second download
    assert len(again.files) == 10
