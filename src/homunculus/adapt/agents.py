"""Labelling agents behind one small interface, and how their votes combine (Caravan).

An agent looks at one window of telemetry samples (ir/telemetry.py: flow key, a few header
fields, features, the model's class) and returns, per sample, a label or an abstention, with a
confidence in [0, 1]. Agents speak their own vocabulary (``syn_flood``, ``benign``, an nDPI
class...); :class:`LabelMap` maps it onto the deployed model's classes.

Agents are isolated (:func:`run_agents`): each runs on a thread with a deadline; one that raises
or misses the deadline abstains for the window, is reported, and is not called again until its
previous call has finished. The loop never waits for more than the deadline.

Combination: ``priority`` takes, per sample, the label of the first agent (in the given order)
that did not abstain; ``vote`` adds the confidences per label and takes the largest (ties to the
earlier agent's label).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from homunculus.errors import DataError

BENIGN = "benign"


@dataclass(frozen=True)
class Votes:
    """Per sample: a label (None: abstain) and a confidence."""

    labels: np.ndarray  # object array of str | None
    confidence: np.ndarray  # float

    @classmethod
    def abstain(cls, n: int) -> Votes:
        return cls(np.full(n, None, dtype=object), np.zeros(n))

    @property
    def covered(self) -> np.ndarray:
        return np.array([v is not None for v in self.labels], dtype=bool)


@dataclass
class Window:
    """One window of telemetry: its samples and its time span (microseconds)."""

    index: int
    start_us: int
    end_us: int
    samples: pd.DataFrame
    context: dict[str, Any] = field(default_factory=dict)  # replay: what an oracle may read


class Agent(Protocol):
    """A label source: ``label`` a window's samples (label or abstain, with a confidence)."""

    name: str

    def label(self, window: Window) -> Votes: ...


# ----------------------------------------------------------------------------- label maps


@dataclass(frozen=True)
class LabelMap:
    """Agent labels -> the model's classes. A label that is a class maps to itself; ``extra``
    maps others explicitly; with ``attack_class`` set (a model with one non-benign class), every
    other non-benign label maps to it. Anything else is unmapped (an abstention)."""

    classes: tuple[str, ...]
    extra: dict[str, str] = field(default_factory=dict)
    attack_class: str | None = None

    @classmethod
    def for_classes(cls, classes: Sequence[str], extra: dict[str, str] | None = None) -> LabelMap:
        others = [c for c in classes if c != BENIGN]
        attack = others[0] if BENIGN in classes and len(others) == 1 else None
        return cls(tuple(classes), dict(extra or {}), attack)

    def __call__(self, label: str | None) -> str | None:
        if label is None:
            return None
        if label in self.classes:
            return label
        if label in self.extra:
            mapped = self.extra[label]
            return mapped if mapped in self.classes else None
        if self.attack_class is not None and label != BENIGN:
            return self.attack_class
        return None


# ----------------------------------------------------------------------------- helpers


def flow_columns(samples: pd.DataFrame) -> dict[str, np.ndarray]:
    return {c: samples[c].to_numpy(np.int64) for c in
            ("ip_src", "ip_dst", "src_port", "dst_port", "ip_proto", "ip_total_len",
             "tcp_flags", "ts_us")}


def _votes(n: int, hit: np.ndarray, label: str, confidence: float | np.ndarray) -> Votes:
    labels = np.full(n, None, dtype=object)
    labels[hit] = label
    conf = np.zeros(n)
    conf[hit] = np.broadcast_to(np.asarray(confidence, dtype=float), (n,))[hit]
    return Votes(labels, conf)


def _pair_key(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.astype(np.uint64) << np.uint64(32)) | b.astype(np.uint64)


TCP, UDP = 6, 17
SYN, ACK, RST = 0x02, 0x10, 0x04


# ----------------------------------------------------------------------------- heuristics


@dataclass
class SynFloodAgent:
    """SYN flood: many pure SYNs (no ACK) to one destination and port, from many sources,
    where pure SYNs are most of what is sent there (no handshakes complete)."""

    name: str = "syn_flood"
    min_syns: int = 30
    min_sources: int = 10
    min_syn_share: float = 0.7

    def label(self, window: Window) -> Votes:
        c = flow_columns(window.samples)
        n = len(window.samples)
        to = _pair_key(c["ip_dst"], c["dst_port"])
        tcp = c["ip_proto"] == TCP
        syn = tcp & ((c["tcp_flags"] & (SYN | ACK)) == SYN)
        hit = np.zeros(n, dtype=bool)
        conf = np.zeros(n)
        if not syn.any():
            return Votes.abstain(n)
        frame = pd.DataFrame({"to": to[syn], "src": c["ip_src"][syn]})
        stats = frame.groupby("to")["src"].agg(["size", "nunique"])
        totals = pd.Series(to[tcp]).value_counts()
        for key, row in stats[stats["size"] >= self.min_syns].iterrows():
            count = int(row["size"])
            if row["nunique"] < self.min_sources or count < self.min_syn_share * totals[key]:
                continue
            syns = syn & (to == key)
            hit |= syns
            conf[syns] = min(1.0, 0.6 + 0.4 * count / (4 * self.min_syns))
        return _votes(n, hit, self.name, conf)


@dataclass
class PortScanAgent:
    """Port scan: one source probing many destination ports of one host with small packets from
    a few source ports; the probes and the target's answers to them."""

    name: str = "port_scan"
    min_ports: int = 20
    max_len: int = 64
    max_source_ports: int = 3

    def label(self, window: Window) -> Votes:
        c = flow_columns(window.samples)
        n = len(window.samples)
        l4 = np.isin(c["ip_proto"], (TCP, UDP))
        pair = _pair_key(c["ip_src"], c["ip_dst"])
        small = c["ip_total_len"] <= self.max_len
        hit = np.zeros(n, dtype=bool)
        conf = np.zeros(n)
        probe_rows = l4 & small
        if not probe_rows.any():
            return Votes.abstain(n)
        frame = pd.DataFrame({"pair": pair[probe_rows], "port": c["dst_port"][probe_rows],
                              "sport": c["src_port"][probe_rows]})
        stats = frame.groupby("pair").agg(ports=("port", "nunique"), sports=("sport", "nunique"))
        chosen = stats[(stats["ports"] >= self.min_ports)
                       & (stats["sports"] <= self.max_source_ports)]
        for key, ports in chosen["ports"].items():
            probes = probe_rows & (pair == key)
            src, dst = int(key) >> 32, int(key) & 0xFFFFFFFF
            back = (c["ip_src"] == dst) & (c["ip_dst"] == src) & (
                np.isin(c["src_port"], c["dst_port"][probes]) | (c["ip_proto"] == 1))
            both = probes | back
            hit |= both
            conf[both] = min(1.0, 0.6 + 0.4 * int(ports) / (5 * self.min_ports))
        return _votes(n, hit, self.name, conf)


@dataclass
class DnsAmplificationAgent:
    """DNS amplification: large UDP answers from port 53 to one host, from several servers,
    that the host did not ask for (far fewer queries to port 53 from it than answers)."""

    name: str = "dns_amplification"
    min_answers: int = 20
    min_len: int = 512
    min_reflectors: int = 2
    max_query_share: float = 0.2

    def label(self, window: Window) -> Votes:
        c = flow_columns(window.samples)
        n = len(window.samples)
        udp = c["ip_proto"] == UDP
        big = udp & (c["src_port"] == 53) & (c["ip_total_len"] >= self.min_len)
        hit = np.zeros(n, dtype=bool)
        conf = np.zeros(n)
        for victim in np.unique(c["ip_dst"][big]):
            answers = big & (c["ip_dst"] == victim)
            count = int(answers.sum())
            queries = int((udp & (c["ip_src"] == victim) & (c["dst_port"] == 53)).sum())
            if (count >= self.min_answers
                    and len(np.unique(c["ip_src"][answers])) >= self.min_reflectors
                    and queries <= self.max_query_share * count):
                hit |= answers
                conf[answers] = min(1.0, 0.6 + 0.4 * count / (4 * self.min_answers))
        return _votes(n, hit, self.name, conf)


@dataclass
class BeaconAgent:
    """Periodic beacons: a host opening new, short flows to the same server and port at a
    regular interval. Remembers flow starts across windows (``horizon_us``): a pair with at
    least ``min_events`` starts whose gaps vary little (coefficient of variation at most
    ``max_cv``) is beaconing, and its samples (both directions) are labelled."""

    name: str = "beacon"
    min_events: int = 5
    max_cv: float = 0.35
    min_period_us: int = 500_000
    horizon_us: int = 600_000_000
    max_packets: int = 12  # a beacon flow is short
    _starts: dict[tuple[int, int, int, int], list[int]] = field(default_factory=dict)
    _seen: dict[tuple[int, ...], int] = field(default_factory=dict)

    def label(self, window: Window) -> Votes:
        c = flow_columns(window.samples)
        n = len(window.samples)
        keys = list(zip(c["ip_src"].tolist(), c["ip_dst"].tolist(), c["src_port"].tolist(),
                        c["dst_port"].tolist(), c["ip_proto"].tolist(), strict=True))
        for key, ts in zip(keys, c["ts_us"].tolist(), strict=True):
            if key in self._seen or (key[1], key[0], key[3], key[2], key[4]) in self._seen:
                self._seen[key] = self._seen.get(key, 0) + 1
                continue
            self._seen[key] = 1
            pair = (key[0], key[1], key[3], key[4])
            self._starts.setdefault(pair, []).append(ts)
        self._forget(window.end_us)
        periodic = {pair for pair, starts in self._starts.items() if self._periodic(starts)}
        hit = np.zeros(n, dtype=bool)
        for i, key in enumerate(keys):
            if (key[0], key[1], key[3], key[4]) in periodic or (
                    key[1], key[0], key[2], key[4]) in periodic:
                hit[i] = self._seen.get(key, 0) <= self.max_packets
        return _votes(n, hit, self.name, 0.8)

    def _periodic(self, starts: list[int]) -> bool:
        if len(starts) < self.min_events:
            return False
        gaps = np.diff(np.sort(np.asarray(starts, dtype=np.int64)))
        mean = float(gaps.mean())
        return mean >= self.min_period_us and float(gaps.std()) <= self.max_cv * mean

    def _forget(self, now_us: int) -> None:
        old = now_us - self.horizon_us
        for pair in list(self._starts):
            kept = [t for t in self._starts[pair] if t >= old]
            if kept:
                self._starts[pair] = kept
            else:
                del self._starts[pair]
        if len(self._seen) > 200_000:  # a bound on memory: forget the oldest half
            for key in list(self._seen)[:100_000]:
                del self._seen[key]


# ----------------------------------------------------------------------------- rules, oracle


def _as_packet_like(samples: pd.DataFrame) -> pd.DataFrame:
    proto = samples["ip_proto"].to_numpy(np.int64)
    return samples.assign(has_ipv4=True, has_tcp=proto == TCP, has_udp=proto == UDP)


@dataclass
class RuleAgent:
    """An operator's rule list (a label CSV, data/labels.py: 5-tuple, CIDR, port and time
    rules; the first match wins). Samples no rule matches are abstentions."""

    path: Path
    name: str = "rules"
    confidence: float = 1.0
    rules: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        from homunculus.data.labels import read_label_file

        self.rules = read_label_file(Path(self.path))  # DataError names the file and line

    def label(self, window: Window) -> Votes:
        from homunculus.data.labels import apply_rules

        n = len(window.samples)
        if n == 0:
            return Votes.abstain(0)
        none = "\x00abstain"
        out = apply_rules(_as_packet_like(window.samples), self.rules, default=none)
        labels = out["label"].to_numpy(object)
        hit = labels != none
        result = np.full(n, None, dtype=object)
        result[hit] = labels[hit]
        return Votes(result, np.where(hit, self.confidence, 0.0))


@dataclass
class OracleAgent:
    """Ground truth, for evaluation only: replay gives each sample's packet row (``_row``) and
    the window's context the capture's labels (``truth``)."""

    name: str = "oracle"

    def label(self, window: Window) -> Votes:
        truth = window.context.get("truth")
        if truth is None or "_row" not in window.samples.columns:
            return Votes.abstain(len(window.samples))
        labels = np.asarray(truth, dtype=object)[window.samples["_row"].to_numpy(np.int64)]
        return Votes(labels.astype(object), np.ones(len(labels)))


# ----------------------------------------------------------------------------- isolation


@dataclass
class AgentReport:
    """What an agent did over the run: calls, failures and timeouts, samples it labelled
    (coverage) and, against ground truth where known, how many of those were right."""

    name: str
    calls: int = 0
    failures: int = 0
    timeouts: int = 0
    skipped: int = 0  # calls skipped while a timed-out call still ran
    samples: int = 0
    labelled: int = 0
    judged: int = 0  # labelled samples whose ground truth is known
    correct: int = 0
    last_error: str | None = None

    @property
    def coverage(self) -> float:
        return self.labelled / self.samples if self.samples else 0.0

    @property
    def precision(self) -> float | None:
        return self.correct / self.judged if self.judged else None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "calls": self.calls, "failures": self.failures,
                "timeouts": self.timeouts, "skipped": self.skipped, "samples": self.samples,
                "labelled": self.labelled, "coverage": round(self.coverage, 4),
                "precision": None if self.precision is None else round(self.precision, 4),
                "last_error": self.last_error}


@dataclass
class _Call:
    thread: threading.Thread
    result: list[Votes] = field(default_factory=list)
    error: list[BaseException] = field(default_factory=list)


class AgentPool:
    """Runs agents with a deadline each, isolating the ones that crash or hang."""

    def __init__(self, agents: Sequence[Agent], timeout_s: float = 10.0,
                 log: Callable[[str], None] | None = None) -> None:
        names = [a.name for a in agents]
        if len(set(names)) != len(names):
            raise DataError(f"agent names must be distinct: {names}")
        self.agents = list(agents)
        self.timeout_s = timeout_s
        self.reports = {a.name: AgentReport(a.name) for a in agents}
        self._running: dict[str, _Call] = {}
        self._log = log or (lambda _m: None)

    def run(self, window: Window) -> dict[str, Votes]:
        """Every agent's votes on the window (an abstention for any that failed)."""
        n = len(window.samples)
        calls: dict[str, _Call] = {}
        for agent in self.agents:
            report = self.reports[agent.name]
            busy = self._running.get(agent.name)
            if busy is not None and busy.thread.is_alive():
                report.skipped += 1
                continue
            self._running.pop(agent.name, None)
            calls[agent.name] = self._start(agent, window)
            report.calls += 1
        deadline = time.monotonic() + self.timeout_s
        out: dict[str, Votes] = {}
        for agent in self.agents:
            call = calls.get(agent.name)
            report = self.reports[agent.name]
            votes = Votes.abstain(n)
            if call is not None:
                call.thread.join(max(0.0, deadline - time.monotonic()))
                if call.thread.is_alive():
                    report.timeouts += 1
                    report.last_error = f"no answer within {self.timeout_s:g} s"
                    self._running[agent.name] = call
                    self._log(f"agent {agent.name}: timed out on window {window.index}")
                elif call.error:
                    report.failures += 1
                    report.last_error = f"{type(call.error[0]).__name__}: {call.error[0]}"
                    self._log(f"agent {agent.name}: failed on window {window.index}: "
                              f"{report.last_error}")
                elif call.result and _valid(call.result[0], n):
                    votes = call.result[0]
                else:
                    report.failures += 1
                    report.last_error = "returned votes of the wrong shape"
            report.samples += n
            report.labelled += int(votes.covered.sum())
            out[agent.name] = votes
        return out

    @staticmethod
    def _start(agent: Agent, window: Window) -> _Call:
        call: _Call = _Call(threading.Thread(daemon=True, name=f"agent-{agent.name}"))

        def work() -> None:
            try:
                call.result.append(agent.label(window))
            except BaseException as exc:  # isolated: reported by run()
                call.error.append(exc)

        call.thread = threading.Thread(target=work, daemon=True, name=f"agent-{agent.name}")
        call.thread.start()
        return call

    def judge(self, votes: dict[str, Votes], truth: np.ndarray, mapper: LabelMap) -> None:
        """Count each agent's labels that are right (after mapping) against ground truth."""
        for name, v in votes.items():
            report = self.reports[name]
            for label, true in zip(v.labels, truth, strict=True):
                if label is None or true is None:
                    continue
                report.judged += 1
                report.correct += int(mapper(label) == mapper(str(true)))


def _valid(votes: Any, n: int) -> bool:
    return (isinstance(votes, Votes) and len(votes.labels) == n
            and len(votes.confidence) == n)


# ----------------------------------------------------------------------------- combination


COMBINERS = ("priority", "vote")


def combine(votes: dict[str, Votes], order: Sequence[str], mapper: LabelMap,
            how: str = "priority") -> tuple[np.ndarray, np.ndarray]:
    """Per sample, the combined class label (None: no agent labelled it in a model class) and
    its confidence."""
    if how not in COMBINERS:
        raise ValueError(f"combination must be one of {list(COMBINERS)}, not {how!r}")
    n = len(next(iter(votes.values())).labels) if votes else 0
    labels = np.full(n, None, dtype=object)
    conf = np.zeros(n)
    if how == "priority":
        for name in order:
            v = votes.get(name)
            if v is None:
                continue
            for i in np.flatnonzero(labels == None):  # noqa: E711  (object array)
                mapped = mapper(v.labels[i])
                if mapped is not None:
                    labels[i], conf[i] = mapped, float(v.confidence[i])
        return labels, conf
    for i in range(n):
        score: dict[str, float] = {}
        for name in order:
            v = votes.get(name)
            mapped = None if v is None else mapper(v.labels[i])
            if mapped is not None:
                score[mapped] = score.get(mapped, 0.0) + float(v.confidence[i])
        if score:
            best = max(score, key=lambda k: score[k])  # first maximum: the earliest agent's
            labels[i], conf[i] = best, score[best] / sum(score.values())
    return labels, conf


def sources(votes: dict[str, Votes], order: Sequence[str], mapper: LabelMap,
            labels: np.ndarray) -> np.ndarray:
    """Per sample, the name of the first agent (in ``order``) whose label, mapped, is the
    combined label (None where nothing was labelled): the evidence a label rests on."""
    out = np.full(len(labels), None, dtype=object)
    for name in order:
        v = votes.get(name)
        if v is None:
            continue
        for i in np.flatnonzero(out == None):  # noqa: E711  (object array)
            if labels[i] is not None and mapper(v.labels[i]) == labels[i]:
                out[i] = name
    return out


HEURISTICS: dict[str, Callable[[], Agent]] = {
    "syn_flood": SynFloodAgent, "port_scan": PortScanAgent,
    "dns_amplification": DnsAmplificationAgent, "beacon": BeaconAgent,
}
