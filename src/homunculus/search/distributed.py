"""A search shared by several processes on several machines: one Optuna study in shared storage.

``homunculus compile SPEC -o OUT --storage URL --study NAME`` is the coordinator: it creates the
study (or continues the one of that name made from the same spec and data), stores the search's
settings and budget in it, runs trials itself and, once the budget is counted, writes OUT from
the study's best trial. ``homunculus worker SPEC --storage URL --study NAME`` joins the study
from any machine that reaches the storage and the data, refuses a study made from another spec
or other data, and runs trials until the budget is counted.

Counting: a trial counts when it is complete or pruned, as in a local search. Before a process
starts a trial it checks that the counted, running and queued trials leave room in the budget;
two processes that both take the last slot are told apart by trial number inside the trial (the
later one is failed as surplus, not counted, and never retried), so a study never counts more
trials than its budget. A trial whose process dies stops beating; any process of the study fails
it after the grace period and queues its configuration again (at most ``MAX_RETRY`` times), so
a killed worker loses no slot of the budget, and its failed attempt is not counted.

A shared search is not reproducible trial by trial: which worker draws which configuration
depends on timing. Each process seeds its sampler from the study's seed and its own identity,
and the TPE sampler treats running trials as bad points (constant liar) so that concurrent
workers spread out.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from homunculus.search.storage import (
    StorageError,
    StorageSpec,
    first_line,
    open_storage,
    retry_callback,
)

SETTINGS_ATTR = "homunculus_search"  # what the study depends on (spec, data, seed...)
SHARED_ATTR = "homunculus_shared"  # the budget and heartbeat the coordinator set
BEAT_ATTR = "homunculus_heartbeat"  # a journal trial's last beat (epoch seconds)
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
DEFAULT_HEARTBEAT_S = 10
POLL_S = 1.0


@dataclass(frozen=True)
class Shared:
    """Where the shared study is and how often its running trials beat."""

    storage: StorageSpec
    study: str
    heartbeat: int = DEFAULT_HEARTBEAT_S

    @property
    def grace(self) -> int:
        """Seconds without a beat after which a running trial is declared dead."""
        return 3 * self.heartbeat


class SurplusTrial(Exception):
    """A trial started when the budget was already taken by other processes' trials."""


class _DropSurplusLogs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "SurplusTrial" not in record.getMessage()


logging.getLogger("optuna").addFilter(_DropSurplusLogs())


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def process_seed(seed: int) -> int:
    """A sampler seed for this process, derived from the study's seed and the process."""
    ident = [seed, os.getpid(), *socket.gethostname().encode()[:16]]
    return int(np.random.SeedSequence(ident).generate_state(1)[0])


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return sorted(s.study_name for s in storage.get_all_studies())


def differences(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Which settings differ, for a message (the data only by its digest)."""
    out = []
    for key in sorted(set(stored) | set(now)):
        if stored.get(key) != now.get(key):
            if key == "data":
                out.append("the data (training rows, labels or folds)")
            else:
                out.append(f"{key} (study: {str(stored.get(key))[:80]}, "
                           f"here: {str(now.get(key))[:80]})")
    return out


def _load(storage: optuna.storages.BaseStorage, name: str,
          sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    except KeyError:
        return None


def check_settings(study: optuna.Study, settings: dict[str, Any], shared: Shared,
                   role: str) -> None:
    """StorageError unless ``study`` was made for exactly these settings."""
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if not isinstance(stored, dict):
        raise StorageError(f"study '{shared.study}' in {shared.storage.shown} was not made by "
                           "homunculus compile --storage; choose another --study name")
    diff = differences(stored, settings)
    if diff:
        what = ("it was made from a different spec or data" if role == "coordinator" else
                "this worker was started on a different spec or data")
        raise StorageError(f"study '{shared.study}' in {shared.storage.shown}: {what}; it "
                           f"differs in {'; '.join(diff)}. The study is left as it is"
                           + ("; choose another --study name" if role == "coordinator" else ""))


def open_coordinated(shared: Shared, settings: dict[str, Any], directions: list[str],
                     trials: int | None, seconds: float | None,
                     warm_start: Callable[[optuna.Study], None]) -> optuna.Study:
    """Create the shared study (queueing the warm start) or continue the one made from the same
    settings; store the budget. The returned study has no sampler of this process yet."""
    storage = open_storage(shared.storage)
    study = _load(storage, shared.study)
    if study is None:
        try:
            study = optuna.create_study(study_name=shared.study, storage=storage,
                                        directions=directions, load_if_exists=True)
        except optuna.exceptions.OptunaError as exc:
            raise StorageError(f"--storage {shared.storage.shown}: cannot create study "
                               f"'{shared.study}': {first_line(exc)}") from None
        if not study.trials and SETTINGS_ATTR not in study.user_attrs:
            study.set_user_attr(SETTINGS_ATTR, settings)
            warm_start(study)
    check_settings(study, settings, shared, "coordinator")
    if [d.name.lower() for d in study.directions] != [d.lower() for d in directions]:
        raise StorageError(f"study '{shared.study}' optimises other objectives; choose another "
                           "--study name")
    stop_at = None if seconds is None else time.time() + seconds
    study.set_user_attr(SHARED_ATTR, {"trials": trials, "stop_at": stop_at,
                                      "heartbeat": shared.heartbeat})
    return study


def join_shared(shared: Shared, wait_s: float) -> optuna.Study:
    """The shared study for a worker, waiting up to ``wait_s`` for the coordinator to make it."""
    storage = open_storage(shared.storage)
    deadline = time.monotonic() + wait_s
    while True:
        study = _load(storage, shared.study)
        if study is not None and SHARED_ATTR in study.user_attrs:
            return study
        if time.monotonic() >= deadline:
            names = study_names(storage)
            raise StorageError(f"no study '{shared.study}' in {shared.storage.shown} (it holds "
                               f"{', '.join(repr(n) for n in names) if names else 'no study'}); "
                               "start homunculus compile --storage ... --study first, or give "
                               "the worker a longer --wait")
        time.sleep(POLL_S)


def stored_settings(study: optuna.Study) -> dict[str, Any]:
    stored = study.user_attrs.get(SETTINGS_ATTR)
    return stored if isinstance(stored, dict) else {}


def with_sampler(study: optuna.Study, shared: Shared,
                 sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """The study again, on a storage with heartbeats and with this process's sampler."""
    beat = study.user_attrs.get(SHARED_ATTR, {}).get("heartbeat", shared.heartbeat)
    heartbeat = beat if isinstance(beat, int) and beat > 0 else shared.heartbeat
    shared = Shared(shared.storage, shared.study, heartbeat)
    storage = open_storage(shared.storage, heartbeat, shared.grace)
    loaded = _load(storage, shared.study, sampler)
    assert loaded is not None
    return loaded


# ----------------------------------------------------------------------------- running trials


def budget_of(study: optuna.Study) -> tuple[int | None, float | None]:
    info = study.user_attrs.get(SHARED_ATTR, {})
    return info.get("trials"), info.get("stop_at")


def heartbeat_of(study: optuna.Study) -> int:
    beat = study.user_attrs.get(SHARED_ATTR, {}).get("heartbeat", DEFAULT_HEARTBEAT_S)
    return beat if isinstance(beat, int) and beat > 0 else DEFAULT_HEARTBEAT_S


def is_journal(study: optuna.Study) -> bool:
    storage = study._storage
    inner = getattr(storage, "_backend", storage)  # Optuna wraps RDB storages in a cache
    return isinstance(inner, optuna.storages.JournalStorage)


def check_room(study: optuna.Study, trial: optuna.Trial) -> None:
    """Raise SurplusTrial if the trials before this one already take the whole budget."""
    trials, _ = budget_of(study)
    if trials is None or trial.number < trials:
        return  # fewer trials than the budget were created before this one: it has room
    ahead = [t for t in study.get_trials(deepcopy=False, states=TAKEN)
             if t.number < trial.number]
    if len(ahead) >= trials:
        trial.set_user_attr("surplus", True)
        raise SurplusTrial(f"the budget of {trials} trials was taken by other processes")


@contextmanager
def journal_heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Beat for ``trial`` in a journal study (Optuna's journal storage has no heartbeat)."""
    storage, trial_id = study._storage, trial._trial_id
    interval = heartbeat_of(study)
    stop = threading.Event()

    def beat() -> bool:
        try:
            storage.set_trial_system_attr(trial_id, BEAT_ATTR, time.time())
            return True
        except optuna.exceptions.UpdateFinishedTrialError:
            return False  # declared dead by another process: the retry runs elsewhere

    def loop() -> None:
        while not stop.wait(interval) and beat():
            pass

    beat()
    thread = threading.Thread(target=loop, name="homunculus-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale_journal(study: optuna.Study) -> list[int]:
    """Fail the running trials of a journal study that stopped beating; queue them again."""
    grace = 3 * heartbeat_of(study)
    now, storage, failed = time.time(), study._storage, []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        last = t.system_attrs.get(BEAT_ATTR)
        if not isinstance(last, int | float):
            last = t.datetime_start.timestamp() if t.datetime_start else now
        if now - last <= grace:
            continue
        try:
            if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process got there first
        retry_callback()(study, storage.get_trial(t._trial_id))
        failed.append(t.number)
    return failed


def fail_stale(study: optuna.Study) -> None:
    if is_journal(study):
        fail_stale_journal(study)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


def shared_objective(study: optuna.Study, objective: Callable[[optuna.Trial], Any]
                     ) -> Callable[[optuna.Trial], Any]:
    """``objective`` with the budget check, the worker's name and (journal) the heartbeat."""
    journal = is_journal(study)
    me = worker_id()

    def run(trial: optuna.Trial) -> Any:
        check_room(study, trial)
        trial.set_user_attr("worker", me)
        with journal_heartbeat(study, trial) if journal else nullcontext():
            return objective(trial)

    return run


@dataclass
class Work:
    """What one process did in a shared search."""

    ran: int = 0  # trials this process started (surplus ones included)
    counted: int = 0  # counted trials of the study at the end
    seconds: float = 0.0


def run_shared(study: optuna.Study, objective: Callable[[optuna.Trial], Any],
               on_counted: Callable[[optuna.trial.FrozenTrial], None] | None = None,
               poll_s: float = POLL_S) -> Work:
    """Run trials of ``study`` until its budget is counted (or its time is up and no trial is
    running); ``on_counted`` is called once for every counted trial of any process."""
    work, seen, start = Work(), set(), time.monotonic()
    guarded = shared_objective(study, objective)
    idle = False
    while True:
        if idle:  # (a process that starts a trial fails stale ones first: Optuna does)
            fail_stale(study)
        trials = study.get_trials(deepcopy=False)
        for t in trials:
            if t.state in COUNTED and t.number not in seen:
                seen.add(t.number)
                if on_counted is not None:
                    on_counted(t)
        budget, stop_at = budget_of(study)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if budget is not None and len(seen) >= budget:
            break
        idle = True
        if stop_at is not None and time.time() >= stop_at:
            if not running:
                break
        elif waiting or budget is None or len(seen) + running < budget:
            idle = False
            if is_journal(study):
                fail_stale(study)  # Optuna only does this for databases
            work.ran += 1
            # UpdateFinishedTrialError: the trial was declared dead (no beat in time) and
            # queued again while it ran here
            with suppress(optuna.exceptions.UpdateFinishedTrialError):
                study.optimize(guarded, n_trials=1, catch=(SurplusTrial,))
            continue
        time.sleep(poll_s)
    work.counted, work.seconds = len(seen), time.monotonic() - start
    return work


def counted_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=COUNTED)


def snapshot(study: optuna.Study, path: Any) -> None:
    """Copy the shared study into a new SQLite file (OUT keeps a record of its search)."""
    optuna.copy_study(from_study_name=study.study_name, from_storage=study._storage,
                      to_storage=f"sqlite:///{path}", to_study_name=study.study_name)
