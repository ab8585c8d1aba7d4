"""A throwaway PostgreSQL server for the distributed-search tests and benchmarks.

Debian's ``postgresql`` package (scripts/install.sh installs it) provides ``initdb`` and
``pg_ctl``; the package's own cluster is never touched. The server lives in a fresh temporary
directory, listens only on a Unix socket in that directory (no TCP port, so concurrent runs
cannot collide) and trusts local connections. PostgreSQL refuses to run as root, so as root it
runs as the ``postgres`` user the package creates (``runuser -u postgres``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SERVER_USER = "postgres"


def pg_bin(name: str) -> str | None:
    """The path of a PostgreSQL server program (newest installed major version), or None."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0)
    return found[-1] if found else shutil.which(name)


def missing_reason() -> str | None:
    """Why no server can be started here (None: one can)."""
    if pg_bin("initdb") is None or pg_bin("pg_ctl") is None:
        return "PostgreSQL's initdb/pg_ctl are not installed (bash scripts/install.sh)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no '{SERVER_USER}' user to run the server"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


def _as_server_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", SERVER_USER, "--", *argv] if os.geteuid() == 0 else argv


def _run(argv: list[str], log: Path) -> None:
    with open(log, "ab") as f:
        proc = subprocess.run(_as_server_user(argv), stdout=f, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} failed (exit {proc.returncode}):\n"
                           + log.read_text(errors="replace")[-3000:])


@contextmanager
def postgres_server(prefix: str = "hmn-pg-", database: str = "homunculus") -> Iterator[str]:
    """Start a server in a new temporary directory; yield a DSN to ``database`` on it; stop the
    server and remove the directory at the end."""
    reason = missing_reason()
    if reason is not None:
        raise RuntimeError(reason)
    root = Path(tempfile.mkdtemp(prefix=prefix))
    data, log = root / "data", root / "server.log"
    os.chmod(root, 0o755)  # the server user must reach its data and socket directories
    data.mkdir(mode=0o700)
    log.touch()
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_USER)
        for path in (root, data, log):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    started = False
    try:
        _run([pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
              "--no-sync", "-E", "UTF8"], log)
        options = (f"-c listen_addresses='' -c unix_socket_directories='{root}' "
                   "-c fsync=off -c max_connections=100")
        _run([pg_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w",
              "-t", "60", "start"], log)
        started = True
        _run([pg_bin("createdb") or "createdb", "-h", str(root), "-U", "postgres", database],
             log)
        yield f"postgresql://postgres@/{database}?host={root}"
    finally:
        if started:
            subprocess.run(_as_server_user([pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate",
                                            "-w", "stop"]), stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=120, check=False)
        shutil.rmtree(root, ignore_errors=True)
