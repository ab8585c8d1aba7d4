"""The accuracy proxy, drift detection, the retraining trigger, the replay buffer and the
install gate.

- Proxy: per window, over the samples some agent labelled (Caravan's accuracy proxy):
  ``macro_f1`` (default), the macro-F1 of the model's classes against the agents' combined
  labels; or ``min_recall`` / ``mean_recall``, the minimum / mean over the classes with at least
  ``min_per_class`` labelled samples in the window of the share of that class's labelled
  samples the model gives that class (:func:`accuracy_proxy`).
- Drift: river's ADWIN (default) or Page-Hinkley over the per-sample agreement (1: the model's
  class is the agents' label), in time order.
- Trigger (:class:`TriggerPolicy`): ``proxy`` retrains when the proxy falls below a threshold,
  when it stays more than ``sag`` below the level the active model reached at install
  (:class:`LevelWatch`), or when drift is detected; at most once per cool-down (counted from
  the last installed retrain) and only with enough labelled samples of every class in the
  buffer; and at once, cool-down or not, when the labels shift: an agent's label (a kind of
  evidence, e.g. a new attack kind) that no retrain has learned from yet, or that the recent
  windows lacked, labels enough of the window's samples (:class:`LabelShift`). ``every``
  retrains every window; ``never`` never does.
- Re-search (:class:`ResearchWatch`; on by default, ``after`` 1): when the proxy stays low
  -- below the threshold or sagging -- ``after`` windows after a retrain, the next retrain
  searches the family's hyperparameters (adapt/model.py ``research``) instead of keeping the
  active ones.
- Replay buffer: the labelled samples of the most recent windows plus a seeded reservoir
  (Algorithm R) of older ones, each with the agent its label came from; training sets are
  class-balanced draws in which a class's quota is shared among those sources, with a held-out
  part.
- Gate (LiteFlow): a verified snapshot is installed only if it is correct (its macro-F1 on the
  held-out labelled samples is not below the active model's by more than a margin) and
  necessary (its verdicts differ from the active model's on recent samples by more than the
  fidelity-loss threshold).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from homunculus.search.metrics import fast_f1_macro

DETECTORS = ("adwin", "page_hinkley")
POLICIES = ("proxy", "every", "never")
PROXIES = ("macro_f1", "min_recall", "mean_recall")
COOLDOWN_FROM = ("retrain", "install")


def macro_f1(truth: np.ndarray, pred: np.ndarray) -> float | None:
    """Macro-F1 over the classes present in either (None for no samples): scikit-learn's
    ``f1_score(average="macro", zero_division=0)`` over those labels, through the search's
    :func:`~homunculus.search.metrics.fast_f1_macro` on the labels' indices (scikit-learn's
    input validation cost more than the rest of a re-search's trial)."""
    if len(truth) == 0:
        return None
    labels, codes = np.unique(np.concatenate([np.asarray(truth), np.asarray(pred)]),
                              return_inverse=True)
    return fast_f1_macro(codes[:len(truth)], codes[len(truth):], len(labels))


def accuracy_proxy(labels: np.ndarray, model: np.ndarray, kind: str = "macro_f1",
                   min_per_class: int = 1) -> float | None:
    """The accuracy proxy of a window's labelled samples (``labels``: the agents' combined
    labels; ``model``: the model's classes for them). ``macro_f1``: their macro-F1.
    ``min_recall`` / ``mean_recall``: per class with at least ``min_per_class`` labelled
    samples, the share the model agrees with; their minimum / mean. None when no sample (or,
    for the recall kinds, no class) qualifies."""
    labels = np.asarray(labels).astype(str)
    model = np.asarray(model).astype(str)
    if kind == "macro_f1":
        return macro_f1(labels, model)
    if kind not in PROXIES:
        raise ValueError(f"accuracy proxy must be one of {list(PROXIES)}, not {kind!r}")
    recalls = []
    for label in sorted(set(labels.tolist())):
        mine = labels == label
        if mine.sum() >= min_per_class:
            recalls.append(float(np.mean(model[mine] == label)))
    if not recalls:
        return None
    return min(recalls) if kind == "min_recall" else float(np.mean(recalls))


def make_detector(kind: str) -> Any:
    from river import drift

    if kind == "adwin":
        return drift.ADWIN(delta=0.002)
    if kind == "page_hinkley":
        return drift.PageHinkley(min_instances=30, delta=0.005, threshold=20.0, mode="down")
    raise ValueError(f"drift detector must be one of {list(DETECTORS)}, not {kind!r}")


@dataclass
class DriftMonitor:
    """Feeds per-sample agreement to a river detector; reports drift per window."""

    kind: str = "adwin"
    detector: Any = None
    detections: int = 0

    def __post_init__(self) -> None:
        self.detector = make_detector(self.kind)

    def update(self, agreement: np.ndarray) -> bool:
        drifted = False
        for value in np.asarray(agreement, dtype=float).tolist():
            self.detector.update(value)
            drifted |= bool(self.detector.drift_detected)
        self.detections += drifted
        return drifted

    def reset(self) -> None:
        self.detector = make_detector(self.kind)


@dataclass(frozen=True)
class TriggerPolicy:
    mode: str = "proxy"
    threshold: float = 0.8  # retrain when the proxy falls below this
    cooldown: int = 3  # windows between two retrains (proxy mode)
    min_per_class: int = 20  # labelled samples of every class the buffer must hold
    on_drift: bool = True  # a detected drift triggers too
    proxy: str = "macro_f1"  # the accuracy proxy: one of PROXIES (accuracy_proxy)
    # sag: also retrain when the proxy stays more than ``sag`` below the level the active
    # model reached when it was installed (the gate's held-out macro-F1), ``patience`` windows
    # in a row (0: off). The default is the gate's default margin: the drop within which the
    # gate calls two models equally good. See :class:`LevelWatch`.
    sag: float = 0.02
    patience: int = 2
    # the cool-down counts from the last retrain that was installed ("install": a retrain the
    # gate refused changed nothing to wait for) or from the last retrain ("retrain")
    cooldown_from: str = "install"
    # label shift: retrain at once (cool-down or not) when an agent's label that no retrain
    # has learned from, or that labelled fewer in each of the recent windows, labels at least
    # this many of a window's samples (0: off). The default is min_per_class: the labelled
    # samples the policy already asks of a class to learn it. See :class:`LabelShift`.
    label_shift: int = 20

    def __post_init__(self) -> None:
        if self.mode not in POLICIES:
            raise ValueError(f"trigger policy must be one of {list(POLICIES)}, not {self.mode!r}")
        if self.proxy not in PROXIES:
            raise ValueError(f"accuracy proxy must be one of {list(PROXIES)}, not {self.proxy!r}")
        if not 0 <= self.threshold <= 1 or self.cooldown < 0 or self.min_per_class < 1:
            raise ValueError("threshold in 0..1, cooldown >= 0, min_per_class >= 1")
        if not 0 <= self.sag < 1:
            raise ValueError(f"sag must be in [0, 1) (0: off), not {self.sag!r}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, not {self.patience!r}")
        if self.cooldown_from not in COOLDOWN_FROM:
            raise ValueError(f"cooldown_from must be one of {list(COOLDOWN_FROM)}, not "
                             f"{self.cooldown_from!r}")
        if self.label_shift < 0:
            raise ValueError(f"label_shift must be >= 0 (0: off), not {self.label_shift!r}")

    def measure(self, labels: np.ndarray, model: np.ndarray) -> float | None:
        """This policy's accuracy proxy of a window's labelled samples."""
        return accuracy_proxy(labels, model, self.proxy, self.min_per_class)

    def decide(self, proxy: float | None, drifted: bool, windows_since: int | None,
               class_counts: dict[str, int], classes: tuple[str, ...],
               sagging: str | None = None, shifted: str | None = None) -> tuple[bool, str]:
        """(retrain now?, why). ``sagging``: why the proxy counts as sagging below the active
        model's installed level (:meth:`LevelWatch.sagging`), or None. ``shifted``: why the
        window's labels count as shifted (:meth:`LabelShift.shifted`), or None; a shift
        retrains whatever the cool-down says."""
        if self.mode == "never":
            return False, "policy never retrains"
        short = [c for c in classes if class_counts.get(c, 0) < self.min_per_class]
        if short:
            return False, f"too few labelled samples of {short} (< {self.min_per_class})"
        if self.mode == "every":
            return True, "policy retrains every window"
        if shifted is not None and self.label_shift > 0:
            return True, shifted
        low = proxy is not None and proxy < self.threshold
        sag = sagging is not None and self.sag > 0
        if not low and not sag and not (drifted and self.on_drift):
            return False, ("proxy unknown (too few labelled samples)" if proxy is None else
                           f"proxy {proxy:.3f} >= {self.threshold:g}, no drift")
        if windows_since is not None and windows_since < self.cooldown:
            return False, (f"cool-down ({windows_since} of {self.cooldown} windows since the "
                           f"last {self.cooldown_from})")
        if low:
            return True, f"proxy {proxy:.3f} < {self.threshold:g}"
        return True, sagging if sag else "drift detected"  # type: ignore[return-value]


@dataclass
class LevelWatch:
    """The sag rule's state: the level the active model reached when it was installed (its
    macro-F1 on the held-out part of its training draw, labelled by the agents: what the
    proxy reads while the traffic stays like the traffic it was trained on) and how many
    windows in a row the proxy has been more than ``sag`` below it (``sag`` 0: off). A window
    without a proxy neither counts nor breaks the run. The deployed (offline) model has no
    level: only the threshold and drift apply to it."""

    sag: float = 0.0
    patience: int = 2
    level: float | None = None
    run: int = 0
    last: float | None = None

    def installed(self, level: float | None) -> None:
        self.level, self.run = level, 0

    def below(self, proxy: float) -> bool:
        """Is ``proxy`` more than ``sag`` below the installed level (False without either)?"""
        return bool(self.sag) and self.level is not None and proxy < self.level - self.sag

    def update(self, proxy: float | None) -> None:
        if not self.sag or self.level is None or proxy is None:
            return
        self.last = proxy
        self.run = self.run + 1 if self.below(proxy) else 0

    def sagging(self) -> str | None:
        """Why the proxy sags (None if it does not)."""
        if not self.sag or self.level is None or self.run < self.patience:
            return None
        return (f"proxy {self.last:.3f} more than {self.sag:g} below the active model's "
                f"installed level {self.level:.3f} for {self.run} windows")


@dataclass
class ResearchWatch:
    """The re-search rule's state. A window's proxy is low when it is below the trigger's
    threshold or sags below the active model's installed level (:meth:`LevelWatch.below`).
    ``run`` counts the low windows in a row since a retrain (installed or refused) was judged
    within the current low stretch; when it reaches ``after`` (0: off), the retrain the policy
    triggers next is a short re-search of the hyperparameters
    (:func:`~homunculus.adapt.model.research`) rather than a retrain with the active ones:
    retraining did not bring the proxy back. One re-search per low stretch: the retrains after
    it keep the hyperparameters it chose, and another waits until the proxy has recovered and
    fallen again (each re-search costs about as much CPU as a retrain). A window whose proxy is
    not low ends the stretch; a window without a proxy neither counts nor ends it. The offline
    model's low proxy before any retrain is a reason to retrain, not yet to search."""

    after: int = 0
    run: int = 0
    tried: bool = False  # a retrain was judged within the current low stretch
    spent: bool = False  # this low stretch had its re-search

    def judged(self) -> None:
        """A retrain's (or a re-search's) result was judged."""
        self.tried = True

    def update(self, low: bool | None) -> None:
        """A window's proxy was low (True), not (False) or unknown (None)."""
        if not self.after or low is None:
            return
        if not low:
            self.run, self.tried, self.spent = 0, False, False
        elif self.tried:
            self.run += 1

    def searched(self) -> None:
        """A re-search started: none other until the stretch ends."""
        self.spent = True

    def due(self) -> str | None:
        """Why the next retrain should be a re-search (None: it should not)."""
        if not self.after or self.spent or not self.tried or self.run < self.after:
            return None
        return (f"proxy low for {self.run} window{'s' * (self.run > 1)} after a retrain "
                f"(re-search after {self.after})")


def label_keys(labels: np.ndarray, source: np.ndarray) -> dict[str, int]:
    """How many samples carry each agent's label: ``"agent:label"`` (``source``: the agent
    each combined label came from, :func:`~homunculus.adapt.agents.sources`) -> count.
    Samples without a label or a source are left out."""
    counts: dict[str, int] = {}
    for label, agent in zip(labels, source, strict=True):
        if label is None or agent is None or str(agent) in ("", "None"):
            continue
        key = f"{agent}:{label}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def new_keys(window: dict[str, int], known: set[str], minimum: int) -> list[str]:
    """The agents' labels that label at least ``minimum`` of a window's samples and are not
    ``known``, sorted."""
    return sorted(k for k, n in window.items() if n >= minimum and k not in known)


def returning_keys(window: dict[str, int], history: Sequence[dict[str, int]],
                   minimum: int) -> list[str]:
    """The agents' labels that label at least ``minimum`` of a window's samples after
    labelling fewer than ``minimum`` in each of the windows of ``history`` (at least one),
    sorted."""
    if not history:
        return []
    return sorted(k for k, n in window.items()
                  if n >= minimum and all(h.get(k, 0) < minimum for h in history))


@dataclass
class LabelShift:
    """The label-shift rule's state. The agents' labels (``"agent:label"``, e.g.
    ``"dns_amplification:attack"``) count by window; a window has shifted when one of them
    labels at least ``minimum`` of its samples and either

    - retraining has not learned from it: the buffer never held ``minimum`` samples of it
      when a retrain drew from it (a kind of evidence no retrained model has seen, such as a
      new attack kind), or
    - it comes back: it labelled fewer than ``minimum`` samples in each of the ``recent``
      windows before (the replay buffer's recent windows, which a draw takes whole; older
      samples survive only in the reservoir's sample: an attack kind that returns, perhaps
      at another rate or from other hosts).

    A new kind of traffic is the strongest reason to retrain. The deployed (offline) model was
    not trained on the agents' labels, so the rule applies from the first retrain on
    (``minimum`` 0: off)."""

    minimum: int = 0
    recent: int = 3
    known: set[str] | None = None
    history: deque = field(default_factory=deque)

    def learned(self, buffered: dict[str, int]) -> None:
        """A retrain drew from a buffer holding ``buffered`` samples per agent's label."""
        if not self.minimum:
            return
        fresh = {k for k, n in buffered.items() if n >= self.minimum}
        self.known = fresh if self.known is None else self.known | fresh

    def shifted(self, window: dict[str, int]) -> str | None:
        """Why the window's labels count as shifted (None if they do not)."""
        if not self.minimum or self.known is None:
            return None
        fresh = new_keys(window, self.known, self.minimum)
        back = [k for k in returning_keys(window, list(self.history), self.minimum)
                if k not in fresh]
        if not fresh and not back:
            return None
        parts = [f"{k} ({window[k]}) not yet learned from" for k in fresh] + \
            [f"{k} ({window[k]}) back after {len(self.history)} windows below {self.minimum}"
             for k in back]
        return "label shift: " + "; ".join(parts)

    def record(self, window: dict[str, int]) -> None:
        """Remember a window's counts (after :meth:`shifted` judged it)."""
        self.history.append(dict(window))
        while len(self.history) > self.recent:
            self.history.popleft()


@dataclass
class ReplayBuffer:
    """Labelled samples: the last ``recent_windows`` windows whole, older ones in a reservoir
    of ``reservoir_size`` (uniform over everything evicted so far). Each sample keeps the name
    of the agent whose label it carries (its source), so training draws can give every source
    -- every kind of evidence the agents found -- its share of a class."""

    recent_windows: int = 3
    reservoir_size: int = 4000
    seed: int = 0
    recent: deque = field(default_factory=deque)  # (x, y, source) per window
    reservoir_x: list[np.ndarray] = field(default_factory=list)
    reservoir_y: list[str] = field(default_factory=list)
    reservoir_s: list[str] = field(default_factory=list)
    evicted: int = 0
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def add(self, x: np.ndarray, y: np.ndarray, source: np.ndarray | None = None) -> None:
        y = np.asarray(y, dtype=object)
        src = np.full(len(y), "", dtype=object) if source is None else \
            np.asarray(source, dtype=object).astype(str).astype(object)
        self.recent.append((np.asarray(x, dtype=np.int64), y, src))
        while len(self.recent) > self.recent_windows:
            old_x, old_y, old_s = self.recent.popleft()
            for row, label, s in zip(old_x, old_y, old_s, strict=True):
                self._reservoir(row, str(label), str(s))

    def _reservoir(self, row: np.ndarray, label: str, source: str) -> None:
        self.evicted += 1
        if len(self.reservoir_y) < self.reservoir_size:
            self.reservoir_x.append(row)
            self.reservoir_y.append(label)
            self.reservoir_s.append(source)
            return
        j = int(self.rng.integers(0, self.evicted))
        if j < self.reservoir_size:
            self.reservoir_x[j], self.reservoir_y[j] = row, label
            self.reservoir_s[j] = source

    def _parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, source, is_recent) of every buffered sample, the recent windows first."""
        xs = [x for x, _, _ in self.recent]
        ys = [y for _, y, _ in self.recent]
        ss = [s for _, _, s in self.recent]
        fresh = [np.ones(len(y), dtype=bool) for y in ys]
        if self.reservoir_y:
            xs.append(np.stack(self.reservoir_x))
            ys.append(np.asarray(self.reservoir_y, dtype=object))
            ss.append(np.asarray(self.reservoir_s, dtype=object))
            fresh.append(np.zeros(len(self.reservoir_y), dtype=bool))
        if not xs or not sum(len(y) for y in ys):
            return (np.zeros((0, 0), dtype=np.int64), np.zeros(0, dtype=object),
                    np.zeros(0, dtype=object), np.zeros(0, dtype=bool))
        return (np.concatenate([x for x in xs if len(x)]), np.concatenate(ys),
                np.concatenate(ss), np.concatenate(fresh))

    def all(self) -> tuple[np.ndarray, np.ndarray]:
        x, y, _, _ = self._parts()
        return x, y

    def key_counts(self) -> dict[str, int]:
        """Buffered samples per agent's label (``"agent:label"``, :func:`label_keys`)."""
        _, y, src, _ = self._parts()
        return label_keys(y, src)

    def class_counts(self) -> dict[str, int]:
        _, y = self.all()
        labels, counts = np.unique(y.astype(str), return_counts=True) if len(y) else ([], [])
        return {str(k): int(v) for k, v in zip(labels, counts, strict=True)}

    def balanced(self, per_class: int, holdout: float = 0.25, by_source: bool = True,
                 recent_first: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A class-balanced draw (at most ``per_class`` of each class), split into training and
        held-out parts per class: (x_train, y_train, x_held, y_held).

        With ``by_source``, a class's quota is shared evenly among the agents its labels came
        from (a source with fewer samples leaves the rest to the others), so a rare kind of
        evidence (a few beacons among thousands of flood packets) is not drowned. With
        ``recent_first``, each share takes the recent windows' samples before the
        reservoir's, so the draw follows the traffic as it is now while the reservoir keeps
        the sources the recent windows lack (off by default: on the drifting scenario it
        did not help, docs/benchmarks.md)."""
        x, y, src, fresh = self._parts()
        ys = y.astype(str)
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        for label in sorted(set(ys.tolist())):
            in_class = np.flatnonzero(ys == label)
            groups: dict[str, np.ndarray] = {}
            for s in sorted(set(src[in_class].astype(str).tolist())) if by_source else [""]:
                idx = in_class[src[in_class].astype(str) == s] if by_source else in_class
                idx = self.rng.permutation(idx)
                if recent_first:
                    idx = np.concatenate([idx[fresh[idx]], idx[~fresh[idx]]])
                groups[s] = idx
            chosen = _share(groups, per_class)
            for idx in chosen:
                cut = max(1, int(round(len(idx) * holdout))) if len(idx) > 1 else 0
                parts.append((x[idx[cut:]], y[idx[cut:]], x[idx[:cut]], y[idx[:cut]]))
        if not parts:
            empty = np.zeros((0, x.shape[1] if x.ndim == 2 else 0), dtype=np.int64)
            return empty, np.zeros(0, object), empty, np.zeros(0, object)
        return tuple(np.concatenate([p[k] for p in parts]) for k in range(4))  # type: ignore


def _share(groups: dict[str, np.ndarray], total: int) -> list[np.ndarray]:
    """The first samples of each group, ``total`` in all, shared evenly (water-filling: a
    group with fewer than its share gives the rest to the others)."""
    sizes = {k: len(v) for k, v in groups.items()}
    quota = dict.fromkeys(groups, 0)
    left = total
    open_ = [k for k in groups if sizes[k] > 0]
    while left > 0 and open_:
        each = max(1, left // len(open_))
        for k in list(open_):
            take = min(each, sizes[k] - quota[k], left)
            quota[k] += take
            left -= take
            if quota[k] >= sizes[k]:
                open_.remove(k)
            if left <= 0:
                break
    return [groups[k][:quota[k]] for k in groups if quota[k] > 0]


@dataclass(frozen=True)
class GateConfig:
    margin: float = 0.02  # correct: held-out macro-F1 >= active's - margin
    min_fidelity_loss: float = 0.01  # necessary: verdicts differ on more than this share


@dataclass(frozen=True)
class GateVerdict:
    install: bool
    reason: str
    new_metric: float | None = None
    active_metric: float | None = None
    fidelity_loss: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"install": self.install, "reason": self.reason, "new_metric": self.new_metric,
                "active_metric": self.active_metric, "fidelity_loss": self.fidelity_loss}


def gate(verified: bool, verify_note: str, y_held: np.ndarray, new_held: np.ndarray,
         active_held: np.ndarray, new_recent: np.ndarray, active_recent: np.ndarray,
         config: GateConfig) -> GateVerdict:
    """LiteFlow's install gate: verified, correct, necessary (in that order)."""
    if not verified:
        return GateVerdict(False, f"not verified: {verify_note}")
    new = macro_f1(y_held, new_held)
    old = macro_f1(y_held, active_held)
    loss = float(np.mean(new_recent != active_recent)) if len(new_recent) else 0.0
    if new is None or old is None:
        return GateVerdict(False, "no held-out labelled samples to judge it on", new, old, loss)
    if new < old - config.margin:
        return GateVerdict(False, f"incorrect: held-out macro-F1 {new:.3f} < active {old:.3f} "
                                  f"- margin {config.margin:g}", new, old, loss)
    if loss <= config.min_fidelity_loss:
        return GateVerdict(False, f"unnecessary: verdicts differ on {loss:.2%} of recent "
                                  f"samples (<= {config.min_fidelity_loss:.2%})", new, old, loss)
    return GateVerdict(True, f"correct (held-out macro-F1 {new:.3f} vs active {old:.3f}) and "
                             f"necessary (verdicts differ on {loss:.2%})", new, old, loss)
