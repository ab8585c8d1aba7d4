"""Where a shared (distributed) study lives: a PostgreSQL database or an Optuna journal file.

``--storage`` takes a PostgreSQL DSN (``postgresql://user:password@host:5432/db``; any libpq
parameter may follow ``?``, e.g. ``?host=/run/postgresql`` for a Unix socket or
``?sslmode=require``), an SQLite URL (``sqlite:////abs/path.db``, for workers on one machine) or
``journal:PATH`` for Optuna's journal file storage on a shared file system (NFS and the like).

Running trials are kept alive by heartbeats. In a database, Optuna's own: each trial's process
beats every ``heartbeat`` seconds, and any process of the study fails a trial whose beat is
older than the grace period and queues it again (``RetryHeartbeatStaleTrialCallback``, the
successor of ``RetryFailedTrialCallback``). Optuna's journal storage has no heartbeats, so for a
journal file Homunculus keeps the same scheme in the trial's system attributes (see
distributed.py). Passwords never appear in messages.
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback

from homunculus.errors import HomunculusError

RDB_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg", "sqlite")
JOURNAL_PREFIX = "journal:"
MAX_RETRY = 3  # a trial whose process dies is run again at most this many times
CONNECT_TIMEOUT_S = 10
SETUP_ATTEMPTS = 6


class StorageError(HomunculusError):
    """A --storage that cannot be used: malformed, unreachable, or refused."""


@dataclass(frozen=True)
class StorageSpec:
    """A parsed --storage: its kind (``rdb`` or ``journal``), the URL or path to open, and the
    text to show (password hidden)."""

    kind: str
    target: str
    shown: str


def hide_password(url: str) -> str:
    """``url`` with the password of its user-info part (and a ``password=`` parameter) hidden."""
    url = re.sub(r"^([a-z0-9+]+://[^:/@?#]*):[^@/?#]*@", r"\1:***@", url, flags=re.I)
    return re.sub(r"(password=)[^&]*", r"\1***", url, flags=re.I)


def parse_storage(text: str) -> StorageSpec:
    """Check the form of a --storage value (nothing is opened yet)."""
    text = text.strip()
    if text.startswith(JOURNAL_PREFIX):
        path = text[len(JOURNAL_PREFIX):]
        path = path[2:] if path.startswith("//") else path
        if not path:
            raise StorageError("--storage journal: needs a file path (journal:/shared/study.log)")
        return StorageSpec("journal", str(Path(path)), f"journal:{path}")
    match = re.match(r"^([A-Za-z0-9+]+)://", text)
    scheme = match.group(1).lower() if match else None
    if scheme not in RDB_SCHEMES:
        raise StorageError(f"--storage {hide_password(text)!r} is not a storage Homunculus can "
                           "use: give a PostgreSQL DSN (postgresql://user:password@host:5432/db), "
                           "an SQLite URL (sqlite:////path/study.db) or journal:PATH")
    assert match is not None
    url = text
    if scheme in ("postgresql", "postgres"):  # psycopg 3, whatever SQLAlchemy's default
        url = "postgresql+psycopg://" + text[match.end():]
    return StorageSpec("rdb", url, hide_password(text))


def retry_callback() -> RetryHeartbeatStaleTrialCallback:
    """Queue a dead trial's configuration again (at most MAX_RETRY times)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def _engine_kwargs(spec: StorageSpec) -> dict:
    if spec.target.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    return {}


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_storage(spec: StorageSpec, heartbeat: int | None = None,
                 grace: int | None = None) -> optuna.storages.BaseStorage:
    """Open (and, for a new database, set up) the storage; StorageError if that fails. With
    ``heartbeat``, a database's running trials beat and stale ones are retried."""
    if spec.kind == "journal":
        path = Path(spec.target)
        if not path.parent.is_dir():
            raise StorageError(f"--storage {spec.shown}: the directory {path.parent} does not "
                               "exist")
        try:
            backend = optuna.storages.journal.JournalFileBackend(str(path))
            return optuna.storages.JournalStorage(backend)
        except (OSError, ValueError) as exc:
            raise StorageError(f"--storage {spec.shown}: {first_line(exc)}") from None
    import sqlalchemy.exc

    kwargs: dict = {}
    if heartbeat is not None:
        kwargs = {"heartbeat_interval": heartbeat, "grace_period": grace or 3 * heartbeat,
                  "heartbeat_stale_trial_callback": retry_callback()}
    for attempt in range(SETUP_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(spec.target,
                                                  engine_kwargs=_engine_kwargs(spec), **kwargs)
        except ImportError as exc:
            raise StorageError(f"--storage {spec.shown}: no database driver ({exc})") from None
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            # processes that set up a new database at the same time race to create its tables:
            # the losers see duplicates; by the next attempt the tables exist
            if attempt + 1 == SETUP_ATTEMPTS:
                raise StorageError(f"--storage {spec.shown}: cannot set up the database: "
                                   f"{first_line(exc)}") from None
            time.sleep(0.5 * (attempt + 1))
        except (sqlalchemy.exc.SQLAlchemyError, ValueError, OSError) as exc:
            raise StorageError(f"--storage {spec.shown}: cannot open the database: "
                               f"{first_line(exc)}") from None
    raise AssertionError("unreachable")
