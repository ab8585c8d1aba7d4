"""Seeded, labelled attack traffic and its injection into background traffic.

Every generator takes a numpy ``Generator`` (or an int seed) and returns a packet table in the
format of :mod:`homunculus.data.packets` plus a ``label`` column (str), sorted by ``ts_us``. The
same seed gives the same table. Generated rows carry ``file_id = -1`` (no capture file) and a
running ``record``; :func:`inject` merges them into background traffic by timestamp.

Generators: :func:`synthetic_background` (benign web/DNS/NTP mix, *synthetic*), :func:`syn_flood`,
:func:`port_scan`, :func:`dns_amplification`, :func:`c2_beacon`. Scenario builders for the
reference apps: :func:`scenario_anomaly` and :func:`scenario_botnet`. See ``docs/attacks.md``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from homunculus.data.packets import PACKET_COLUMNS, as_packet_table

Address = int | str
Rng = np.random.Generator | int

TCP, UDP, ICMP = 6, 17, 1
FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
SCAN_FLAGS = {"syn": SYN, "fin": FIN, "null": 0, "xmas": FIN | PSH | URG}
SCAN_KINDS = (*SCAN_FLAGS, "udp")

BENIGN = "benign"
INJECTED_FILE_ID = -1
DEFAULT_START_US = 1_700_000_000_000_000  # 2023-11-14, an arbitrary fixed epoch
ETH_HEADER, ETH_MIN_FRAME = 14, 60
LABELLED_COLUMNS = [*PACKET_COLUMNS, "label"]

_ROW_FIELDS = ("ts_us", "ip_src", "ip_dst", "ip_proto", "src_port", "dst_port", "ip_total_len",
               "ip_ttl", "tcp_flags", "tcp_window", "tcp_data_offset")
# (network, prefix length) ranges never drawn as "public" addresses
_RESERVED = [(0x00000000, 8), (0x0A000000, 8), (0x64400000, 10), (0x7F000000, 8),
             (0xA9FE0000, 16), (0xAC100000, 12), (0xC0A80000, 16)]
_PUBLIC_LO, _PUBLIC_HI = 0x01000000, 0xE0000000  # 1.0.0.0 .. 223.255.255.255


def ip(address: Address) -> int:
    """An IPv4 address as the uint32 the packet table stores ("10.0.0.1" or an int)."""
    return int(ipaddress.IPv4Address(address))


def ip_str(address: int) -> str:
    """Dotted-quad form of a packet-table address."""
    return str(ipaddress.IPv4Address(int(address)))


def _rng(rng: Rng) -> np.random.Generator:
    return np.random.default_rng(rng)


# ----------------------------------------------------------------------------- table building


@dataclass
class _Rows:
    """Accumulates packets column-wise; ``table`` fills the derived columns and sorts by time."""

    rng: np.random.Generator
    parts: dict[str, list[np.ndarray]] = field(
        default_factory=lambda: {name: [] for name in _ROW_FIELDS})

    def add(self, ts: np.ndarray | int, src: np.ndarray | int, dst: np.ndarray | int, proto: int,
            sport: np.ndarray | int, dport: np.ndarray | int, length: np.ndarray | int,
            ttl: np.ndarray | int, flags: np.ndarray | int = 0, window: np.ndarray | int = 0,
            doff: int = 0) -> None:
        ts = np.atleast_1d(np.asarray(ts, dtype=np.int64))
        values = (ts, src, dst, proto, sport, dport, length, ttl, flags, window, doff)
        for name, value in zip(_ROW_FIELDS, values, strict=True):
            self.parts[name].append(np.broadcast_to(np.asarray(value, dtype=np.int64), ts.shape))

    def table(self, label: str) -> pd.DataFrame:
        cols = {name: np.concatenate(v) if v else np.zeros(0, np.int64)
                for name, v in self.parts.items()}
        order = np.argsort(cols["ts_us"], kind="stable")
        cols = {name: v[order] for name, v in cols.items()}
        return _finish(cols, self.rng, label)


def _finish(cols: dict[str, np.ndarray], rng: np.random.Generator, label: str) -> pd.DataFrame:
    n = len(cols["ts_us"])
    proto, total = cols["ip_proto"], cols["ip_total_len"]
    is_tcp, is_udp = proto == TCP, proto == UDP
    for name in ("tcp_flags", "tcp_window", "tcp_data_offset"):
        cols[name] = np.where(is_tcp, cols[name], 0)
    cols["src_port"] = np.where(is_tcp | is_udp, cols["src_port"], 0)
    cols["dst_port"] = np.where(is_tcp | is_udp, cols["dst_port"], 0)
    cols.update(
        file_id=np.full(n, INJECTED_FILE_ID), record=np.arange(n),
        wire_len=np.maximum(total + ETH_HEADER, ETH_MIN_FRAME), eth_type=np.full(n, 0x0800),
        has_ipv4=np.ones(n, bool), ip_diffserv=np.zeros(n), ip_id=rng.integers(0, 65536, n),
        ip_frag_offset=np.zeros(n), ip_ihl=np.full(n, 5), has_tcp=is_tcp, has_udp=is_udp,
        udp_len=np.where(is_udp, total - 20, 0),
    )
    table = as_packet_table(cols)
    table["label"] = pd.Series([label] * n, dtype=str)
    return table


def public_addresses(rng: Rng, n: int, exclude: Sequence[int] | np.ndarray = ()) -> np.ndarray:
    """``n`` distinct random unicast public IPv4 addresses (uint32) not in ``exclude``."""
    rng = _rng(rng)
    taken = np.asarray(exclude, dtype=np.uint32)
    found = np.zeros(0, np.uint32)
    while len(found) < n:
        cand = rng.integers(_PUBLIC_LO, _PUBLIC_HI, 2 * (n - len(found)) + 8).astype(np.uint32)
        ok = ~is_reserved(cand) & ~np.isin(cand, taken) & ~np.isin(cand, found)
        cand = pd.unique(cand[ok])  # keeps first occurrences, in draw order
        found = np.concatenate([found, cand[: n - len(found)]])
    return found


def is_reserved(addresses: np.ndarray) -> np.ndarray:
    """Mask of addresses in private, loopback, link-local, CGNAT or 0/8 ranges."""
    mask = np.zeros(len(addresses), bool)
    for net, plen in _RESERVED:
        mask |= (addresses >> np.uint32(32 - plen)) == np.uint32(net >> (32 - plen))
    return mask


def _uniform_times(rng: np.random.Generator, start_us: int, duration_us: int,
                   rate_pps: float) -> np.ndarray:
    """``round(duration * rate)`` sorted arrival times, uniform in the window (Poisson-like)."""
    if duration_us <= 0 or rate_pps <= 0:
        raise ValueError("duration_us and rate_pps must be positive")
    n = int(round(duration_us * rate_pps / 1e6))
    return start_us + np.sort(rng.integers(0, duration_us, n))


def _ephemeral(rng: np.random.Generator, n: int | None = None) -> np.ndarray | int:
    ports = rng.integers(32768, 61000, n)
    return ports if n is not None else int(ports)


# ----------------------------------------------------------------------------- background


@dataclass(frozen=True)
class _Hosts:
    clients: np.ndarray
    client_ttl: np.ndarray
    servers: np.ndarray
    server_ttl: np.ndarray
    ntp: np.ndarray
    resolver: int = ip("10.0.0.53")


def _hosts(rng: np.random.Generator, n_flows: int) -> _Hosts:
    n_clients, n_servers = max(2, n_flows // 25), max(3, n_flows // 8)
    clients = ip("10.0.1.10") + np.arange(n_clients)
    publics = public_addresses(rng, n_servers + 4)
    return _Hosts(
        clients=clients, client_ttl=rng.choice([64, 128], n_clients) - 1,
        servers=publics[:n_servers],
        server_ttl=rng.choice([64, 64, 128], n_servers) - rng.integers(6, 24, n_servers),
        ntp=publics[n_servers:],
    )


def synthetic_background(rng: Rng, n_flows: int, duration_us: int,
                         start_us: int = DEFAULT_START_US) -> pd.DataFrame:
    """SYNTHETIC benign traffic seen at a site gateway: web TCP, DNS and NTP flows.

    70% web flows (handshake, request, MSS-sized data in congestion windows with client ACKs,
    FIN close) from internal clients 10.0.1.x to Zipf-popular public servers on 443/80; 22% DNS
    (query + response, sometimes A and AAAA) to resolver 10.0.0.53; 8% NTP (76-byte packets).
    Flows start uniformly in the window; packets after ``start_us + duration_us`` are dropped.
    Labelled ``benign``; ``file_id`` 0 (it stands in for one capture), ``record`` in time order.
    Not a real capture: use it for tests and examples only.
    """
    rng = _rng(rng)
    hosts = _hosts(rng, n_flows)
    rows = _Rows(rng)
    popularity = 1.0 / np.arange(1, len(hosts.servers) + 1)
    starts = start_us + np.sort(rng.integers(0, duration_us, n_flows))
    kinds = rng.choice(3, n_flows, p=[0.70, 0.22, 0.08])
    for t, kind in zip(starts, kinds, strict=True):
        c = int(rng.integers(len(hosts.clients)))
        client, cttl = int(hosts.clients[c]), int(hosts.client_ttl[c])
        if kind == 0:
            s = int(rng.choice(len(hosts.servers), p=popularity / popularity.sum()))
            _web_flow(rows, rng, int(t), (client, cttl), (int(hosts.servers[s]),
                                                          int(hosts.server_ttl[s])))
        elif kind == 1:
            _dns_flow(rows, rng, int(t), (client, cttl), hosts.resolver)
        else:
            _ntp_flow(rows, rng, int(t), (client, cttl), int(rng.choice(hosts.ntp)))
    table = rows.table(BENIGN)
    table = table[table["ts_us"] < start_us + duration_us].reset_index(drop=True)
    return table.assign(file_id=np.int32(0), record=np.arange(len(table), dtype=np.int64))


def _web_flow(rows: _Rows, rng: np.random.Generator, t: int, client: tuple[int, int],
              server: tuple[int, int]) -> None:
    (c, cttl), (s, sttl) = client, server
    sport, dport = _ephemeral(rng), int(rng.choice([443, 443, 443, 80]))
    rtt = int(np.clip(rng.lognormal(np.log(20_000), 0.8), 1_000, 300_000))
    cwin, swin = int(rng.choice([64240, 65535, 29200])), int(rng.choice([65160, 28960]))

    def out(ts, length, flags, doff=8):  # client -> server
        rows.add(ts, c, s, TCP, sport, dport, length, cttl, flags, cwin, doff)

    def back(ts, length, flags, doff=8):  # server -> client
        rows.add(ts, s, c, TCP, dport, sport, length, sttl, flags, swin, doff)

    out(t, 60, SYN, 10)
    back(t + rtt, 60, SYN | ACK, 10)
    t = t + rtt + int(rng.integers(5, 60))
    out(t, 52, ACK)
    out(t + 1, 52 + int(rng.integers(200, 900)), PSH | ACK)
    data_ts, data_len = _web_data(rng, t + rtt, rtt)
    back(data_ts, data_len, np.where(np.arange(len(data_ts)) == len(data_ts) - 1,
                                     PSH | ACK, ACK))
    acks = data_ts[1::2] + rng.integers(5, 50, len(data_ts) // 2)
    out(acks, 52, ACK)
    t = int(data_ts[-1]) + int(rng.integers(100, 50_000))
    out(t, 52, FIN | ACK)
    back(t + rtt, 52, FIN | ACK)
    out(t + rtt + int(rng.integers(5, 60)), 52, ACK)


def _web_data(rng: np.random.Generator, t: int, rtt: int) -> tuple[np.ndarray, np.ndarray]:
    """Server data: MSS-sized segments (last one shorter) sent in doubling windows per RTT."""
    n = int(np.clip(rng.lognormal(np.log(8), 1.3), 1, 400))
    times, cwnd, sent = [], 10, 0
    while sent < n:
        burst = min(cwnd, n - sent)
        times.append(t + np.cumsum(rng.integers(10, 120, burst)))
        sent, cwnd, t = sent + burst, cwnd * 2, t + rtt
    lengths = np.full(n, 52 + 1448)
    lengths[-1] = 52 + int(rng.integers(1, 1449))
    return np.concatenate(times), lengths


def _dns_flow(rows: _Rows, rng: np.random.Generator, t: int, client: tuple[int, int],
              resolver: int) -> None:
    c, cttl = client
    for q in range(2 if rng.random() < 0.5 else 1):  # A, sometimes also AAAA
        sport, qlen = _ephemeral(rng), int(rng.integers(55, 90))
        tq = t + q * int(rng.integers(20, 400))
        rows.add(tq, c, resolver, UDP, sport, 53, qlen, cttl)
        rows.add(tq + int(rng.integers(300, 30_000)), resolver, c, UDP, 53, sport,
                 qlen + int(rng.integers(16, 200)), 63)


def _ntp_flow(rows: _Rows, rng: np.random.Generator, t: int, client: tuple[int, int],
              server: int) -> None:
    c, cttl = client
    sport = 123 if rng.random() < 0.5 else _ephemeral(rng)
    rows.add(t, c, server, UDP, sport, 123, 76, cttl)
    rows.add(t + int(rng.integers(5_000, 60_000)), server, c, UDP, 123, sport, 76,
             int(rng.choice([64, 128, 255])) - int(rng.integers(6, 24)))


# ----------------------------------------------------------------------------- attacks


def syn_flood(rng: Rng, start_us: int, duration_us: int, rate_pps: float, victim: Address,
              spoofed_sources: bool = True, *, dst_port: int = 80, source: Address | None = None,
              label: str = "syn_flood") -> pd.DataFrame:
    """TCP SYNs (flags 0x02) at ``rate_pps`` to ``victim:dst_port`` for ``duration_us``.

    Sources are uniformly random public addresses when ``spoofed_sources`` (one flow per packet),
    otherwise one address (``source`` or a random one). Random source ports, IP total length
    40 (no options) or 44 (MSS option), TTL uniform in 32..255 (unlike OS defaults minus hops),
    windows from a tool-like set {512, 1024, 2048, 4096}. No replies are generated.
    """
    rng = _rng(rng)
    ts = _uniform_times(rng, start_us, duration_us, rate_pps)
    n = len(ts)
    if spoofed_sources:
        src = public_addresses(rng, n) if n else np.zeros(0, np.uint32)
    else:
        src = ip(source) if source is not None else int(public_addresses(rng, 1)[0])
    with_mss = rng.random(n) < 0.5
    rows = _Rows(rng)
    rows.add(ts, src, ip(victim), TCP, rng.integers(1024, 65536, n), dst_port,
             np.where(with_mss, 44, 40), rng.integers(32, 256, n), SYN,
             rng.choice([512, 1024, 2048, 4096], n), np.where(with_mss, 6, 5))
    return rows.table(label)


def port_scan(rng: Rng, start_us: int, scanner: Address, target: Address, ports: Sequence[int],
              rate_pps: float, kind: str = "syn", *, open_ports: Sequence[int] = (),
              label: str = "port_scan") -> pd.DataFrame:
    """One scanner probing ``ports`` of ``target`` (shuffled, evenly paced at ``rate_pps``).

    ``kind``: "syn" (0x02, 44 bytes), "fin" (0x01), "null" (0x00), "xmas" (FIN|PSH|URG), all
    with nmap-like window 1024 and TTL 37..59, a single source port; or "udp" (empty datagram).
    Replies after one RTT, labelled as scan too: closed TCP ports answer RST|ACK (0x14, 40 bytes);
    open ports answer SYN|ACK (syn scan, followed by the scanner's RST) or nothing; closed UDP
    ports answer ICMP port-unreachable (proto 1, 56 bytes).
    """
    if kind not in SCAN_KINDS:
        raise ValueError(f"unknown scan kind {kind!r}; expected one of {SCAN_KINDS}")
    rng = _rng(rng)
    ports = rng.permutation(np.asarray(ports, dtype=np.int64))
    n = len(ports)
    ts = start_us + (np.arange(n) * 1e6 / rate_pps).astype(np.int64) + rng.integers(0, 50, n)
    rtt = int(rng.integers(200, 20_000))
    reply_ts = ts + rtt + rng.integers(0, 200, n)
    s, d, sport = ip(scanner), ip(target), int(_ephemeral(rng))
    ttl, tttl = rng.integers(37, 60, n), 64 - int(rng.integers(1, 20))
    is_open = np.isin(ports, np.asarray(open_ports, dtype=np.int64))
    rows = _Rows(rng)
    if kind == "udp":
        rows.add(ts, s, d, UDP, sport, ports, 28, ttl)
        rows.add(reply_ts[~is_open], d, s, ICMP, 0, 0, 56, tttl)
        return rows.table(label)
    rows.add(ts, s, d, TCP, sport, ports, 44 if kind == "syn" else 40, ttl, SCAN_FLAGS[kind],
             1024, 6 if kind == "syn" else 5)
    rows.add(reply_ts[~is_open], d, s, TCP, ports[~is_open], sport, 40, tttl, RST | ACK, 0, 5)
    if kind == "syn":
        rows.add(reply_ts[is_open], d, s, TCP, ports[is_open], sport, 44, tttl, SYN | ACK,
                 65160, 6)
        rows.add(reply_ts[is_open] + 30, s, d, TCP, sport, ports[is_open], 40, ttl[is_open],
                 RST, 0, 5)
    return rows.table(label)


def dns_amplification(rng: Rng, start_us: int, duration_us: int, rate_pps: float,
                      victim: Address, reflectors: Sequence[Address], *,
                      with_queries: bool = False,
                      label: str = "dns_amplification") -> pd.DataFrame:
    """Large DNS responses (UDP source port 53) from ``reflectors`` to ``victim``.

    ``rate_pps`` responses in total, reflectors chosen uniformly per packet. Each reflector has
    its own response size (uniform 600..1500 bytes, +-8 per packet, never above 1500 so the
    fragment offset stays 0) and its own TTL. Destination ports are random (the spoofed query
    ports). With ``with_queries`` each response is preceded, one RTT earlier, by the small
    spoofed query (victim -> reflector:53, 60..80 bytes), as seen near the reflectors.
    """
    rng = _rng(rng)
    refl = np.array([ip(r) for r in reflectors], dtype=np.int64)
    if len(refl) == 0:
        raise ValueError("dns_amplification needs at least one reflector")
    ts = _uniform_times(rng, start_us, duration_us, rate_pps)
    n = len(ts)
    base_len = rng.integers(600, 1501, len(refl))
    base_ttl = rng.choice([64, 128, 255], len(refl)) - rng.integers(5, 25, len(refl))
    which = rng.integers(0, len(refl), n)
    length = np.minimum(base_len[which] + rng.integers(-8, 9, n), 1500)
    vport = rng.integers(1024, 65536, n)
    rows = _Rows(rng)
    rows.add(ts, refl[which], ip(victim), UDP, 53, vport, length, base_ttl[which])
    if with_queries:
        rows.add(ts - rng.integers(1_000, 40_000, n), ip(victim), refl[which], UDP, vport, 53,
                 rng.integers(60, 81, n), rng.integers(32, 256, n))
    return rows.table(label)


def c2_beacon(rng: Rng, start_us: int, duration_us: int, bot: Address, server: Address,
              period_us: int, jitter_us: int, size: int, *, proto: str = "tcp",
              server_port: int | None = None, reply_size: int = 48,
              label: str = "botnet") -> pd.DataFrame:
    """Periodic small command-and-control check-ins from ``bot`` to ``server``.

    Beacon k starts at the previous one plus ``period_us + U(-jitter_us, jitter_us)`` (first at a
    random phase within one period), as long as it starts inside the window. A TCP beacon is a
    9-packet flow (handshake; request of ``size``+0..15 payload bytes; reply of ``reply_size``
    +0..15; ACK; FIN exchange) from a new ephemeral port, default server port 80; a UDP beacon is
    request + reply, default server port random high (P2P-like).
    """
    if proto not in ("tcp", "udp"):
        raise ValueError(f"proto must be 'tcp' or 'udp', not {proto!r}")
    if not 0 <= jitter_us < period_us:
        raise ValueError("need 0 <= jitter_us < period_us")
    rng = _rng(rng)
    starts = _beacon_starts(rng, start_us, duration_us, period_us, jitter_us)
    n = len(starts)
    if server_port is None:
        server_port = 80 if proto == "tcp" else int(rng.integers(1024, 65536))
    flow = _BeaconFlow(ip(bot), ip(server), server_port, rng.integers(32768, 61000, n),
                       int(rng.integers(5_000, 120_000)), 64 - int(rng.integers(6, 24)))
    rows = _Rows(rng)
    req = size + rng.integers(0, 16, n)
    rep = reply_size + rng.integers(0, 16, n)
    rtt = flow.rtt + rng.integers(0, max(flow.rtt // 10, 1), n)
    if proto == "udp":
        flow.udp(rows, starts, rtt, req, rep)
    else:
        flow.tcp(rows, starts, rtt, req, rep)
    return rows.table(label)


def _beacon_starts(rng: np.random.Generator, start_us: int, duration_us: int, period_us: int,
                   jitter_us: int) -> np.ndarray:
    n_max = duration_us // max(period_us - jitter_us, 1) + 2
    gaps = period_us + rng.integers(-jitter_us, jitter_us + 1, n_max)
    starts = start_us + int(rng.integers(0, period_us)) + np.concatenate([[0], np.cumsum(gaps)])
    return starts[starts < start_us + duration_us]


@dataclass(frozen=True)
class _BeaconFlow:
    bot: int
    server: int
    port: int
    bot_ports: np.ndarray
    rtt: int
    server_ttl: int
    bot_ttl: int = 127  # a Windows host, one hop before the capture point

    def tcp(self, rows: _Rows, t: np.ndarray, rtt: np.ndarray, req: np.ndarray,
            rep: np.ndarray) -> None:
        def out(ts, length, flags, doff=8):
            rows.add(ts, self.bot, self.server, TCP, self.bot_ports, self.port, length,
                     self.bot_ttl, flags, 64240, doff)

        def back(ts, length, flags, doff=8):
            rows.add(ts, self.server, self.bot, TCP, self.port, self.bot_ports, length,
                     self.server_ttl, flags, 65160, doff)

        out(t, 60, SYN, 10)
        back(t + rtt, 60, SYN | ACK, 10)
        out(t + rtt + 20, 52, ACK)
        out(t + rtt + 40, 52 + req, PSH | ACK)
        back(t + 2 * rtt + 40, 52 + rep, PSH | ACK)
        out(t + 2 * rtt + 60, 52, ACK)
        out(t + 2 * rtt + 80, 52, FIN | ACK)
        back(t + 3 * rtt + 80, 52, FIN | ACK)
        out(t + 3 * rtt + 100, 52, ACK)

    def udp(self, rows: _Rows, t: np.ndarray, rtt: np.ndarray, req: np.ndarray,
            rep: np.ndarray) -> None:
        rows.add(t, self.bot, self.server, UDP, self.bot_ports, self.port, 28 + req, self.bot_ttl)
        rows.add(t + rtt, self.server, self.bot, UDP, self.port, self.bot_ports, 28 + rep,
                 self.server_ttl)


# ----------------------------------------------------------------------------- injection


def inject(background: pd.DataFrame, attacks: Sequence[pd.DataFrame],
           seed: int = 0) -> pd.DataFrame:
    """Merge labelled ``attacks`` into ``background`` by timestamp.

    Background rows keep every packet column unchanged (label ``benign`` unless they already have
    a non-null ``label``) and their relative order after a stable sort by ``ts_us``. Injected rows
    get ``file_id = -1`` and ``record`` numbered in output order, continuing after any earlier
    injected rows. Packets with equal timestamps stay in their source's order; between sources,
    ties are ordered by a permutation drawn from ``seed`` (so the result is fully determined).
    The output has the packet columns plus ``label``; other columns are dropped.
    """
    parts = [_with_label(background, BENIGN)]
    parts += [_with_label(a, None) for a in attacks]
    parts = [p.iloc[np.argsort(p["ts_us"].to_numpy(), kind="stable")] for p in parts]
    rank = np.random.default_rng(seed).permutation(len(parts))
    source = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
    position = np.concatenate([np.arange(len(p)) for p in parts])
    merged = pd.concat(parts, ignore_index=True)
    order = np.lexsort((position, rank[source], merged["ts_us"].to_numpy()))
    merged = merged.iloc[order].reset_index(drop=True)
    new = source[order] > 0
    old_injected = (merged["file_id"].to_numpy() == INJECTED_FILE_ID) & ~new
    first = int(merged.loc[old_injected, "record"].max()) + 1 if old_injected.any() else 0
    merged.loc[new, "file_id"] = INJECTED_FILE_ID
    merged.loc[new, "record"] = first + np.arange(int(new.sum()))
    return merged.astype(PACKET_COLUMNS)


def _with_label(table: pd.DataFrame, default: str | None) -> pd.DataFrame:
    missing = sorted(set(PACKET_COLUMNS) - set(table.columns))
    if missing:
        raise KeyError(f"packet table lacks columns {missing}")
    out = table[list(PACKET_COLUMNS)].astype(PACKET_COLUMNS)
    if "label" in table.columns:
        labels = table["label"]
    elif default is None:
        raise KeyError("attack tables need a 'label' column")
    else:
        labels = pd.Series(default, index=table.index)
    if default is not None:
        labels = labels.where(labels.notna(), default)
    elif labels.isna().any():
        raise ValueError("attack tables need a label on every row")
    return out.assign(label=labels.astype(str))


# ----------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class _Span:
    t0: int
    span: int
    n: int

    @classmethod
    def of(cls, background: pd.DataFrame) -> _Span:
        ts = background["ts_us"].to_numpy()
        if len(ts) < 2 or ts.max() <= ts.min():
            raise ValueError("background needs at least two packets spanning some time")
        return cls(int(ts.min()), int(ts.max() - ts.min()), len(ts))

    def at(self, fraction: float) -> int:
        return self.t0 + int(fraction * self.span)

    def window(self, rng: np.random.Generator, length: float) -> tuple[int, int]:
        """A random window of ``length`` times the span, inside the span."""
        return self.at(rng.uniform(0.02, 0.98 - length)), max(int(length * self.span), 1)


def _addresses(background: pd.DataFrame) -> np.ndarray:
    return np.union1d(background["ip_src"].to_numpy(), background["ip_dst"].to_numpy())


def _pick(rng: np.random.Generator, candidates: np.ndarray, fallback: np.ndarray,
          n: int = 1) -> np.ndarray:
    pool = np.unique(candidates) if len(candidates) else np.unique(fallback)
    return rng.choice(pool, n, replace=len(pool) < n)


def _tcp_servers(background: pd.DataFrame) -> np.ndarray:
    syn_only = background["has_tcp"] & (background["tcp_flags"] & (SYN | ACK) == SYN)
    return background.loc[syn_only, "ip_dst"].to_numpy()


def _tcp_clients(background: pd.DataFrame) -> np.ndarray:
    syn_only = background["has_tcp"] & (background["tcp_flags"] & (SYN | ACK) == SYN)
    return background.loc[syn_only, "ip_src"].to_numpy()


def _private_sources(background: pd.DataFrame) -> np.ndarray:
    sources = background["ip_src"].to_numpy(np.uint32)
    return sources[is_reserved(sources)]


ANOMALY_LABELS = (BENIGN, "syn_flood", "port_scan", "dns_amplification")


def scenario_anomaly(background: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Anomaly-detection mix: labels benign, syn_flood, port_scan, dns_amplification.

    Adds a bool ``is_attack`` column (label != benign). Attack volumes scale with the background:
    SYN flood of max(200, 8% of background packets) over 10% of the span to a TCP server seen in
    the background (spoofed sources); SYN scan of ports 1..N, N = clip(5% of background packets,
    100, 1024), of another background server over 5% of the span from a new address (ports the
    target serves in the background are open); DNS amplification of max(150, 5% of background
    packets) over 15% of the span from 8 new reflectors to a background client (a private
    source address when there is one). Windows are random inside the background's time span.
    """
    rng = np.random.default_rng(seed)
    span = _Span.of(background)
    hosts = _addresses(background)
    servers = _tcp_servers(background)
    flood_victim, scan_target = (int(a) for a in _pick(rng, servers, hosts, 2))
    attackers = public_addresses(rng, 9, exclude=hosts)
    flood = _scaled(syn_flood, rng, span, 0.10, max(200, int(0.08 * span.n)),
                    victim=flood_victim)
    dns = _scaled(dns_amplification, rng, span, 0.15, max(150, int(0.05 * span.n)),
                  victim=int(_pick(rng, _private_sources(background), hosts)[0]),
                  reflectors=attackers[1:].tolist())
    served = background.loc[background["ip_src"] == scan_target, "src_port"].to_numpy()
    start, length = span.window(rng, 0.05)
    n_ports = int(np.clip(0.05 * span.n, 100, 1024))
    open_ports = np.unique(served[served <= n_ports]).tolist()
    scan = port_scan(rng, start, int(attackers[0]), scan_target, range(1, n_ports + 1),
                     n_ports * 1e6 / length, open_ports=open_ports)
    out = inject(background, [flood, scan, dns], seed)
    return out.assign(is_attack=out["label"] != BENIGN)


def _scaled(generator: Callable[..., pd.DataFrame], rng: np.random.Generator, span: _Span,
            length: float, count: int, **kwargs: object) -> pd.DataFrame:
    """Run a rate-based generator in a random window sized to emit about ``count`` packets."""
    start, duration = span.window(rng, length)
    return generator(rng, start, duration, count * 1e6 / duration, **kwargs)


# (period as a fraction of the span, jitter as a fraction of the period, proto, request size)
BOTNET_BEACONS = ((1 / 60, 0.10, "tcp", 64), (1 / 25, 0.25, "udp", 120),
                  (1 / 12, 0.05, "tcp", 200), (1 / 40, 0.40, "tcp", 96))


def scenario_botnet(background: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Botnet-detection mix: labels benign and botnet.

    Four C&C beacons (BOTNET_BEACONS: periods 1/60, 1/25, 1/12, 1/40 of the span with 10..40%
    jitter, three TCP/HTTP-like and one UDP/P2P-like) from three infected hosts that also carry
    benign background traffic (TCP clients of the background; the fourth beacon reuses the
    first bot) to three C&C servers absent from the background (the third beacon reuses the
    second server). Beacons run over the whole span.
    """
    rng = np.random.default_rng(seed)
    span = _Span.of(background)
    bots = _pick(rng, _tcp_clients(background), background["ip_src"].to_numpy(), 3)
    servers = public_addresses(rng, 3, exclude=_addresses(background))
    pairs = ((bots[0], servers[0]), (bots[1], servers[1]), (bots[2], servers[1]),
             (bots[0], servers[2]))
    beacons = []
    for (bot, server), (period, jitter, proto, size) in zip(pairs, BOTNET_BEACONS, strict=True):
        period_us = max(int(period * span.span), 2)
        beacons.append(c2_beacon(rng, span.t0, span.span, int(bot), int(server), period_us,
                                 int(jitter * period_us), size, proto=proto))
    return inject(background, beacons, seed)
