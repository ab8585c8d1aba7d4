"""Label files and flow keys."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homunculus.data.labels import (
    LabelRule,
    apply_rules,
    flow_key,
    flow_keys,
    label_from_file,
    rule_mask,
)
from homunculus.data.packets import PACKET_COLUMNS, as_packet_table
from homunculus.errors import DataError


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def packets(*rows: tuple[str, str, int, int, int, int]) -> pd.DataFrame:
    """Rows (src, dst, sport, dport, proto, ts_us); proto 0 means a non-IPv4 packet."""
    cols: dict[str, list[int]] = {c: [] for c in PACKET_COLUMNS}
    for src, dst, sport, dport, proto, ts in rows:
        row = dict.fromkeys(PACKET_COLUMNS, 0)
        if proto:
            row.update(has_ipv4=1, eth_type=0x0800, ip_src=ip(src), ip_dst=ip(dst),
                       ip_proto=proto, has_tcp=int(proto == 6), has_udp=int(proto == 17))
            if proto in (6, 17):
                row.update(src_port=sport, dst_port=dport)
        row["ts_us"] = ts
        for c in PACKET_COLUMNS:
            cols[c].append(row[c])
    return as_packet_table({c: np.array(v, dtype=np.int64) for c, v in cols.items()})


TABLE = packets(
    ("10.0.0.1", "10.0.0.2", 1000, 80, 6, 100),  # 0 forward
    ("10.0.0.2", "10.0.0.1", 80, 1000, 6, 200),  # 1 reverse of 0
    ("10.0.0.3", "8.8.8.8", 5353, 53, 17, 300),  # 2 DNS
    ("192.168.1.5", "10.0.0.2", 2000, 80, 6, 400),  # 3 other client
    ("10.0.0.1", "10.0.0.9", 0, 0, 1, 500),  # 4 ICMP
    ("0.0.0.0", "0.0.0.0", 0, 0, 0, 600),  # 5 non-IPv4
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


def test_flow_keys_are_bidirectional_and_distinct() -> None:
    keys = flow_keys(TABLE)
    assert keys.dtype == np.dtype("S13")
    assert keys[0] == keys[1]
    assert len(set(keys.tolist())) == 5
    assert flow_key(ip("10.0.0.2"), ip("10.0.0.1"), 80, 1000, 6) == keys[0]
    assert flow_key(ip("0.0.0.0"), 0, 0, 0, 0) == keys[5]
    grouped = pd.Series(keys).groupby(keys).size()
    assert grouped.max() == 2


def test_five_tuple_both_directions(tmp_path: Path) -> None:
    path = write(tmp_path, "label,src,dst,sport,dport,proto\n"
                           "web,10.0.0.1,10.0.0.2,1000,80,tcp\n")
    assert label_from_file(TABLE, path)["label"].tolist() == [
        "web", "web", "unknown", "unknown", "unknown", "unknown"]
    one_way = label_from_file(TABLE, path, bidirectional=False, default="x")
    assert one_way["label"].tolist() == ["web", "x", "x", "x", "x", "x"]
    per_row = write(tmp_path, "label,src,dst,sport,dport,proto,bidirectional\n"
                              "web,10.0.0.1,10.0.0.2,1000,80,6,no\n")
    assert label_from_file(TABLE, per_row)["label"].tolist()[:2] == ["web", "unknown"]


def test_wildcards_cidr_ranges_and_time(tmp_path: Path) -> None:
    path = write(tmp_path, "\n".join([
        "# comment lines and blank lines are ignored", "",
        "label,src,dst,sport,dport,proto,start_us,end_us",
        "dns,,,,53,udp,,",
        "lan,192.168.0.0/16,,,,,,",
        "icmp,*,*,*,*,icmp,*,*",
        "late,,,,,,550,",
        "web,,,1000-1999,,,,",
    ]) + "\n")
    out = label_from_file(TABLE, path, default="none")
    assert out["label"].tolist() == ["web", "web", "dns", "lan", "icmp", "late"]


def test_first_matching_rule_wins(tmp_path: Path) -> None:
    path = write(tmp_path, "label,dst,start_us,end_us\n"
                           "first,10.0.0.2,150,450\n"
                           "second,10.0.0.2,,\n"
                           "window,,0,250\n")
    # bidirectional default: row 1 (dst 10.0.0.1 <- src 10.0.0.2) matches dst in reverse
    assert label_from_file(TABLE, path)["label"].tolist() == [
        "second", "first", "unknown", "first", "unknown", "unknown"]


def test_time_only_rule_matches_non_ipv4(tmp_path: Path) -> None:
    path = write(tmp_path, "label,start_us\nafter,550\n")
    assert label_from_file(TABLE, path)["label"].tolist()[-1] == "after"


def test_label_column_is_str_and_input_unchanged() -> None:
    out = apply_rules(TABLE, [], default="benign")
    assert "label" not in TABLE.columns
    assert set(out["label"]) == {"benign"} and len(out) == len(TABLE)


@pytest.mark.parametrize(("text", "where", "what"), [
    ("label,src\nok,10.0.0.1\n# note\nbad,10.0.0.300\n", ":4:", "column 'src'"),
    ("label,sport\nok,80\nbad,70000\n", ":3:", "column 'sport'"),
    ("label,proto\nbad,tcpx\n", ":2:", "column 'proto'"),
    ("label,start_us,end_us\nbad,10,5\n", ":2:", "start_us 10 > end_us 5"),
    ("label,src\n,10.0.0.1\n", ":2:", "'label' is empty"),
    ("label,colour\nx,red\n", ":1:", "unknown columns ['colour']"),
    ("src,dst\n1.1.1.1,2.2.2.2\n", ":1:", "no 'label' column"),
    ("label,src\nx,1.1.1.1,extra\n", ":2:", "3 cells for 2 columns"),
    ("label,bidirectional\nx,maybe\n", ":2:", "column 'bidirectional'"),
    ("# only a comment\n", "", "label file is empty"),
])
def test_bad_label_files_name_file_and_line(tmp_path: Path, text: str, where: str,
                                            what: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(DataError) as err:
        label_from_file(TABLE, path)
    assert str(path) + where in str(err.value)
    assert what in str(err.value)


@st.composite
def rule_lists(draw: st.DrawFn) -> list[LabelRule]:
    """Rules over a tiny address/port space, mixing exact 5-tuples, wildcards and time ranges."""
    addrs, ports = [ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")], [53, 80, 1000]
    rules = []
    for i in range(draw(st.integers(0, 8))):
        maybe = lambda s: draw(st.none() | s)  # noqa: E731
        port = maybe(st.sampled_from(ports).map(lambda p: (p, p)))
        start = maybe(st.integers(0, 600))
        rules.append(LabelRule(
            label=f"r{i}", src=maybe(st.sampled_from(addrs).map(lambda a: (a, 0xFFFFFFFF))),
            dst=maybe(st.sampled_from(addrs).map(lambda a: (a, 0xFFFFFFFF))),
            sport=port, dport=maybe(st.sampled_from(ports).map(lambda p: (p, p))),
            proto=maybe(st.sampled_from([1, 6, 17])), start_us=start,
            end_us=None if start is None else start + draw(st.integers(0, 300)),
            bidirectional=draw(st.booleans())))
    return rules


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
                          st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
                          st.sampled_from([53, 80, 1000]), st.sampled_from([53, 80, 1000]),
                          st.sampled_from([0, 1, 6, 17]), st.integers(0, 900)), max_size=30),
       rule_lists())
def test_indexed_rules_agree_with_first_match_reference(rows: list, rules: list) -> None:
    table = packets(*rows)
    got = apply_rules(table, rules, default="-")["label"].tolist()
    masks = [rule_mask(r, table) for r in rules]
    want = [next((r.label for r, m in zip(rules, masks, strict=True) if m[i]), "-")
            for i in range(len(table))]
    assert got == want
