"""Adaptation: each labelling agent on crafted traffic, agent isolation, combination, the trigger
policy, the replay buffer, the install gate (refusing an incorrect and an unnecessary snapshot),
a retrain that fails verification, bad input, and a replay run end to end."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from homunculus.adapt.agents import (
    AgentPool,
    BeaconAgent,
    DnsAmplificationAgent,
    LabelMap,
    OracleAgent,
    PortScanAgent,
    RuleAgent,
    SynFloodAgent,
    Votes,
    Window,
    combine,
)
from homunculus.adapt.dpi import DpiAgent, PacketStore
from homunculus.adapt.policy import (
    DriftMonitor,
    GateConfig,
    LabelShift,
    LevelWatch,
    ReplayBuffer,
    ResearchWatch,
    TriggerPolicy,
    accuracy_proxy,
    gate,
    label_keys,
    new_keys,
    returning_keys,
)
from homunculus.cli import app
from homunculus.data import attacks
from homunculus.data.labels import flow_key
from homunculus.errors import DataError
from homunculus.ir.telemetry import TelemetryConfig, sample_mask, twin_samples

T0 = attacks.DEFAULT_START_US


def samples_of(table: pd.DataFrame, config: TelemetryConfig | None = None) -> pd.DataFrame:
    """Telemetry records of a packet table (every packet, or sampled as ``config`` says), with
    features = (length, ttl) and class 0."""
    n = len(table)
    mask = np.ones(n, dtype=bool) if config is None else sample_mask(table, np.ones(n, bool),
                                                                     config)
    x = table[["ip_total_len", "ip_ttl"]].to_numpy(np.int64)[mask]
    out = twin_samples(table, mask, x, np.zeros(int(mask.sum()), dtype=np.int64), 0)
    out["_row"] = np.flatnonzero(mask)
    return out


def window(samples: pd.DataFrame, index: int = 0, **context: object) -> Window:
    ts = samples["ts_us"].to_numpy() if len(samples) else np.array([T0])
    return Window(index, int(ts.min()), int(ts.max()) + 1, samples, dict(context))


def background(seed: int = 0, flows: int = 60, seconds: float = 10.0) -> pd.DataFrame:
    return attacks.synthetic_background(seed, flows, int(seconds * 1e6), T0)


def mixed(*parts: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    return attacks.inject(background(seed), list(parts), seed)


# ----------------------------------------------------------------------------- heuristics


def precision_recall(votes: Votes, truth: np.ndarray, kind: str) -> tuple[float, float]:
    hit = votes.covered
    precision = float((truth[hit] == kind).mean()) if hit.any() else 0.0
    recall = float(hit[truth == kind].mean())
    return precision, recall


@pytest.mark.parametrize(("agent", "attack"), [
    (SynFloodAgent(), lambda rng: attacks.syn_flood(rng, T0 + 2_000_000, 3_000_000, 100,
                                                    "10.0.1.10", dst_port=443)),
    (PortScanAgent(), lambda rng: attacks.port_scan(rng, T0 + 1_000_000, "203.0.113.9",
                                                    "10.0.1.11", range(1, 200), 100)),
    (DnsAmplificationAgent(), lambda rng: attacks.dns_amplification(
        rng, T0 + 1_000_000, 4_000_000, 40, "10.0.1.12", ["198.51.100.1", "198.51.100.2"])),
], ids=["syn_flood", "port_scan", "dns_amplification"])
def test_heuristic_finds_its_attack_and_spares_benign(agent, attack) -> None:  # noqa: ANN001
    table = mixed(attack(np.random.default_rng(1)))
    truth = table["label"].to_numpy(object)
    samples = samples_of(table, TelemetryConfig("first_k", first_k=4))
    votes = agent.label(window(samples))
    precision, recall = precision_recall(votes, truth[samples["_row"]], agent.name)
    assert precision >= 0.95 and recall >= 0.8, (precision, recall)
    benign_only = samples_of(background(3), TelemetryConfig("first_k", first_k=4))
    assert not agent.label(window(benign_only)).covered.any(), "no attack, no label"


def test_beacon_agent_needs_history_and_finds_periodic_flows() -> None:
    rng = np.random.default_rng(2)
    beacon = attacks.c2_beacon(rng, T0, 60_000_000, "10.0.1.13", "198.51.100.7", 2_000_000,
                               200_000, 64, label="beacon")
    table = attacks.inject(background(4, flows=200, seconds=60), [beacon], 4)
    samples = samples_of(table, TelemetryConfig("first_k", first_k=4))
    agent = BeaconAgent()
    ts = samples["ts_us"].to_numpy()
    truth = table["label"].to_numpy(object)[samples["_row"]]
    found = []
    for k in range(12):  # 5-second windows: the agent remembers flow starts across them
        part = samples[(ts >= T0 + k * 5_000_000) & (ts < T0 + (k + 1) * 5_000_000)]
        v = agent.label(Window(k, T0 + k * 5_000_000, T0 + (k + 1) * 5_000_000, part))
        found.append((v.covered, truth[part.index.to_numpy()]))
    first_hit = next(k for k, (hit, _) in enumerate(found) if hit.any())
    assert first_hit >= 1, "one window of history is not enough to call something periodic"
    hits = np.concatenate([h for h, _ in found])
    labels = np.concatenate([t for _, t in found])
    assert (labels[hits] == "beacon").all()
    assert hits[labels == "beacon"].mean() > 0.6


def test_rule_agent_reuses_label_files_and_abstains_elsewhere(tmp_path: Path) -> None:
    rules = tmp_path / "rules.csv"
    rules.write_text("label,src,dst,sport,dport,proto,start_us,end_us,bidirectional\n"
                     "# the resolver answers are fine\n"
                     "benign,10.0.0.53,,53,,udp,,,false\n"
                     "scanner,203.0.113.0/24,,,,,,,true\n")
    scan = attacks.port_scan(1, T0 + 1_000_000, "203.0.113.9", "10.0.1.11", range(1, 50), 100)
    table = mixed(scan)
    samples = samples_of(table)
    votes = RuleAgent(rules).label(window(samples))
    labels = votes.labels
    src = samples["ip_src"].to_numpy()
    dns = (src == attacks.ip("10.0.0.53")) & (samples["src_port"].to_numpy() == 53)
    assert dns.any() and (labels[dns] == "benign").all()
    scanned = table["label"].to_numpy()[samples["_row"]] == "port_scan"
    assert (labels[scanned] == "scanner").all()
    rest = ~dns & ~scanned
    assert all(v is None for v in labels[rest])


def test_malformed_rule_list_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("label,src\nattack,10.0.0.300\n")
    with pytest.raises(DataError, match=r"bad.csv:2: column 'src'"):
        RuleAgent(bad)


def test_dpi_agent_labels_what_ndpi_recognises(tmp_path: Path) -> None:
    """A crafted DNS query and answer (real payloads) is recognised; a payload-less SYN is not."""
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether

    query = Ether() / IP(src="10.0.1.20", dst="10.0.0.53") / UDP(sport=40000, dport=53) / DNS(
        rd=1, qd=DNSQR(qname="example.com"))
    answer = Ether() / IP(src="10.0.0.53", dst="10.0.1.20") / UDP(sport=53, dport=40000) / DNS(
        id=query[DNS].id, qr=1, qd=DNSQR(qname="example.com"),
        an=DNSRR(rrname="example.com", rdata="93.184.216.34"))
    syn = Ether() / IP(src="10.0.1.21", dst="198.51.100.3") / TCP(sport=41000, dport=8081,
                                                                   flags="S")
    store = PacketStore()
    rows = []
    for i, pkt in enumerate((query, answer, syn)):
        ip = pkt[IP]
        l4 = pkt[UDP] if UDP in pkt else pkt[TCP]
        key = flow_key(attacks.ip(ip.src), attacks.ip(ip.dst), l4.sport, l4.dport, ip.proto)
        store.add(key, T0 + i * 1000, bytes(pkt))
        rows.append({"ts_us": T0 + i * 1000, "ip_src": attacks.ip(ip.src),
                     "ip_dst": attacks.ip(ip.dst), "src_port": l4.sport, "dst_port": l4.dport,
                     "ip_proto": ip.proto, "ip_total_len": ip.len, "ip_ttl": ip.ttl,
                     "tcp_flags": 2 if TCP in pkt else 0, "cls": 0, "version": 0, "x0": 0})
    votes = DpiAgent(store).label(window(pd.DataFrame(rows)))
    assert list(votes.labels) == ["benign", "benign", None]
    assert votes.confidence[0] > 0.5
    # which nDPI categories count as attacks is the agent's setting (DNS is nDPI's "Network")
    flagged = DpiAgent(store, malicious=frozenset({"Network"})).label(window(pd.DataFrame(rows)))
    assert list(flagged.labels) == ["malware", "malware", None]
    assert "Mining" not in DpiAgent(store).malicious


def test_oracle_reads_ground_truth_only_in_replay() -> None:
    table = mixed()
    samples = samples_of(table)
    truth = table["label"].to_numpy(object)
    votes = OracleAgent().label(window(samples, truth=truth))
    assert (votes.labels == truth[samples["_row"]]).all()
    assert not OracleAgent().label(window(samples)).covered.any()


# ----------------------------------------------------------------------------- isolation


class Crashes:
    name = "crashes"

    def label(self, window: Window) -> Votes:
        raise RuntimeError("boom")


class Hangs:
    """An agent that answers only when released (the test releases it at its end)."""

    name = "hangs"

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()

    def label(self, window: Window) -> Votes:
        self.calls += 1
        self.release.wait(60)
        return Votes.abstain(len(window.samples))


class Fixed:
    def __init__(self, name: str, label: str | None, confidence: float) -> None:
        self.name, self.value, self.confidence = name, label, confidence

    def label(self, window: Window) -> Votes:
        n = len(window.samples)
        return Votes(np.full(n, self.value, dtype=object), np.full(n, self.confidence))


def test_crashing_and_hanging_agents_are_isolated_and_reported() -> None:
    hangs = Hangs()
    pool = AgentPool([Crashes(), hangs, Fixed("ok", "benign", 1.0)], timeout_s=0.3)
    samples = samples_of(mixed().head(20))
    started = time.monotonic()
    first = pool.run(window(samples))
    # timeout 0.3 s; the hung agent never answers while the pool runs, so 30 s tells a pool
    # that waits for it from one that does not, however loaded the machine
    assert time.monotonic() - started < 30, "the loop does not wait for a hung agent"
    assert (first["ok"].labels == "benign").all()
    assert not first["crashes"].covered.any() and not first["hangs"].covered.any()
    pool.run(window(samples, 1))  # the hung call still runs: skipped, not called again
    reports = pool.reports
    crashed = reports["crashes"]
    assert crashed.failures == 2 and "RuntimeError: boom" in str(crashed.last_error)
    assert reports["hangs"].timeouts == 1 and reports["hangs"].skipped == 1 and hangs.calls == 1
    assert reports["ok"].coverage == 1.0
    hangs.release.set()


def test_combination_by_priority_and_by_vote() -> None:
    mapper = LabelMap.for_classes(("benign", "attack"))
    n = 3
    votes = {"a": Votes(np.array(["syn_flood", None, None], dtype=object), np.array([.6, 0, 0])),
             "b": Votes(np.array(["benign", "benign", None], dtype=object), np.array([.5, .9, 0])),
             "c": Votes(np.array(["benign", "port_scan", "unmapped?"], dtype=object),
                        np.array([.5, .2, .7]))}
    labels, _ = combine(votes, ["a", "b", "c"], mapper, "priority")
    assert list(labels) == ["attack", "benign", "attack"]  # any non-benign label is the attack
    labels, conf = combine(votes, ["a", "b", "c"], mapper, "vote")
    assert list(labels[:2]) == ["benign", "benign"]  # 0.5 + 0.5 beats 0.6
    assert conf[1] == pytest.approx(0.9 / 1.1)
    strict = LabelMap(("benign", "web"))
    assert strict("syn_flood") is None and strict("web") == "web"
    assert n == len(labels)


# ----------------------------------------------------------------------------- policy


def test_first_k_rate_samples_flow_heads_then_one_in_n_of_later_packets() -> None:
    """first_k_rate: the first k packets of each flow, then its packets k + N, k + 2N, ...;
    counted per flow (interleaving does not matter) and carried across windows."""
    n_long, n_short = 40, 3
    flows = [(1, 9, 1000, 53)] * n_long + [(2, 9, 2000, 53)] * n_short
    order = np.random.default_rng(0).permutation(len(flows))
    table = pd.DataFrame([flows[i] for i in order],
                         columns=["ip_src", "ip_dst", "src_port", "dst_port"]).assign(
        ip_proto=17, has_tcp=False, has_udp=True)
    config = TelemetryConfig("first_k_rate", first_k=4, one_in=8)
    mask = sample_mask(table, np.ones(len(table), bool), config)
    long_at = np.flatnonzero(table["ip_src"].to_numpy() == 1)  # the long flow's packets, in order
    assert np.flatnonzero(mask[long_at]).tolist() == [0, 1, 2, 3, 11, 19, 27, 35]
    assert mask[table["ip_src"].to_numpy() == 2].all()
    head_only = sample_mask(table, np.ones(len(table), bool), TelemetryConfig("first_k",
                                                                              first_k=4))
    assert (head_only <= mask).all() and mask.sum() == head_only.sum() + 4
    counter: dict = {}
    parts = [sample_mask(table.iloc[lo:hi], np.ones(hi - lo, bool), config, counter)
             for lo, hi in ((0, 10), (10, 25), (25, len(table)))]
    assert (np.concatenate(parts) == mask).all(), "windows sample as one pass"
    assert config.mode == 3 and (config.param, config.every) == (4, 8)
    assert TelemetryConfig("first_k", first_k=4).every == 0
    with pytest.raises(ValueError, match="adapt.one_in"):
        TelemetryConfig("first_k_rate", one_in=0)
    with pytest.raises(ValueError, match="adapt.sampling"):
        TelemetryConfig("sometimes")


def test_set_telemetry_writes_every_and_refuses_first_k_rate_on_older_programs() -> None:
    """hmn_tel_cfg is (mode, param, every) now; a program compiled before first_k_rate has
    (mode, param) only: the other modes still work there, first_k_rate is refused."""
    from homunculus.targets.xdp.snapshot import SnapshotError, set_telemetry

    class FakeMap:
        def __init__(self, value_size: int) -> None:
            self.value_size, self.written = value_size, None

        def update(self, key: int, value: bytes) -> None:
            assert len(value) == self.value_size
            self.written = value

    class Maps:
        def __init__(self, value_size: int) -> None:
            self.cfg = FakeMap(value_size)

        def map(self, name: str) -> FakeMap:
            assert name == "hmn_tel_cfg"
            return self.cfg

    config = TelemetryConfig("first_k_rate", first_k=4, one_in=16)
    new = Maps(12)
    set_telemetry(new, config.mode, config.param, config.every)
    assert np.frombuffer(new.cfg.written, "<u4").tolist() == [3, 4, 16]
    old = Maps(8)
    set_telemetry(old, 2, 4)
    assert np.frombuffer(old.cfg.written, "<u4").tolist() == [2, 4]
    with pytest.raises(SnapshotError, match="first_k_rate"):
        set_telemetry(old, config.mode, config.param, config.every)


@pytest.mark.parametrize(("target", "adapt", "message"), [
    ("xdp", "{sampling: first_k_rate, first_k: 4, one_in: 0}",
     "field 'adapt.one_in': Input should be greater than or equal to 1"),
    ("xdp", "{sampling: first_k_rate, first_k: 0}",
     "field 'adapt.first_k': Input should be greater than or equal to 1"),
    ("xdp", "{sampling: sometimes}", "field 'adapt.sampling': Input should be 'rate', "
                                     "'first_k' or 'first_k_rate'"),
    ("bmv2", "{sampling: first_k_rate}", "field 'adapt.sampling': adapt.sampling: "
                                         "first_k_rate needs per-flow counters"),
    ("tofino", "{sampling: first_k}", "field 'adapt.sampling': adapt.sampling: first_k"),
], ids=["one_in", "first_k", "sampling", "bmv2", "tofino"])
def test_bad_sampling_knobs_name_the_field_and_exit_2(tmp_path: Path, target: str, adapt: str,
                                                      message: str) -> None:
    spec = DRIFT_SPEC.format(target=target, profile="{}").replace(
        "{sampling: first_k, first_k: 4}", adapt)
    (tmp_path / "spec.yaml").write_text(spec)
    code, text = cli("compile", str(tmp_path / "spec.yaml"), "-o", str(tmp_path / "out"),
                     "--no-progress")
    assert code == 2 and message in text, text


def test_trigger_policy() -> None:
    classes = ("benign", "attack")
    enough = {"benign": 50, "attack": 50}
    policy = TriggerPolicy("proxy", threshold=0.8, cooldown=3, min_per_class=20)
    assert policy.decide(0.9, False, None, enough, classes) == (False, "proxy 0.900 >= 0.8, "
                                                                       "no drift")
    fire, why = policy.decide(0.5, False, None, enough, classes)
    assert fire and "proxy 0.500 < 0.8" in why
    fire, why = policy.decide(0.5, False, 2, enough, classes)
    assert not fire and "cool-down" in why
    assert policy.decide(0.5, False, 3, enough, classes)[0]
    fire, why = policy.decide(0.5, False, None, {"benign": 50, "attack": 3}, classes)
    assert not fire and "too few labelled samples of ['attack']" in why
    assert policy.decide(0.95, True, None, enough, classes) == (True, "drift detected")
    assert not TriggerPolicy("proxy", on_drift=False).decide(0.95, True, None, enough,
                                                             classes)[0]
    assert TriggerPolicy("every").decide(1.0, False, 0, enough, classes)[0]
    assert not TriggerPolicy("never").decide(0.0, True, None, enough, classes)[0]
    with pytest.raises(ValueError, match="trigger policy"):
        TriggerPolicy("sometimes")


def test_sag_rule_fires_when_the_proxy_stays_below_the_installed_level() -> None:
    watch = LevelWatch(sag=0.02, patience=2)
    watch.update(0.5)  # the deployed model has no level: the sag rule does not apply
    assert watch.run == 0 and watch.sagging() is None
    watch.installed(0.99)
    watch.update(0.96)  # more than 0.02 below 0.99: one window
    assert watch.run == 1 and watch.sagging() is None
    watch.update(None)  # no proxy: neither counts nor breaks the run
    assert watch.run == 1
    watch.update(0.95)
    why = watch.sagging()
    assert why is not None and "0.950 more than 0.02 below" in why and "0.990 for 2" in why
    watch.update(0.975)  # within 0.02 of the level: the run is broken
    assert watch.run == 0 and watch.sagging() is None
    watch.update(0.9)
    watch.installed(0.9)  # a new model: a new level, a new run
    assert watch.run == 0 and watch.level == 0.9
    off = LevelWatch(sag=0.0)
    off.installed(1.0)
    off.update(0.0)
    off.update(0.0)
    assert off.sagging() is None

    classes = ("benign", "attack")
    enough = {"benign": 50, "attack": 50}
    policy = TriggerPolicy("proxy", threshold=0.8, cooldown=3, sag=0.02, patience=2,
                           cooldown_from="retrain")
    assert policy.decide(0.95, False, None, enough, classes, why) == (True, why)
    fire, reason = policy.decide(0.95, False, 2, enough, classes, why)
    assert not fire and "cool-down (2 of 3 windows since the last retrain)" in reason
    assert policy.decide(0.5, False, None, enough, classes, why)[1] == "proxy 0.500 < 0.8"
    assert not policy.decide(0.95, False, None, enough, classes, None)[0]
    # on by default (the gate's margin); --sag 0 turns it off
    assert TriggerPolicy("proxy").decide(0.95, False, None, enough, classes, why)[0]
    assert not TriggerPolicy("proxy", sag=0).decide(0.95, False, None, enough, classes, why)[0]
    assert TriggerPolicy().sag == GateConfig().margin
    for bad, message in (({"sag": -0.1}, "sag must be in"), ({"sag": 1.0}, "sag must be in"),
                         ({"patience": 0}, "patience must be"),
                         ({"cooldown_from": "ever"}, "cooldown_from must be one of")):
        with pytest.raises(ValueError, match=message):
            TriggerPolicy(**bad)


def test_timed_retrain_reports_the_least_cpu_of_its_runs(monkeypatch) -> None:
    """The bench's ``cpu_repeats``: the first run's result, the least CPU seconds of all."""
    from homunculus.adapt import model
    from homunculus.adapt.loop import LoopConfig

    seconds = iter([0.30, 0.10, 0.20])
    runs: list[tuple] = []

    def fake(*args):  # noqa: ANN002, ANN202
        runs.append(args)
        return model.RetrainResult(True, f"run {len(runs)}", cpu_seconds=next(seconds))

    monkeypatch.setattr(model, "retrain", fake)
    result = model.timed_retrain(3, "recipe", "x", "y", "xv", 7, 0)
    assert (result.note, result.cpu_seconds) == ("run 1", 0.10)
    assert runs == [("recipe", "x", "y", "xv", 7, 0)] * 3
    with pytest.raises(ValueError, match="cpu_repeats"):
        LoopConfig(cpu_repeats=0)


def test_macro_f1_is_scikit_learns() -> None:
    from sklearn.metrics import f1_score

    from homunculus.adapt.policy import macro_f1

    rng = np.random.default_rng(0)
    names = np.array(["benign", "attack", "scan"], dtype=object)
    for _ in range(200):
        n, k = int(rng.integers(1, 40)), int(rng.integers(1, 4))
        truth, pred = names[rng.integers(0, k, n)], names[rng.integers(0, k, n)]
        labels = sorted(set(truth.tolist()) | set(pred.tolist()))
        assert macro_f1(truth, pred) == f1_score(truth, pred, labels=labels, average="macro",
                                                 zero_division=0)
    assert macro_f1(np.array([]), np.array([])) is None


def test_research_is_due_only_when_the_proxy_stays_low_after_a_retrain() -> None:
    watch = ResearchWatch(after=2)
    for low in (True, True, True):  # the offline model: low, but nothing was retrained yet
        watch.update(low)
    assert watch.due() is None
    watch.judged()  # a retrain (installed or refused) did not bring the proxy back
    watch.update(True)
    assert watch.due() is None
    watch.update(None)  # no proxy: neither counts nor ends the stretch
    watch.judged()  # another retrain within the stretch does not restart the count
    watch.update(True)
    why = watch.due()
    assert why is not None and "proxy low for 2 windows after a retrain" in why
    watch.searched()  # the re-search runs: none other in this low stretch
    watch.judged()
    for _ in range(4):
        watch.update(True)
    assert watch.due() is None
    watch.update(False)  # the proxy recovered: the stretch ends
    watch.update(True)
    watch.update(True)
    assert watch.due() is None, "a new stretch: nothing counts before a retrain is judged"
    watch.judged()
    watch.update(True)
    watch.update(True)
    assert watch.due() is not None
    off = ResearchWatch(after=0)
    off.judged()
    for _ in range(5):
        off.update(True)
    assert off.due() is None


def test_label_shift_fires_on_an_agent_label_no_retrain_learned_from() -> None:
    labels = np.array(["attack"] * 3 + ["benign"] * 2 + [None], dtype=object)
    source = np.array(["syn_flood", "syn_flood", "dpi", "dpi", "dpi", None], dtype=object)
    assert label_keys(labels, source) == {"syn_flood:attack": 2, "dpi:attack": 1,
                                          "dpi:benign": 2}
    assert new_keys({"a:attack": 25, "b:attack": 19, "c:attack": 30}, {"c:attack"}, 20) == \
        ["a:attack"]

    watch = LabelShift(minimum=20)
    window = {"syn_flood:attack": 300, "dns_amplification:attack": 40}
    assert watch.shifted(window) is None  # the offline model: no retrain learned anything yet
    # the first retrain drew from a buffer with syn floods; 5 DNS answers are too few to learn
    watch.learned({"syn_flood:attack": 600, "dpi:benign": 900, "dns_amplification:attack": 5})
    why = watch.shifted(window)
    assert why is not None and "dns_amplification:attack (40)" in why
    assert "syn_flood" not in why
    assert watch.shifted({"dns_amplification:attack": 19}) is None  # below the minimum
    watch.learned({"dns_amplification:attack": 45})  # a retrain drew on them: learned
    assert watch.shifted(window) is None
    assert watch.known == {"syn_flood:attack", "dpi:benign", "dns_amplification:attack"}
    off = LabelShift(minimum=0)
    off.learned({"syn_flood:attack": 600})
    assert off.shifted({"beacon:attack": 100}) is None

    # a learned kind that comes back after the recent windows (3) held fewer than 20 of it
    quiet = {"dpi:benign": 80, "dns_amplification:attack": 19}
    assert returning_keys({"a": 20}, [], 20) == []
    assert returning_keys({"a": 20, "b": 30}, [{"a": 19}, {"b": 20}], 20) == ["a"]
    for _ in range(4):
        assert watch.shifted(quiet) is None
        watch.record(quiet)
    assert len(watch.history) == 3
    back = watch.shifted(window)
    assert back is not None and "dns_amplification:attack (40) back after 3 windows" in back
    watch.record(window)
    assert watch.shifted(window) is None  # the window before held 40 of it

    classes = ("benign", "attack")
    enough = {"benign": 50, "attack": 50}
    policy = TriggerPolicy("proxy", threshold=0.8, cooldown=3)
    assert policy.label_shift == policy.min_per_class == 20
    # a shift retrains in the cool-down, with the proxy high and no drift
    assert policy.decide(0.99, False, 1, enough, classes, None, why) == (True, why)
    fire, reason = policy.decide(0.5, False, 1, enough, classes, None, None)
    assert not fire and "cool-down" in reason
    # but not without enough labelled samples of every class, nor when off
    assert not policy.decide(0.99, False, 1, {"benign": 50, "attack": 3}, classes, None,
                             why)[0]
    assert not TriggerPolicy(label_shift=0).decide(0.99, False, None, enough, classes, None,
                                                   why)[0]
    with pytest.raises(ValueError, match="label_shift must be >= 0"):
        TriggerPolicy(label_shift=-1)


def test_accuracy_proxy_per_class() -> None:
    # 200 benign all right; 25 attack, 12 of them called benign
    labels = np.array(["benign"] * 200 + ["attack"] * 25)
    model = np.array(["benign"] * 200 + ["attack"] * 13 + ["benign"] * 12)
    assert accuracy_proxy(labels, model, "macro_f1") == pytest.approx(
        (2 * 0.52 / 1.52 + 2 * (200 / 212) / (1 + 200 / 212)) / 2)
    assert accuracy_proxy(labels, model, "min_recall", 20) == pytest.approx(0.52)
    assert accuracy_proxy(labels, model, "mean_recall", 20) == pytest.approx(0.76)
    # a class with fewer than min_per_class labelled samples does not count
    assert accuracy_proxy(labels, model, "min_recall", 30) == 1.0
    assert accuracy_proxy(labels, model, "min_recall", 300) is None
    with pytest.raises(ValueError, match="accuracy proxy"):
        accuracy_proxy(labels, model, "accuracy")
    with pytest.raises(ValueError, match="accuracy proxy"):
        TriggerPolicy(proxy="accuracy")


def test_min_recall_proxy_fires_on_a_small_class_the_macro_f1_proxy_misses() -> None:
    classes = ("benign", "attack")
    enough = {"benign": 500, "attack": 50}
    labels = np.array(["benign"] * 200 + ["attack"] * 25)
    model = np.array(["benign"] * 200 + ["attack"] * 13 + ["benign"] * 12)
    per_sample = float(np.mean(labels == model))
    assert per_sample > 0.9
    default = TriggerPolicy("proxy")
    assert default.proxy == "macro_f1"
    fire, why = default.decide(default.measure(labels, model), False, None, enough, classes)
    assert not fire and "proxy 0.828 >= 0.8" in why
    per_class = TriggerPolicy("proxy", proxy="min_recall")
    fire, why = per_class.decide(per_class.measure(labels, model), False, None, enough,
                                 classes)
    assert fire and "proxy 0.520 < 0.8" in why


def test_drift_monitor_detects_a_drop_in_agreement() -> None:
    monitor = DriftMonitor("adwin")
    assert not monitor.update(np.ones(300))
    assert monitor.update(np.r_[np.zeros(200)])
    ph = DriftMonitor("page_hinkley")
    assert not ph.update(np.ones(200)) and ph.update(np.zeros(200))


def test_replay_buffer_keeps_recent_windows_and_a_seeded_reservoir() -> None:
    a, b = ReplayBuffer(2, 50, seed=3), ReplayBuffer(2, 50, seed=3)
    for k in range(10):
        x = np.full((40, 2), k)
        y = np.array(["attack" if k % 2 else "benign"] * 40, dtype=object)
        a.add(x, y)
        b.add(x, y)
    xa, ya = a.all()
    assert len(ya) == 2 * 40 + 50 and a.evicted == 8 * 40
    assert set(xa[:80, 0].tolist()) == {8, 9}, "the two most recent windows whole"
    np.testing.assert_array_equal(xa, b.all()[0])
    x_train, y_train, x_held, y_held = a.balanced(30)
    assert sorted(np.unique(y_train, return_counts=True)[1].tolist()) == [22, 22]
    assert len(y_held) == 16


def test_replay_buffer_draws_share_a_class_among_sources_recent_first() -> None:
    """A rare source (a few beacons among many flood samples) keeps its share of the class,
    and each share takes the recent windows' samples before the reservoir's."""
    buf = ReplayBuffer(1, 1000, seed=0)
    attack = np.array(["attack"] * 100, dtype=object)
    buf.add(np.full((100, 1), 1), attack, np.array(["syn_flood"] * 100, dtype=object))
    buf.add(np.full((100, 1), 2), attack, np.array(["syn_flood"] * 100, dtype=object))
    buf.add(np.r_[np.full((90, 1), 3), np.full((10, 1), 4)], attack,
            np.array(["syn_flood"] * 90 + ["beacon"] * 10, dtype=object))
    x_train, _, x_held, _ = buf.balanced(40, holdout=0.0, recent_first=True)
    got = np.r_[x_train[:, 0], x_held[:, 0]]
    assert (got == 4).sum() == 10, "every beacon sample (fewer than its share of 20)"
    assert (got == 3).sum() == 30, "the rest from the flood's recent window, not the reservoir"
    x_train, _, x_held, _ = buf.balanced(40, holdout=0.0, by_source=False, recent_first=False)
    plain = np.r_[x_train[:, 0], x_held[:, 0]]
    assert len(plain) == 40 and (plain == 4).sum() < 10, "a uniform draw: beacons drowned"


def test_gate_refuses_unverified_incorrect_and_unnecessary_snapshots() -> None:
    cfg = GateConfig(margin=0.02, min_fidelity_loss=0.01)
    y = np.array(["benign"] * 50 + ["attack"] * 50, dtype=object)
    perfect, wrong = y.copy(), y[::-1].copy()
    recent_old = np.zeros(200, dtype=np.int64)
    recent_new = recent_old.copy()
    recent_new[:40] = 1
    refused = gate(False, "the data plane disagrees on 3 of 100 rows", y, perfect, perfect,
                   recent_new, recent_old, cfg)
    assert not refused.install and "not verified" in refused.reason
    incorrect = gate(True, "", y, wrong, perfect, recent_new, recent_old, cfg)
    assert not incorrect.install and incorrect.reason.startswith("incorrect")
    unnecessary = gate(True, "", y, perfect, perfect, recent_old, recent_old, cfg)
    assert not unnecessary.install and unnecessary.reason.startswith("unnecessary")
    assert unnecessary.fidelity_loss == 0.0
    ok = gate(True, "", y, perfect, wrong, recent_new, recent_old, cfg)
    assert ok.install and ok.fidelity_loss == pytest.approx(0.2)


# ----------------------------------------------------------------------------- replay


DRIFT_SPEC = """\
name: drift-test
traffic:
  pcaps: [train.pcap]
  labels: {{kind: file, path: train.csv, default: benign}}
  features:
    - {{name: ip_len, kind: header, field: ipv4.total_len, width: 16}}
    - {{name: ttl, kind: header, field: ipv4.ttl, width: 8}}
    - {{name: proto, kind: header, field: ipv4.protocol, width: 8}}
    - {{name: sport, kind: header, field: l4.src_port, width: 16}}
    - {{name: dport, kind: header, field: l4.dst_port, width: 16}}
    - {{name: pkts, kind: pkt_count, width: 8}}
  flow: {{slots: 1024}}
model:
  name: anomaly
  algorithms: [dt]
  verdict: {{kind: drop, drop: [attack]}}
platform:
  target: {target}
  profile: {profile}
search: {{trials: 3, seed: 0}}
adapt: {{sampling: first_k, first_k: 4}}
"""


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture(scope="module")
def drift_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small drifting scenario (real nDPI captures), its training capture and an XDP compile
    of it with telemetry."""
    base = tmp_path_factory.mktemp("drift")
    for args in (("--train", "--pcap", "train.pcap", "--labels", "train.csv"),
                 ("--pcap", "eval.pcap", "--labels", "eval.csv")):
        code, text = cli("scenario", "drift", *[str(base / a) if a.endswith((".pcap", ".csv"))
                                                else a for a in args], "--seconds", "20",
                         "--benign-packets", "1500", "--attack-label", "attack", "--seed", "0")
        assert code == 0, text
    (base / "spec.yaml").write_text(DRIFT_SPEC.format(target="xdp",
                                                      profile="{max_depth: 8, max_nodes: 256}"))
    code, text = cli("compile", str(base / "spec.yaml"), "-o", str(base / "out"),
                     "--no-progress")
    assert code == 0, text
    return base


def test_replay_adapts_and_reports(drift_dir: Path) -> None:
    report = drift_dir / "report"
    code, text = cli("adapt", str(drift_dir / "out"), "--replay", str(drift_dir / "eval.pcap"),
                     "--labels", str(drift_dir / "eval.csv"), "--window", "5", "--report",
                     str(report), "--agents", "syn_flood,port_scan,dns_amplification,beacon,dpi")
    assert code == 0, text
    import json

    decisions = [json.loads(line) for line in (report / "decisions.jsonl").read_text()
                 .splitlines()]
    windows = [d for d in decisions if d["event"] == "window"]
    retrains = [d for d in decisions if d["event"] == "retrain"]
    assert len(windows) >= 10 and retrains, "the drift triggers at least one retrain"
    assert all(r["verified"] for r in retrains if "does not fit" not in r["verification"])
    installed = [r for r in retrains if r["installed"]]
    assert installed, "a retrained model passes the gate"
    assert all(r["gate"]["install"] for r in installed)
    after = [w["f1"] for w in windows if w["version"] > 0 and w["f1"] is not None]
    before_drift = [w["f1"] for w in windows[:3]]
    assert min(before_drift) > 0.9 and np.mean(after) > 0.6
    summary = json.loads((report / "summary.json").read_text())
    agents = {a["name"]: a for a in summary["agents"]}
    assert agents["syn_flood"]["precision"] > 0.95 and agents["dpi"]["coverage"] > 0.1
    page = (report / "report.html").read_text()
    assert "data:image/png;base64," in page and "install" in page


def test_retrain_that_fails_verification_is_never_installed(drift_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """A data plane that disagrees with the retrained model: every retrain is refused."""
    from homunculus.adapt import loop as loop_mod
    from homunculus.adapt.loop import LoopConfig, run_replay
    from homunculus.adapt.model import RetrainResult, load_deployed
    from homunculus.data.labels import label_from_file
    from homunculus.data.pcap import ingest

    class BrokenWorker(loop_mod.RetrainWorker):
        def result(self, wait: bool) -> RetrainResult | None:
            got = super().result(wait)
            if got is None:
                return None
            return RetrainResult(False, "the data plane disagrees with the quantised model on "
                                        "5 of 100 rows", got.program, got.cpu_seconds)

    monkeypatch.setattr(loop_mod, "RetrainWorker", BrokenWorker)
    deployed = load_deployed(drift_dir / "out")
    table, _ = ingest([drift_dir / "eval.pcap"])
    truth = label_from_file(table, drift_dir / "eval.csv", default="benign")["label"]
    events: list[dict] = []
    loop = run_replay(deployed, table, [OracleAgent()],
                      LoopConfig(window_s=5.0, policy=TriggerPolicy(cooldown=1)), events.append,
                      truth=truth.to_numpy(object))
    retrains = [e for e in events if e["event"] == "retrain"]
    assert retrains and not any(e["installed"] for e in retrains)
    assert all("not verified" in e["gate"]["reason"] for e in retrains)
    assert loop.version == 0 and loop.active is deployed.program


def test_installed_level_and_cooldown_from_install_in_the_loop(
        drift_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each install sets the sag rule's level to the gate's held-out macro-F1 of the new
    model; with ``cooldown_from="install"`` a refused retrain starts no cool-down."""
    from homunculus.adapt import loop as loop_mod
    from homunculus.adapt.loop import LoopConfig, run_replay
    from homunculus.adapt.model import RetrainResult, load_deployed
    from homunculus.data.labels import label_from_file
    from homunculus.data.pcap import ingest

    deployed = load_deployed(drift_dir / "out")
    table, _ = ingest([drift_dir / "eval.pcap"])
    truth = label_from_file(table, drift_dir / "eval.csv", default="benign")["label"]
    truth = truth.to_numpy(object)
    events: list[dict] = []
    loop = run_replay(deployed, table, [OracleAgent()],
                      LoopConfig(window_s=5.0, policy=TriggerPolicy(sag=0.02)), events.append,
                      truth=truth)
    installed = [e for e in events if e["event"] == "retrain" and e["installed"]]
    assert installed and loop.level.level == installed[-1]["gate"]["new_metric"]
    assert loop.last_install == installed[-1]["triggered_in"]
    # the label-shift rule learns the agents' labels each retrain drew on
    assert loop.shift.known == {"oracle:attack", "oracle:benign"}
    windows = [e for e in events if e["event"] == "window"]
    assert all(sum(w["labels_by_agent"].values()) == w["labelled"] for w in windows)

    class BrokenWorker(loop_mod.RetrainWorker):
        def result(self, wait: bool) -> RetrainResult | None:
            got = super().result(wait)
            return None if got is None else RetrainResult(False, "refused", got.program,
                                                          got.cpu_seconds)

    monkeypatch.setattr(loop_mod, "RetrainWorker", BrokenWorker)
    gaps = {}
    for start in ("retrain", "install"):
        events = []
        policy = TriggerPolicy(threshold=1.0, cooldown=3, cooldown_from=start)
        run_replay(deployed, table, [OracleAgent()], LoopConfig(window_s=5.0, policy=policy),
                   events.append, truth=truth)
        at = [e["triggered_in"] for e in events if e["event"] == "retrain"]
        assert len(at) >= 2
        gaps[start] = min(np.diff(at))
    assert gaps["retrain"] >= 3 and gaps["install"] == 1


def test_adapt_bad_input_exits_2(drift_dir: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture at all")
    bad_rules = tmp_path / "rules.csv"
    bad_rules.write_text("label,dport\nattack,99999\n")
    out = str(drift_dir / "out")
    checks = [
        (("adapt", out, "--replay", str(junk)), "junk.pcap: not a pcap or pcapng capture"),
        (("adapt", out, "--replay", str(drift_dir / "eval.pcap"), "--agents", "rules",
          "--rules", str(bad_rules)), "rules.csv:2: column 'dport'"),
        (("adapt", out, "--replay", str(drift_dir / "eval.pcap"), "--agents", "psychic"),
         "unknown agent(s) ['psychic']"),
        (("adapt", out, "--replay", str(drift_dir / "eval.pcap"), "--agents", "rules"),
         "needs --rules"),
        (("adapt", out), "give --replay PCAP"),
        (("adapt", out, "--replay", str(drift_dir / "eval.pcap"), "--sag", "1.5"),
         "--sag must be in [0, 1) (0: off), not 1.5"),
        (("adapt", out, "--replay", str(drift_dir / "eval.pcap"), "--patience", "0"),
         "--patience must be at least 1, not 0"),
        (("adapt", out, "--replay", str(drift_dir / "eval.pcap"), "--cooldown-from", "ever"),
         "--cooldown-from must be one of ['retrain', 'install']"),
        (("adapt", out, "--replay", str(drift_dir / "eval.pcap"), "--label-shift", "-1"),
         "--label-shift must be at least 0 (0: off), not -1"),
        (("adapt", out, "--replay", str(drift_dir / "eval.pcap"), "--research-after", "-1"),
         "--research-after must be at least 0 (0: off), not -1"),
        (("adapt", out, "--replay", str(drift_dir / "eval.pcap"), "--research-trials", "0"),
         "--research-trials must be at least 1, not 0"),
        (("adapt", str(tmp_path), "--replay", str(drift_dir / "eval.pcap")),
         "not a compiled output directory"),
    ]
    for args, message in checks:
        code, text = cli(*args)
        assert code == 2 and message in text, (args, text)


def test_replay_on_a_switch_writes_versioned_updates(drift_dir: Path) -> None:
    """A bmv2 compile with versioned tables and digest sampling: replay samples every n-th
    classified packet as the program's counter does, and each install is written as the three
    control planes' versioned update."""
    import json

    spec = DRIFT_SPEC.format(target="bmv2", profile="{}").replace(
        "algorithms: [dt]", "algorithms: [gnb]").replace(
        "{sampling: first_k, first_k: 4}", "{sampling: rate, one_in: 2}")
    (drift_dir / "switch.yaml").write_text(spec)
    out = drift_dir / "out_bmv2"
    code, text = cli("compile", str(drift_dir / "switch.yaml"), "-o", str(out), "--no-progress")
    assert code == 0, text
    p4 = next((out / "p4").glob("*.p4")).read_text()
    assert "register<bit<8>>(1) hmn_version;" in p4 and "digest<hmn_sample_t>" in p4
    assert "meta.model_version: exact;" in p4
    report = drift_dir / "report_bmv2"
    code, text = cli("adapt", str(out), "--replay", str(drift_dir / "eval.pcap"), "--labels",
                     str(drift_dir / "eval.csv"), "--agents", "oracle", "--report", str(report),
                     "--cooldown", "1")
    assert code == 0, text
    windows = [json.loads(line) for line in (report / "decisions.jsonl").read_text()
               .splitlines() if '"window"' in line and '"event": "window"' in line]
    classified = sum(w["classified"] for w in windows)
    assert sum(w["samples"] for w in windows) == classified // 2
    retrains = [json.loads(line) for line in (report / "decisions.jsonl").read_text()
                .splitlines() if '"event": "retrain"' in line]
    assert retrains
    for r in retrains:
        if r["installed"]:
            stem = report / "updates" / f"update-v{r['version']}"
            assert (stem.with_suffix(".p4runtime.json")).is_file()
            assert (stem.with_suffix(".simple_switch_cli.txt")).is_file()
        else:
            assert r["gate"]["install"] is False or "failed" in r.get("install", "")


def test_replay_on_a_switch_installs_a_retrained_tree(drift_dir: Path) -> None:
    """A decision tree on bmv2: retrains are fitted into the compiled tables (the features it
    encodes, its code widths, its entries' headroom), so the gate's verdict decides and a
    retrained tree is installed as a versioned update."""
    import json

    spec = DRIFT_SPEC.format(target="bmv2", profile="{}").replace(
        "{sampling: first_k, first_k: 4}", "{sampling: rate, one_in: 2}")
    (drift_dir / "switch_dt.yaml").write_text(spec)
    out = drift_dir / "out_bmv2_dt"
    code, text = cli("compile", str(drift_dir / "switch_dt.yaml"), "-o", str(out),
                     "--no-progress")
    assert code == 0, text
    report = drift_dir / "report_bmv2_dt"
    code, text = cli("adapt", str(out), "--replay", str(drift_dir / "eval.pcap"), "--labels",
                     str(drift_dir / "eval.csv"), "--agents", "oracle", "--report", str(report),
                     "--cooldown", "1", "--threshold", "0.99")
    assert code == 0, text
    retrains = [json.loads(line) for line in (report / "decisions.jsonl").read_text()
                .splitlines() if '"event": "retrain"' in line]
    assert retrains and not any("failed" in r.get("install", "") for r in retrains), retrains
    installed = [r for r in retrains if r["installed"]]
    assert installed, [r["gate"]["reason"] for r in retrains]
    update = json.loads((report / "updates" / f"update-v{installed[0]['version']}"
                         ).with_suffix(".p4runtime.json").read_text())
    kinds = [u["type"] for u in update["updates"]]
    assert kinds.count("MODIFY") == 1 and kinds[0] == "INSERT" and kinds[-1] == "DELETE"


def drift_training(drift_dir: Path) -> tuple:
    """The deployed recipe of the drift fixture and a class-balanced draw of its training
    capture's features (ground-truth labels), as a retrain would get them."""
    from homunculus.adapt.loop import data_plane_features
    from homunculus.adapt.model import load_deployed
    from homunculus.data.labels import label_from_file
    from homunculus.data.pcap import ingest

    deployed = load_deployed(drift_dir / "out")
    table, _ = ingest([drift_dir / "train.pcap"])
    truth = label_from_file(table, drift_dir / "train.csv", default="benign")["label"]
    values, classified = data_plane_features(deployed, table)
    buffer = ReplayBuffer(seed=0)
    buffer.add(values[classified], truth.to_numpy(object)[classified])
    x, y, _, _ = buffer.balanced(200)
    index = {c: i for i, c in enumerate(deployed.classes)}
    return deployed, x, np.array([index[str(v)] for v in y], dtype=np.int64), y


def test_research_is_seeded_and_fits_the_deployed_capacity(drift_dir: Path) -> None:
    """A re-search: the active hyperparameters first, the same trials and choice for the same
    seed, and every trial fitted to the compiled capacity (a capacity cut to depth 3 here:
    deeper trials are trained shallower, the choice still fits)."""
    from dataclasses import replace

    from homunculus.adapt.model import fit_deployed, research
    from homunculus.targets.xdp.layout import Capacity, CapacityError, check_fits

    deployed, x, y_idx, _ = drift_training(drift_dir)
    recipe = deployed.recipe
    first = research(recipe, x, y_idx, seed=3, trials=4)
    again = research(recipe, x, y_idx, seed=3, trials=4)
    assert first["trials"] == again["trials"] and first["params"] == again["params"]
    assert len(first["trials"]) == 4 and first["trials"][0]["params"] == recipe.params
    assert first["score"] >= first["active_score"] == first["trials"][0]["score"]
    assert first["fit_rows"] + first["validation_rows"] == len(y_idx)

    # labels shuffled (trees grow as deep as allowed) and a capacity cut to depth 3
    noisy = np.random.default_rng(0).permutation(y_idx)
    cap = {**recipe.capacity, "depth": 3}
    tight = replace(recipe, capacity=cap)
    found = research(tight, x, noisy, seed=3, trials=6)
    assert any("to fit the deployed capacity" in t["note"] for t in found["trials"]), found
    _, program, _ = fit_deployed(tight, found["params"], x, noisy, 3)
    check_fits(program, Capacity.from_json(cap))
    with pytest.raises(CapacityError):
        check_fits(fit_deployed(recipe, found["params"], x, noisy, 3)[1], Capacity.from_json(
            {**cap, "depth": 2}))


def test_research_in_the_loop_goes_through_verification_and_the_gate(
        drift_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``research_after``, a retrain triggered while the proxy stays low after a retrain
    re-searches (logged: why, trials, choice, CPU seconds counted in the retrain's) and its
    snapshot is verified and gated like any retrain's: refused when verification fails.
    Without a low proxy, no re-search runs."""
    from homunculus.adapt import loop as loop_mod
    from homunculus.adapt.loop import LoopConfig, run_replay
    from homunculus.adapt.model import RetrainResult, load_deployed
    from homunculus.adapt.report import write_report
    from homunculus.data.labels import label_from_file
    from homunculus.data.pcap import ingest

    deployed = load_deployed(drift_dir / "out")
    table, _ = ingest([drift_dir / "eval.pcap"])
    truth = label_from_file(table, drift_dir / "eval.csv", default="benign")["label"]
    truth = truth.to_numpy(object)

    def replay(policy: TriggerPolicy) -> tuple[loop_mod.AdaptLoop, list[dict]]:
        events: list[dict] = []
        config = LoopConfig(window_s=5.0, policy=policy, research_after=1, research_trials=3)
        return run_replay(deployed, table, [OracleAgent()], config, events.append,
                          truth=truth), events

    # never low (threshold 0, no sag): retrains every window, never a re-search
    loop, events = replay(TriggerPolicy("every", threshold=0.0, sag=0.0))
    assert loop.retrains > 2 and not any("research" in e for e in events)

    # always low (threshold 1): after the first retrain, re-searches
    loop, events = replay(TriggerPolicy(threshold=1.0, cooldown=1, sag=0.0))
    retrains = [e for e in events if e["event"] == "retrain"]
    searched = [e for e in retrains if "research" in e]
    assert searched and "research" not in retrains[0], "not before a retrain was judged"
    for e in searched:
        r = e["research"]
        assert "proxy low for" in r["why"] and len(r["trials"]) == 3 and r["chosen"]
        assert r["kept_active"] == (r["chosen"] == r["trials"][0]["params"])
        assert 0 < r["cpu_seconds"] <= e["cpu_seconds"] and e["verified"] and "gate" in e
    assert loop.cpu_seconds == pytest.approx(sum(e["cpu_seconds"] for e in retrains),
                                             abs=1e-3)
    page = write_report(drift_dir / "report_research", loop.summary(), loop.windows,
                        loop.events, "re-search").read_text()
    assert "re-search" in page and "trials in" in page

    class BrokenWorker(loop_mod.RetrainWorker):
        def result(self, wait: bool) -> RetrainResult | None:
            got = super().result(wait)
            return None if got is None else RetrainResult(
                False, "the data plane disagrees", got.program, got.cpu_seconds,
                params=got.params, search=got.search)

    monkeypatch.setattr(loop_mod, "RetrainWorker", BrokenWorker)
    loop, events = replay(TriggerPolicy(threshold=1.0, cooldown=1, sag=0.0))
    searched = [e for e in events if "research" in e]
    assert searched and not any(e["installed"] for e in searched)
    assert all("not verified" in e["gate"]["reason"] for e in searched)
    assert loop.version == 0 and loop.params == deployed.recipe.params
