"""The adaptation loop: windows of telemetry -> agents -> proxy and drift -> trigger -> retrain
(worker process) -> gate -> install, every decision logged.

One :class:`AdaptLoop` serves two drivers: :func:`run_replay` (a capture in simulated time: the
twin classifies every packet with the active model, samples as the data plane does, and F1 is
measured against ground truth per window) and :func:`run_live` (a deployed XDP program: samples
from its ring buffer, installs by active/standby push).

In replay, a retrain triggered in window k is awaited at the start of window k + 1 and, if the
gate passes, classifies from there on (deterministic: simulated time does not depend on how long
training took; the CPU seconds it took are recorded). Live, the loop polls the worker and never
waits for it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from homunculus.adapt.agents import (
    Agent,
    AgentPool,
    AgentReport,
    LabelMap,
    Window,
    combine,
    sources,
)
from homunculus.adapt.model import Deployed, RetrainResult, RetrainWorker, predict
from homunculus.adapt.policy import (
    DriftMonitor,
    GateConfig,
    LabelShift,
    LevelWatch,
    ReplayBuffer,
    ResearchWatch,
    TriggerPolicy,
    gate,
    label_keys,
    macro_f1,
)
from homunculus.errors import DataError
from homunculus.ir.telemetry import feature_matrix, sample_mask, twin_samples


@dataclass(frozen=True)
class LoopConfig:
    window_s: float = 5.0
    combine: str = "priority"
    policy: TriggerPolicy = field(default_factory=TriggerPolicy)
    gate: GateConfig = field(default_factory=GateConfig)
    detector: str = "adwin"
    per_class: int = 600  # balanced training draw: at most this many samples per class
    by_source: bool = True  # a class's quota shared among the agents its labels came from
    recent_first: bool = False  # each share from the recent windows before the reservoir
    recent_windows: int = 3
    reservoir: int = 4000
    agent_timeout_s: float = 20.0
    max_installs: int | None = None
    seed: int = 0
    archive: str | None = None  # where each installed model is kept (installed/v<N>.json)
    # re-search: when the proxy stays low this many windows after a retrain, the next
    # retrain searches the family's hyperparameters (research_trials trials); 0: off.
    # See :class:`~homunculus.adapt.policy.ResearchWatch`; the defaults from the drifting
    # scenario's bench (docs/benchmarks.md, issue-12 section).
    research_after: int = 1
    research_trials: int = 4
    # measurement only (bench/adaptation.py): each retrain runs this many times in the
    # worker, the result is the first's and its CPU seconds the least of them (timeit's
    # minimum: what the retrain costs, without the other jobs' interference)
    cpu_repeats: int = 1

    def __post_init__(self) -> None:
        if self.cpu_repeats < 1:
            raise ValueError(f"cpu_repeats must be >= 1, not {self.cpu_repeats!r}")
        if self.research_after < 0:
            raise ValueError(f"research_after must be >= 0 (0: off), not "
                             f"{self.research_after!r}")
        if self.research_trials < 1:
            raise ValueError(f"research_trials must be >= 1, not {self.research_trials!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Installer(Protocol):
    def install(self, program: Any, version: int) -> str:
        """Install ``program`` as model ``version`` atomically; a description."""


class ReplayInstaller:
    """Replay: the twin swaps its active model (the next window's packets see the new one)."""

    def install(self, program: Any, version: int) -> str:
        return f"twin: model version {version} active from the next window"


@dataclass
class SwitchInstaller:
    """Replay of a switch compile: each install is the versioned update (targets/p4/
    versioned.py) written as P4Runtime JSON, simple_switch_CLI commands and a bfrt script into
    ``folder``; the twin then runs the new model."""

    current: Any
    arch: str
    folder: Path
    register: int = 0

    def install(self, program: Any, version: int) -> str:
        from homunculus.targets.p4.versioned import (
            bfrt_updates,
            cli_updates,
            p4runtime_updates,
            update_plan,
        )

        new_register = 1 - self.register
        plan = update_plan(self.current, program, self.register, new_register)
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = self.folder / f"update-v{version}"
        stem.with_suffix(".p4runtime.json").write_text(
            json.dumps(p4runtime_updates(plan, self.current, self.arch), indent=1) + "\n")
        if self.arch == "v1model":
            stem.with_suffix(".simple_switch_cli.txt").write_text(cli_updates(plan, self.current))
        else:
            stem.with_suffix(".bfrt.py").write_text(bfrt_updates(plan, self.current, "program"))
        self.current, self.register = program, new_register
        return f"versioned update to register value {new_register} written to {stem}.*"


@dataclass
class XdpInstaller:
    """A live XDP deployment: active/standby push with the model version (deploy.py)."""

    name: str | None = None

    def install(self, program: Any, version: int) -> str:
        from homunculus.deploy import push_program

        dep = push_program(program, self.name, version=version)
        return f"pushed into {dep.name} (push {dep.pushes}, version {version})"


@dataclass
class Pending:
    window: int
    x_held: np.ndarray
    y_held: np.ndarray
    train_rows: int
    shift: bool = False  # triggered by a label shift: leaves no cool-down behind
    research: str | None = None  # why this retrain re-searches the hyperparameters


class AdaptLoop:
    """See the module docstring; ``log`` receives every decision as a dict."""

    def __init__(self, deployed: Deployed, agents: Sequence[Agent], installer: Installer,
                 config: LoopConfig, log: Callable[[dict[str, Any]], None],
                 judge: bool = True) -> None:
        self.deployed = deployed
        self.config = config
        self.installer = installer
        self.pool = AgentPool(agents, config.agent_timeout_s,
                              log=lambda m: log({"event": "agent", "message": m}))
        self.order = [a.name for a in agents]
        self.mapper = LabelMap.for_classes(deployed.classes)
        self.buffer = ReplayBuffer(config.recent_windows, config.reservoir, config.seed)
        self.drift = DriftMonitor(config.detector)
        self.worker = RetrainWorker(config.cpu_repeats)
        self.log = log
        self.judge = judge
        self.active = deployed.program
        self.version = 0
        self.installs = 0
        self.retrains = 0
        self.cpu_seconds = 0.0
        self.last_retrain: int | None = None
        self.last_install: int | None = None
        self.level = LevelWatch(config.policy.sag, config.policy.patience)
        self.research = ResearchWatch(config.research_after)
        self.params = dict(deployed.recipe.params)  # the active model's hyperparameters
        self.shift = LabelShift(config.policy.label_shift if config.policy.mode == "proxy"
                                else 0, config.recent_windows)
        self.pending: Pending | None = None
        self.recent_x = np.zeros((0, len(deployed.recipe.decls)), dtype=np.int64)
        self.windows: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.combined = AgentReport(f"combined ({config.combine})")

    # -- retrains -----------------------------------------------------------------------------

    def apply_pending(self, wait: bool, window: int) -> dict[str, Any] | None:
        """Collect a finished retrain: gate it and install it if it passes."""
        if self.pending is None:
            return None
        result = self.worker.result(wait)
        if result is None:
            return None
        pending, self.pending = self.pending, None
        event = self._judge_retrain(result, pending, window)
        self.research.judged()
        self.events.append(event)
        self.log(event)
        return event

    def _judge_retrain(self, result: RetrainResult, pending: Pending, window: int
                       ) -> dict[str, Any]:
        self.cpu_seconds += result.cpu_seconds
        event: dict[str, Any] = {
            "event": "retrain", "window": window, "triggered_in": pending.window,
            "train_samples": pending.train_rows, "cpu_seconds": round(result.cpu_seconds, 4),
            "wall_seconds": round(result.wall_seconds, 4), "verified": result.ok,
            "verification": result.note, "installed": False}
        if pending.research is not None:
            event["research"] = research_record(pending.research, result)
        held = pending.y_held
        if result.ok:
            labels = np.asarray(self.deployed.classes, dtype=object)
            new_held = labels[predict(result.program, pending.x_held)]
            old_held = labels[predict(self.active, pending.x_held)]
            new_recent = predict(result.program, self.recent_x)
            old_recent = predict(self.active, self.recent_x)
        else:
            new_held = old_held = held
            new_recent = old_recent = np.zeros(0, dtype=np.int64)
        verdict = gate(result.ok, result.note, held, new_held, old_held, new_recent,
                       old_recent, self.config.gate)
        event["gate"] = verdict.as_dict()
        limit = self.config.max_installs
        if verdict.install and limit is not None and self.installs >= limit:
            event["gate"]["install"] = False
            event["gate"]["reason"] += f"; but --max-installs {limit} reached"
            return event
        if verdict.install:
            version = self.version + 1
            try:
                event["install"] = self.installer.install(result.program, version)
            except Exception as exc:  # an install that fails leaves the active model
                event["install"] = f"failed: {type(exc).__name__}: {exc}"
                return event
            self.active, self.version = result.program, version
            if result.search is not None and result.params is not None:
                self.params = dict(result.params)  # later retrains keep the searched ones
            self.installs += 1
            # the window whose retrain was installed; a label-shift retrain's model is
            # provisional (learned from the first samples of a new kind): no cool-down
            # (_start_retrain)
            self.last_install = None if pending.shift else pending.window
            self.level.installed(verdict.new_metric)
            self._archive(result.program, version)
            event["installed"] = True
            event["version"] = version
        return event

    # -- windows ------------------------------------------------------------------------------

    def observe(self, window: Window, f1: float | None = None,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Label a window's samples, update the proxy and drift, maybe trigger a retrain."""
        samples = window.samples
        x = feature_matrix(samples) if len(samples) else np.zeros(
            (0, len(self.deployed.recipe.decls)), dtype=np.int64)
        votes = self.pool.run(window)
        labels, _ = combine(votes, self.order, self.mapper, self.config.combine)
        truth = window.context.get("truth")
        if self.judge and truth is not None and "_row" in samples.columns and len(samples):
            rows = samples["_row"].to_numpy(np.int64)
            self.pool.judge(votes, np.asarray(truth, dtype=object)[rows], self.mapper)
            self._judge_combined(labels, np.asarray(truth, dtype=object)[rows])
        classes = np.asarray(self.deployed.classes, dtype=object)
        model = classes[samples["cls"].to_numpy(np.int64)] if len(samples) else classes[:0]
        known = np.array([v is not None for v in labels], dtype=bool)
        proxy = self.config.policy.measure(labels[known], model[known]) if known.any() \
            else None
        drifted = self.drift.update((labels[known] == model[known]).astype(float))
        keys: dict[str, int] = {}
        if known.any():
            source = sources(votes, self.order, self.mapper, labels)
            self.buffer.add(x[known], labels[known], source[known])
            keys = label_keys(labels[known], source[known])
        self.recent_x = x
        self.level.update(proxy)
        self.research.update(None if proxy is None else
                             proxy < self.config.policy.threshold or self.level.below(proxy))
        last = self.last_install if self.config.policy.cooldown_from == "install" else \
            self.last_retrain
        since = None if last is None else window.index - last
        counts = self.buffer.class_counts()
        shifted = self.shift.shifted(keys)
        self.shift.record(keys)
        trigger, why = self.config.policy.decide(proxy, drifted, since, counts,
                                                 self.deployed.classes, self.level.sagging(),
                                                 shifted)
        busy = self.pending is not None
        if trigger and busy:
            trigger, why = False, why + "; a retrain is already running"
        if trigger:
            self._start_retrain(window.index, shift=shifted is not None and why == shifted)
        record = {"event": "window", "window": window.index, "start_us": window.start_us,
                  "end_us": window.end_us, "samples": len(samples),
                  "labelled": int(known.sum()), "proxy": proxy, "drift": drifted,
                  "trigger": trigger, "why": why, "f1": f1, "version": self.version,
                  "buffer": counts, "labels_by_agent": keys, **(extra or {})}
        self.windows.append(record)
        self.log(record)
        return record

    def _judge_combined(self, labels: np.ndarray, truth: np.ndarray) -> None:
        """Against ground truth (evaluation only): how many combined labels -- the ones
        retraining learns from -- are right."""
        report = self.combined
        report.samples += len(labels)
        for label, true in zip(labels, truth, strict=True):
            if label is None:
                continue
            report.labelled += 1
            want = None if true is None else self.mapper(str(true))
            if want is not None:
                report.judged += 1
                report.correct += int(label == want)

    def _start_retrain(self, window: int, shift: bool = False) -> None:
        """Draw a training set from the buffer and submit it to the worker. A retrain a label
        shift triggered (``shift``) clears the cool-down rather than starting one, and so does
        its install: the cool-down was for the traffic before the shift, and the new model,
        learned from the first samples of a new kind, is provisional -- the other triggers
        must stay free to replace it as more of that traffic arrives."""
        x_train, y_train, x_held, y_held = self.buffer.balanced(
            self.config.per_class, by_source=self.config.by_source,
            recent_first=self.config.recent_first)
        verify = np.concatenate([x_train, x_held, self.recent_x])
        research = self.research.due()
        if research is not None:
            self.research.searched()
        recipe = replace(self.deployed.recipe, params=dict(self.params))
        self.worker.submit(recipe, x_train, y_train, verify, self.config.seed + window,
                           self.config.research_trials if research is not None else 0)
        self.pending = Pending(window, x_held, y_held, len(y_train), shift, research)
        self.shift.learned(self.buffer.key_counts())
        self.last_retrain = None if shift else window
        self.retrains += 1

    def _archive(self, program: Any, version: int) -> None:
        if self.config.archive is None:
            return
        from homunculus.ir.cpu import CpuProgram

        folder = Path(self.config.archive) / "installed"
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(program, CpuProgram):
            from homunculus.targets.xdp.layout import Capacity
            from homunculus.targets.xdp.snapshot import snapshot_of

            data = snapshot_of(program, Capacity.from_json(self.deployed.recipe.capacity))
        else:
            from homunculus.ir.serialize import compiled_to_json

            data = compiled_to_json(program)
        (folder / f"v{version}.json").write_text(json.dumps(data) + "\n")

    def close(self) -> None:
        self.worker.close()

    def summary(self) -> dict[str, Any]:
        f1s = [w["f1"] for w in self.windows if w.get("f1") is not None]
        return {"windows": len(self.windows), "retrains": self.retrains,
                "researches": sum("research" in e for e in self.events),
                "installs": self.installs, "cpu_seconds": round(self.cpu_seconds, 4),
                "mean_f1": float(np.mean(f1s)) if f1s else None,
                "agents": [r.as_dict() for r in self.pool.reports.values()],
                "combined": self.combined.as_dict(),
                "config": self.config.as_dict(), "final_version": self.version}


def research_record(why: str, result: RetrainResult) -> dict[str, Any]:
    """A re-search's entry in the decision log: why it ran, its trials, the hyperparameters
    it chose and their validation scores (the active ones' first), and its CPU seconds
    (the retrain's include them)."""
    search = result.search or {}
    return {"why": why, "trials": search.get("trials", []), "chosen": search.get("params"),
            "kept_active": search.get("best") == 0,
            "score": search.get("score"), "active_score": search.get("active_score"),
            "cpu_seconds": round(float(search.get("cpu_seconds", 0.0)), 4)}


# ----------------------------------------------------------------------------- replay


def data_plane_features(deployed: Deployed, table: pd.DataFrame) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    """Per packet: the features the deployed data plane computes, and the classified mask."""
    from homunculus.targets.xdp.runner import packet_features

    return packet_features(deployed.program, table)


def run_replay(deployed: Deployed, table: pd.DataFrame, agents: Sequence[Agent],
               config: LoopConfig, log: Callable[[dict[str, Any]], None],
               truth: np.ndarray | None = None,
               installer: Installer | None = None) -> AdaptLoop:
    """The loop over a packet table in simulated time (see the module docstring)."""
    if deployed.telemetry is None:
        raise DataError(f"{deployed.recipe.out_dir}: compiled without telemetry: add an "
                        "'adapt:' section to the spec and compile again")
    if table.empty:
        raise DataError("the capture holds no packets")
    table = table.sort_values("ts_us", kind="stable").reset_index(drop=True) if not \
        table["ts_us"].is_monotonic_increasing else table.reset_index(drop=True)
    if truth is not None and len(truth) != len(table):
        raise ValueError("truth must label every packet")
    values, classified = data_plane_features(deployed, table)
    if installer is None and deployed.recipe.target != "xdp":
        folder = Path(config.archive or deployed.recipe.out_dir) / "updates"
        arch = "v1model" if deployed.recipe.target == "bmv2" else "tna"
        installer = SwitchInstaller(deployed.meta.get("unversioned", deployed.program),
                                    arch, folder)
    loop = AdaptLoop(deployed, agents, installer or ReplayInstaller(), config, log)
    mapper = loop.mapper
    mapped_truth = None if truth is None else np.array([mapper(str(t)) for t in truth],
                                                       dtype=object)
    ts = table["ts_us"].to_numpy(np.int64)
    width = int(config.window_s * 1e6)
    starts = np.arange(ts[0], ts[-1] + 1, width)
    bounds = np.searchsorted(ts, np.append(starts, starts[-1] + width))
    counter: dict[str, Any] = {}
    classes = np.asarray(deployed.classes, dtype=object)
    try:
        for k, start in enumerate(starts.tolist()):
            lo, hi = int(bounds[k]), int(bounds[k + 1])
            loop.apply_pending(wait=True, window=k)
            part = table.iloc[lo:hi]
            mask = classified[lo:hi]
            cls = predict(loop.active, values[lo:hi][mask])
            f1 = None
            if mapped_truth is not None and mask.any():
                want = mapped_truth[lo:hi][mask]
                keep = np.array([w is not None for w in want], dtype=bool)
                if keep.any():
                    f1 = macro_f1(want[keep].astype(str), classes[cls[keep]].astype(str))
            sampled_in = sample_mask(part, mask, deployed.telemetry, counter)
            picked = np.flatnonzero(sampled_in)
            at = np.searchsorted(np.flatnonzero(mask), picked)
            samples = twin_samples(part, sampled_in, values[lo:hi][sampled_in], cls[at],
                                   loop.version)
            samples["_row"] = lo + picked
            window = Window(k, int(start), int(start) + width, samples,
                            {"truth": truth} if truth is not None else {})
            loop.observe(window, f1, {"packets": hi - lo, "classified": int(mask.sum())})
        loop.apply_pending(wait=True, window=len(starts))
    finally:
        loop.close()
    return loop


# ----------------------------------------------------------------------------- live


def run_live(deployed: Deployed, name: str | None, agents: Sequence[Agent],
             config: LoopConfig, log: Callable[[dict[str, Any]], None], *,
             duration_s: float | None = None, windows: int | None = None,
             oracle: Agent | None = None, stop: Callable[[], bool] | None = None) -> AdaptLoop:
    """The loop on a deployed XDP program: its ring buffer's samples, windows of wall time,
    installs pushed into its standby slot. Runs ``windows`` windows or ``duration_s`` seconds
    (or until ``stop()``)."""
    from homunculus.deploy import DeployError, load_state, open_pins
    from homunculus.ir.telemetry import records_from_bytes
    from homunculus.targets.xdp.loader import RingBuffer
    from homunculus.targets.xdp.snapshot import has_map, set_telemetry

    dep = load_state(name)
    if deployed.telemetry is None:
        raise DeployError(f"{dep.out_dir}: compiled without telemetry: add an 'adapt:' section "
                          "to the spec, compile and deploy again")
    pins = open_pins(dep.name)
    if not has_map(pins, "hmn_samples"):
        pins.close()
        raise DeployError(f"'{dep.name}' runs a program without telemetry (no hmn_samples "
                          "map): deploy a compile with an 'adapt:' section")
    try:
        set_telemetry(pins, deployed.telemetry.mode, deployed.telemetry.param,
                      deployed.telemetry.every)
    except ValueError as e:  # a program older than its compile's sampling mode
        pins.close()
        raise DeployError(f"'{dep.name}': {e}") from e
    loop = AdaptLoop(deployed, agents, XdpInstaller(dep.name), config, log)
    loop.version = dep.version
    ring = RingBuffer(pins.map("hmn_samples").fd)
    n_features = len(deployed.recipe.decls)
    started = time.monotonic()
    k = 0
    try:
        while True:
            window_start = time.monotonic()
            records: list[bytes] = []
            while time.monotonic() - window_start < config.window_s:
                ring.poll(50)
                records += ring.drain()
                loop.apply_pending(wait=False, window=k)
                if stop is not None and stop():
                    break
            samples = records_from_bytes(records, n_features)
            now_us = int(time.time() * 1e6)
            window = Window(k, now_us - int(config.window_s * 1e6), now_us, samples)
            f1 = None
            if oracle is not None and len(samples):
                truth = oracle.label(window).labels
                mapped = np.array([loop.mapper(t) for t in truth], dtype=object)
                keep = np.array([t is not None for t in mapped], dtype=bool)
                if keep.any():
                    classes = np.asarray(deployed.classes, dtype=object)
                    f1 = macro_f1(mapped[keep].astype(str),
                                  classes[samples["cls"].to_numpy(np.int64)[keep]].astype(str))
            loop.observe(window, f1, {"versions_seen": sorted(
                set(samples["version"].astype(int).tolist())) if len(samples) else []})
            k += 1
            if windows is not None and k >= windows:
                break
            if duration_s is not None and time.monotonic() - started >= duration_s:
                break
            if stop is not None and stop():
                break
        deadline = time.monotonic() + 60
        while loop.pending is not None and time.monotonic() < deadline:
            loop.apply_pending(wait=False, window=k)
            time.sleep(0.05)
    finally:
        ring.close()
        pins.close()
        loop.close()
    return loop


def write_jsonl(path: Path) -> Callable[[dict[str, Any]], None]:
    """A logger appending each decision to ``path`` as one JSON line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")

    def log(record: dict[str, Any]) -> None:
        with path.open("a") as fh:
            fh.write(json.dumps(record, default=_plain) + "\n")

    return log


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
