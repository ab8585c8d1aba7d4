"""Attack generators, injection and scenarios: seeded, labelled, and shaped as they claim."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from homunculus.data import attacks as A
from homunculus.data.packets import PACKET_COLUMNS

T0 = A.DEFAULT_START_US
SECOND = 1_000_000
VICTIM = A.ip("10.0.1.10")


@pytest.fixture(scope="module")
def background() -> pd.DataFrame:
    return A.synthetic_background(0, 300, 60 * SECOND)


def assert_packet_table(table: pd.DataFrame) -> None:
    assert list(table.columns[: len(PACKET_COLUMNS) + 1]) == A.LABELLED_COLUMNS
    assert {c: str(table[c].dtype) for c in PACKET_COLUMNS} == PACKET_COLUMNS
    assert np.all(np.diff(table["ts_us"].to_numpy()) >= 0)
    assert table["label"].notna().all()


def flood(seed: int = 1, **kwargs: object) -> pd.DataFrame:
    return A.syn_flood(seed, T0, 2 * SECOND, 5000, VICTIM, **kwargs)


def scan(seed: int = 1, kind: str = "syn", open_ports: tuple[int, ...] = (22, 80)) -> pd.DataFrame:
    return A.port_scan(seed, T0, "203.0.113.7", VICTIM, range(1, 201), 1000, kind,
                       open_ports=open_ports)


def amplification(seed: int = 1, **kwargs: object) -> pd.DataFrame:
    reflectors = ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
    return A.dns_amplification(seed, T0, SECOND, 2000, VICTIM, reflectors, **kwargs)


def beacon(seed: int = 1, **kwargs: object) -> pd.DataFrame:
    return A.c2_beacon(seed, T0, 600 * SECOND, VICTIM, "192.0.2.9", 10 * SECOND, 2 * SECOND,
                       80, **kwargs)


GENERATORS = [flood, scan, amplification, beacon,
              lambda seed=1: A.synthetic_background(seed, 100, 20 * SECOND)]


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("make", GENERATORS)
def test_generators_are_seeded(make) -> None:
    first, again, other = make(3), make(3), make(4)
    assert_packet_table(first)
    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other)


@pytest.mark.parametrize("scenario", [A.scenario_anomaly, A.scenario_botnet])
def test_scenarios_are_seeded(background: pd.DataFrame, scenario) -> None:
    first = scenario(background, 0)
    pd.testing.assert_frame_equal(first, scenario(background, 0))
    assert not first.equals(scenario(background, 1))


def test_generator_accepts_a_generator_object() -> None:
    pd.testing.assert_frame_equal(flood(np.random.default_rng(5)), flood(5))


# ----------------------------------------------------------------------------- generators


def test_syn_flood_shape() -> None:
    table = flood()
    assert len(table) == 10_000  # 2 s at 5000 pps
    assert (table["tcp_flags"] == A.SYN).all() and table["has_tcp"].all()
    assert set(table["ip_total_len"]) == {40, 44}
    assert set(table["tcp_data_offset"]) == {5, 6}
    assert (table["ip_dst"] == VICTIM).all() and (table["dst_port"] == 80).all()
    assert table["ip_src"].nunique() == len(table)  # spoofed: one source per packet
    assert table["ip_ttl"].between(32, 255).all() and table["ip_ttl"].nunique() > 150
    assert table["ts_us"].between(T0, T0 + 2 * SECOND).all()
    assert (table["label"] == "syn_flood").all() and (table["file_id"] == -1).all()
    assert (table["wire_len"] == 60).all()  # padded minimum Ethernet frame


def test_syn_flood_rate_is_uniform() -> None:
    per_100ms = np.bincount((flood()["ts_us"] - T0) // 100_000)
    assert per_100ms.mean() == pytest.approx(500) and per_100ms.min() > 400


def test_syn_flood_without_spoofing_has_one_source() -> None:
    assert flood(spoofed_sources=False)["ip_src"].nunique() == 1
    table = flood(spoofed_sources=False, source="192.0.2.1")
    assert (table["ip_src"] == A.ip("192.0.2.1")).all()


def test_syn_port_scan_probes_and_replies() -> None:
    table = scan()
    scanner = A.ip("203.0.113.7")
    probes = table[table["ip_src"] == scanner]
    syn = probes[probes["tcp_flags"] == A.SYN]
    assert sorted(syn["dst_port"]) == list(range(1, 201))
    assert syn["src_port"].nunique() == 1 and (syn["ip_total_len"] == 44).all()
    assert syn["ip_ttl"].between(37, 59).all() and (syn["tcp_window"] == 1024).all()
    replies = table[table["ip_src"] == VICTIM]
    rst = replies[replies["tcp_flags"] == A.RST | A.ACK]
    assert sorted(rst["src_port"]) == sorted(set(range(1, 201)) - {22, 80})
    synack = replies[replies["tcp_flags"] == A.SYN | A.ACK]
    assert sorted(synack["src_port"]) == [22, 80]
    assert (probes["tcp_flags"] == A.RST).sum() == 2  # half-open: scanner resets open ports
    assert len(table) == 200 + 198 + 2 + 2
    assert (table["label"] == "port_scan").all()


def test_port_scan_pacing_and_order() -> None:
    syn = scan()
    syn = syn[syn["tcp_flags"] == A.SYN]
    gaps = np.diff(syn["ts_us"].to_numpy())
    assert np.median(gaps) == pytest.approx(1000, abs=60)  # 1000 probes per second
    assert not np.all(np.diff(syn["dst_port"].to_numpy()) > 0)  # ports shuffled


@pytest.mark.parametrize(("kind", "flags"), [("fin", A.FIN), ("null", 0),
                                             ("xmas", A.FIN | A.PSH | A.URG)])
def test_stealth_scans_answer_closed_ports_only(kind: str, flags: int) -> None:
    table = scan(kind=kind)
    probes = table[table["ip_src"] == A.ip("203.0.113.7")]
    assert len(probes) == 200 and (probes["tcp_flags"] == flags).all()
    assert len(table) - len(probes) == 198


def test_udp_scan_gets_icmp_unreachable() -> None:
    table = scan(kind="udp", open_ports=(53,))
    probes = table[table["has_udp"]]
    assert len(probes) == 200 and (probes["dst_port"] != 0).all()
    icmp = table[table["ip_proto"] == A.ICMP]
    assert len(icmp) == 199 and not icmp["has_tcp"].any() and (icmp["src_port"] == 0).all()


def test_port_scan_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="scan kind"):
        scan(kind="ack")


def test_dns_amplification_shape() -> None:
    table = amplification()
    reflectors = {A.ip(f"198.51.100.{i}") for i in (1, 2, 3)}
    assert len(table) == 2000
    assert table["has_udp"].all() and (table["src_port"] == 53).all()
    assert set(table["ip_src"]) <= reflectors and (table["ip_dst"] == VICTIM).all()
    assert table["ip_total_len"].between(512, 1500).all()
    assert (table["ip_frag_offset"] == 0).all()
    assert (table["udp_len"] == table["ip_total_len"] - 20).all()
    per_reflector = table.groupby("ip_src")["ip_total_len"]
    assert (per_reflector.max() - per_reflector.min() <= 16).all()  # same query, same answer


def test_dns_amplification_with_queries() -> None:
    table = amplification(with_queries=True)
    queries = table[table["dst_port"] == 53]
    assert len(queries) == 2000 and len(table) == 4000
    assert (queries["ip_src"] == VICTIM).all() and queries["ip_total_len"].between(60, 80).all()
    assert (table["label"] == "dns_amplification").all()


def test_dns_amplification_needs_reflectors() -> None:
    with pytest.raises(ValueError, match="reflector"):
        A.dns_amplification(0, T0, SECOND, 10, VICTIM, [])


def test_tcp_beacon_is_periodic() -> None:
    table = beacon()
    syn = table[table["tcp_flags"] == A.SYN]
    assert len(table) == 9 * len(syn)  # one 9-packet flow per check-in
    assert 58 <= len(syn) <= 61  # 600 s at one per 10 s
    gaps = np.diff(syn["ts_us"].to_numpy())
    assert gaps.min() >= 8 * SECOND and gaps.max() <= 12 * SECOND
    assert gaps.mean() == pytest.approx(10 * SECOND, rel=0.03)
    assert gaps.std() == pytest.approx(2 * SECOND / np.sqrt(3), rel=0.3)  # uniform jitter
    assert syn["src_port"].nunique() == len(syn) and (syn["dst_port"] == 80).all()
    request = table[(table["ip_src"] == VICTIM) & (table["tcp_flags"] == A.PSH | A.ACK)]
    assert request["ip_total_len"].between(52 + 80, 52 + 95).all()
    assert (table["label"] == "botnet").all()


def test_udp_beacon() -> None:
    table = beacon(proto="udp", server_port=4000)
    requests = table[table["ip_src"] == VICTIM]
    assert len(table) == 2 * len(requests) and (requests["dst_port"] == 4000).all()
    assert requests["ip_total_len"].between(28 + 80, 28 + 95).all()


def test_beacon_validates_arguments() -> None:
    with pytest.raises(ValueError, match="jitter"):
        A.c2_beacon(0, T0, SECOND, VICTIM, VICTIM + 1, 100, 100, 10)
    with pytest.raises(ValueError, match="proto"):
        beacon(proto="icmp")


def test_synthetic_background_mix(background: pd.DataFrame) -> None:
    assert_packet_table(background)
    assert (background["label"] == "benign").all() and (background["file_id"] == 0).all()
    assert (background["record"] == np.arange(len(background))).all()
    assert background["ts_us"].between(T0, T0 + 60 * SECOND - 1).all()
    tcp, udp = background[background["has_tcp"]], background[background["has_udp"]]
    assert len(tcp) > len(udp) > 0
    syn = (tcp["tcp_flags"] == A.SYN).sum()
    assert 150 < syn < 250 and (tcp["tcp_flags"] == A.SYN | A.ACK).sum() <= syn
    assert (tcp["ip_total_len"] == 1500).sum() > 0  # MSS-sized data
    assert ((udp["dst_port"] == 53) | (udp["src_port"] == 53)).sum() > 0
    assert ((udp["dst_port"] == 123) & (udp["ip_total_len"] == 76)).sum() > 0


def test_public_addresses_avoid_reserved_and_excluded() -> None:
    taken = A.public_addresses(0, 50)
    fresh = A.public_addresses(1, 500, exclude=taken)
    assert len(set(fresh)) == 500 and not set(fresh) & set(taken)
    assert not A.is_reserved(fresh).any()
    assert A.ip_str(A.ip("10.1.2.3")) == "10.1.2.3"


# ----------------------------------------------------------------------------- injection


def test_inject_keeps_background_and_sorts(background: pd.DataFrame) -> None:
    attacks = [flood(), amplification()]
    out = A.inject(background, attacks, seed=0)
    assert_packet_table(out)
    assert list(out.columns) == A.LABELLED_COLUMNS
    assert len(out) == len(background) + sum(len(a) for a in attacks)
    kept = out[out["file_id"] != -1].reset_index(drop=True)
    expected = background.sort_values("ts_us", kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, expected[A.LABELLED_COLUMNS])
    injected = out[out["file_id"] == -1]
    assert (injected["record"] == np.arange(len(injected))).all()
    assert out["label"].value_counts().to_dict() == {
        "benign": len(background), "syn_flood": 10_000, "dns_amplification": 2000}


def test_inject_labels_unlabelled_background_and_keeps_existing_labels(
        background: pd.DataFrame) -> None:
    bare = background.drop(columns="label")
    out = A.inject(bare, [], seed=0)
    assert (out["label"] == "benign").all()
    tagged = background.assign(label=["web" if t else None for t in background["has_tcp"]])
    out = A.inject(tagged, [], seed=0)
    assert set(out["label"]) == {"web", "benign"}


def test_inject_attack_packets_unchanged_apart_from_provenance() -> None:
    attack = flood()
    out = A.inject(A.synthetic_background(2, 50, 2 * SECOND, start_us=T0), [attack], seed=0)
    got = out[out["label"] == "syn_flood"].drop(columns="record").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, attack.drop(columns="record"))


def test_inject_tie_break_is_deterministic_and_stable() -> None:
    a, b = flood(1).assign(file_id=np.int32(0)), flood(2)
    b = b.assign(ts_us=a["ts_us"].to_numpy())  # every timestamp tied
    one, two = A.inject(a, [b], seed=7), A.inject(a, [b], seed=7)
    pd.testing.assert_frame_equal(one, two)
    for part in (one[one["file_id"] != -1], one[one["file_id"] == -1]):
        assert np.all(np.diff(part["ts_us"].to_numpy()) >= 0)
    injected = one[one["file_id"] == -1].reset_index(drop=True)
    assert (injected["ip_src"].to_numpy() == b["ip_src"].to_numpy()).all()


def test_nested_injection_continues_record_numbers(background: pd.DataFrame) -> None:
    once = A.inject(background, [flood()], seed=0)
    twice = A.inject(once, [amplification()], seed=0)
    injected = twice[twice["file_id"] == -1]
    assert sorted(injected["record"]) == list(range(12_000))
    dns = injected[injected["label"] == "dns_amplification"]
    assert dns["record"].min() == 10_000


def test_inject_requires_labels_and_columns(background: pd.DataFrame) -> None:
    with pytest.raises(KeyError, match="label"):
        A.inject(background, [flood().drop(columns="label")], seed=0)
    with pytest.raises(KeyError, match="lacks"):
        A.inject(background.drop(columns="ip_ttl"), [], seed=0)


# ----------------------------------------------------------------------------- scenarios


def test_scenario_anomaly(background: pd.DataFrame) -> None:
    out = A.scenario_anomaly(background, 0)
    counts = out["label"].value_counts().to_dict()
    assert set(counts) == set(A.ANOMALY_LABELS)
    assert counts["benign"] == len(background)
    assert counts["syn_flood"] == 539  # max(200, 8% of 6746)
    assert counts["dns_amplification"] == 337  # max(150, 5%)
    assert (out["is_attack"] == (out["label"] != "benign")).all()
    assert_packet_table(out)
    hosts = set(background["ip_src"]) | set(background["ip_dst"])
    syn = out[out["label"] == "syn_flood"]
    assert set(syn["ip_dst"]) <= hosts  # victims are background hosts
    scan_probes = out[(out["label"] == "port_scan") & (out["tcp_flags"] == A.SYN)]
    assert scan_probes["ip_src"].nunique() == 1 and not set(scan_probes["ip_src"]) & hosts
    assert len(scan_probes) == 337  # ports 1..clip(5% of background, 100, 1024)
    dns = out[out["label"] == "dns_amplification"]
    assert set(dns["ip_dst"]) <= hosts and not set(dns["ip_src"]) & hosts
    span = (background["ts_us"].min(), background["ts_us"].max())
    assert syn["ts_us"].between(*span).all() and dns["ts_us"].between(*span).all()


def test_scenario_botnet(background: pd.DataFrame) -> None:
    out = A.scenario_botnet(background, 0)
    assert set(out["label"]) == {"benign", "botnet"}
    assert (out["label"] == "benign").sum() == len(background)
    bot = out[out["label"] == "botnet"]
    hosts = set(background["ip_src"]) | set(background["ip_dst"])
    from_bot = A.is_reserved(bot["ip_src"].to_numpy())  # bots are private background clients
    starts = bot[from_bot & ((bot["tcp_flags"] == A.SYN) | bot["has_udp"])]
    pairs = starts.groupby(["ip_src", "ip_dst"])["ts_us"]
    assert pairs.ngroups == 4  # four beacons
    assert set(starts["ip_src"]) <= hosts and not set(starts["ip_dst"]) & hosts
    span = background["ts_us"].max() - background["ts_us"].min()
    periods = sorted(pairs.apply(lambda t: np.diff(t.to_numpy()).mean()) / span)
    expected = sorted(p for p, *_ in A.BOTNET_BEACONS)
    assert periods == pytest.approx(expected, rel=0.1)


def test_scenarios_need_a_time_span(background: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="span"):
        A.scenario_botnet(background.head(1), 0)


# ----------------------------------------------------------------------------- pcap


@pytest.mark.parametrize("scenario", [A.scenario_anomaly, A.scenario_botnet])
def test_pcap_round_trip(tmp_path, background: pd.DataFrame, scenario) -> None:
    pcap = pytest.importorskip("homunculus.data.pcap")
    table = A.inject(scenario(background, 0).head(3000), [scan(kind="udp")], seed=0)
    assert (table["ip_proto"] == A.ICMP).any()
    path = tmp_path / "scenario.pcap"
    pcap.write_pcap(table, path)
    read, _ = pcap.ingest([path])
    columns = [c for c in PACKET_COLUMNS if c not in ("file_id", "record")]
    pd.testing.assert_frame_equal(read[columns].reset_index(drop=True),
                                  table[columns].reset_index(drop=True))
