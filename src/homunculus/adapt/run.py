"""``homunculus adapt``: options checked, agents built, the live or replay loop run, the report
written."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from homunculus.adapt.agents import COMBINERS, HEURISTICS, Agent, OracleAgent, RuleAgent
from homunculus.adapt.loop import LoopConfig, run_live, run_replay, write_jsonl
from homunculus.adapt.model import load_deployed
from homunculus.adapt.policy import (
    COOLDOWN_FROM,
    DETECTORS,
    PROXIES,
    GateConfig,
    TriggerPolicy,
)
from homunculus.adapt.report import research_cell, write_report
from homunculus.errors import DataError, SpecError

AGENT_NAMES = (*HEURISTICS, "rules", "dpi", "oracle")


@dataclass(frozen=True)
class AdaptOptions:
    out_dir: Path
    replay: Path | None = None
    labels: Path | None = None
    iface: str | None = None
    netns: str | None = None
    name: str | None = None
    agents: str = "syn_flood,port_scan,dns_amplification,beacon,dpi"
    rules: Path | None = None
    combine: str = "priority"
    window: float = 5.0
    policy: str = "proxy"
    threshold: float = 0.8
    cooldown: int = 3
    min_per_class: int = 20
    margin: float = 0.02
    min_fidelity: float = 0.01
    detector: str = "adwin"
    duration: float | None = None
    windows: int | None = None
    max_installs: int | None = None
    report: Path | None = None
    seed: int = 0
    proxy: str = "macro_f1"
    sag: float = 0.02
    patience: int = 2
    cooldown_from: str = "install"
    label_shift: int = 20
    research_after: int = 1
    research_trials: int = 4


def check_options(o: AdaptOptions) -> list[str]:
    """The agent names, after every option is checked (SpecError naming the option)."""
    names = [a.strip() for a in o.agents.split(",") if a.strip()]
    bad = [a for a in names if a not in AGENT_NAMES]
    if bad or not names:
        raise SpecError(f"--agents: unknown agent(s) {bad}; known: {list(AGENT_NAMES)}")
    if len(set(names)) != len(names):
        raise SpecError("--agents: an agent is named twice")
    if "rules" in names and o.rules is None:
        raise SpecError("--agents rules needs --rules CSV (the operator's rule list)")
    if o.combine not in COMBINERS:
        raise SpecError(f"--combine must be one of {list(COMBINERS)}")
    if o.proxy not in PROXIES:
        raise SpecError(f"--proxy must be one of {list(PROXIES)}")
    if not 0 <= o.sag < 1:
        raise SpecError(f"--sag must be in [0, 1) (0: off), not {o.sag:g}")
    if o.patience < 1:
        raise SpecError(f"--patience must be at least 1, not {o.patience}")
    if o.cooldown_from not in COOLDOWN_FROM:
        raise SpecError(f"--cooldown-from must be one of {list(COOLDOWN_FROM)}")
    if o.label_shift < 0:
        raise SpecError(f"--label-shift must be at least 0 (0: off), not {o.label_shift}")
    if o.research_after < 0:
        raise SpecError(f"--research-after must be at least 0 (0: off), not {o.research_after}")
    if o.research_trials < 1:
        raise SpecError(f"--research-trials must be at least 1, not {o.research_trials}")
    if o.detector not in DETECTORS:
        raise SpecError(f"--detector must be one of {list(DETECTORS)}")
    if o.window <= 0:
        raise SpecError("--window must be positive")
    if (o.replay is None) == (o.iface is None and o.name is None):
        raise SpecError("give --replay PCAP (simulated time) or --iface/--name (a live XDP "
                        "deployment), not both")
    if o.replay is not None and not o.replay.is_file():
        raise SpecError("no such capture", file=str(o.replay))
    if o.labels is not None and not o.labels.is_file():
        raise SpecError("no such label file", file=str(o.labels))
    if "oracle" in names and o.labels is None and o.replay is None:
        raise SpecError("--agents oracle needs ground truth: --labels CSV")
    return names


def build_agents(names: list[str], o: AdaptOptions, store: Any = None,
                 truth_rules: Path | None = None) -> list[Agent]:
    agents: list[Agent] = []
    for n in names:
        if n in HEURISTICS:
            agents.append(HEURISTICS[n]())
        elif n == "rules":
            agents.append(RuleAgent(o.rules))  # type: ignore[arg-type]
        elif n == "dpi":
            from homunculus.adapt.dpi import DpiAgent, PacketStore

            agents.append(DpiAgent(store if store is not None else PacketStore()))
        elif n == "oracle":
            agents.append(OracleAgent() if truth_rules is None else
                          RuleAgent(truth_rules, name="oracle"))
    return agents


def run_adapt(o: AdaptOptions, echo: Callable[[str], None] = print) -> tuple[dict[str, Any],
                                                                               Path]:
    names = check_options(o)
    deployed = load_deployed(o.out_dir)
    config = LoopConfig(
        window_s=o.window, combine=o.combine,
        policy=TriggerPolicy(o.policy, o.threshold, o.cooldown, o.min_per_class,
                             proxy=o.proxy, sag=o.sag, patience=o.patience,
                             cooldown_from=o.cooldown_from, label_shift=o.label_shift),
        gate=GateConfig(o.margin, o.min_fidelity), detector=o.detector,
        max_installs=o.max_installs, seed=o.seed, research_after=o.research_after,
        research_trials=o.research_trials)
    report = o.report or Path(o.out_dir) / "adapt"
    config = replace(config, archive=str(report))
    log = write_jsonl(report / "decisions.jsonl")

    def logged(record: dict[str, Any]) -> None:
        log(record)
        if record.get("event") == "retrain":
            if "research" in record:
                echo(f"window {record['window']}: re-search: {research_cell(record['research'])}")
            echo(f"window {record['window']}: retrain ({record['cpu_seconds']:.2f} CPU s) "
                 f"verified={record['verified']}; gate: {record['gate']['reason']}"
                 + (f"; installed version {record['version']}" if record["installed"] else ""))
        elif record.get("event") == "window" and record.get("trigger"):
            echo(f"window {record['window']}: trigger ({record['why']})")
        elif record.get("event") == "agent":
            echo(record["message"])

    if o.replay is not None:
        loop = _replay(o, names, deployed, config, logged)
        title = f"adapt --replay {Path(o.replay).name}"
    else:
        if o.iface is not None:
            _check_iface(o)
        agents = _live_agents(names, o)
        oracle = RuleAgent(o.labels, name="oracle") if o.labels is not None else None
        loop = run_live(deployed, o.name, agents, config, logged, duration_s=o.duration,
                        windows=o.windows, oracle=oracle)
        title = f"adapt live ({o.name or o.iface})"
    summary = loop.summary()
    path = write_report(report, summary, loop.windows, loop.events, title)
    return summary, path


def _replay(o: AdaptOptions, names: list[str], deployed: Any, config: LoopConfig,
            log: Callable[[dict[str, Any]], None]) -> Any:
    from homunculus.data.labels import label_from_file
    from homunculus.data.pcap import ingest

    table, _ = ingest([o.replay], on_warning=lambda _m: None)
    if table.empty:
        raise DataError(f"{o.replay}: the capture holds no packets")
    truth = None
    if o.labels is not None:
        truth = label_from_file(table, o.labels, default="benign")["label"].to_numpy(object)
    store = None
    if "dpi" in names:
        from homunculus.adapt.dpi import PacketStore

        store = PacketStore.from_capture(o.replay, table)
    agents = build_agents(names, o, store)
    if "oracle" in names and truth is None:
        raise SpecError("--agents oracle needs --labels (the capture's ground truth)")
    return run_replay(deployed, table, agents, config, log,
                      truth=None if truth is None else np.asarray(truth, dtype=object))


def _live_agents(names: list[str], o: AdaptOptions) -> list[Agent]:
    store = None
    if "dpi" in names:
        from homunculus.adapt.dpi import PacketStore, PacketTap

        store = PacketStore()
        PacketTap(store, o.iface or "", o.netns)  # a daemon thread for the run
    return build_agents(names, o, store, truth_rules=o.labels)


def _check_iface(o: AdaptOptions) -> None:
    """--iface/--netns must be the deployment's."""
    from homunculus.deploy import DeployError, load_state

    dep = load_state(o.name)
    if dep.iface != o.iface or (o.netns is not None and dep.netns != o.netns):
        raise DeployError(f"--iface {o.iface} (netns {o.netns}) is not where '{dep.name}' is "
                          f"deployed ({dep.iface}, netns {dep.netns})")
