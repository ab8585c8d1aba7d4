"""Crash points for the kill -9 tests: ``HOMUNCULUS_KILL_AT=name[:n]`` kills the process there.

The compiler calls :func:`checkpoint` at the moments a crash matters to what is left on disk
(between trials, inside a trial, during the final write, between the renames that commit OUT).
Unless the variable names that point (and, with ``:n``, its n-th passage, counting from 0) a
checkpoint does nothing; when it does, the process sends itself SIGKILL, so no ``finally`` block,
atexit handler or buffered write runs: exactly what a power cut or ``kill -9`` would leave.
"""

from __future__ import annotations

import os
import signal

ENV = "HOMUNCULUS_KILL_AT"
_passed: dict[str, int] = {}


def checkpoint(name: str) -> None:
    """Die here (SIGKILL) when ``HOMUNCULUS_KILL_AT`` selects this point; else return at once."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    seen = _passed.get(name, 0)
    _passed[name] = seen + 1
    if not nth or int(nth) == seen:
        os.kill(os.getpid(), signal.SIGKILL)
