"""Opening input files safely: regular files only (a FIFO or a device would block or never end),
of bounded size, with errors that name the file."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from homunculus.errors import DataError, HomunculusError

MiB = 1 << 20
MAX_SPEC_BYTES = 4 * MiB
MAX_LABEL_FILE_BYTES = 64 * MiB
MAX_TABLE_BYTES = 1024 * MiB
MAX_CAPTURE_BYTES = 16 * 1024 * MiB  # read in a bounded window, never whole

Error = Callable[[str], HomunculusError]


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n} bytes"


def open_regular(path: Path, what: str, max_bytes: int,
                 error: Error | None = None) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file of at most ``max_bytes``.

    The file is opened without blocking and checked on the open descriptor, so a FIFO, a device
    or a file swapped in between is refused rather than read. ``error`` builds the exception
    (default DataError, prefixed with the path).
    """
    make = error or (lambda msg: DataError(f"{path}: {msg}"))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise make(f"cannot read the {what}: {exc.strerror or exc}") from None
    except ValueError:  # a NUL in the path
        raise make(f"cannot read the {what}: the path contains a NUL character") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise make(f"the {what} is {_kind(st.st_mode)}, not a regular file")
        if st.st_size > max_bytes:
            raise make(f"the {what} is {_size(st.st_size)}; at most {_size(max_bytes)} "
                       "are accepted")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, what: str, max_bytes: int, error: Error | None = None) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (see :func:`open_regular`)."""
    with open_regular(path, what, max_bytes, error) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew while we read it
        raise (error or (lambda msg: DataError(f"{path}: {msg}")))(
            f"the {what} is larger than {_size(max_bytes)}")
    return data


def read_text(path: Path, what: str, max_bytes: int, error: Error | None = None) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes``."""
    data = read_regular(path, what, max_bytes, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        make = error or (lambda msg: DataError(f"{path}: {msg}"))
        raise make(f"the {what} is not UTF-8 text (byte {exc.start})") from None
