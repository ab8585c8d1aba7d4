"""Output directories: which OUT a compile may use, an exclusive lock on it, an atomic commit.

A compile never deletes or renames anything it did not create:

* OUT must be new, empty, or written by Homunculus: it then holds the marker ``.homunculus.json``
  listing every file the compile wrote, and a file not on that list makes the OUT refused. OUT
  cannot be the current directory or one of its parents, contain the spec or the data, be a file,
  a symbolic link or a special path (``/``, ``/proc``, ``/sys``, ``/dev``).
* ``.OUT.lock`` beside OUT is locked (flock) for the whole compile and holds the compiling pid; a
  second compile of the same OUT is refused with that pid. The kernel drops the lock when the
  process dies, however it dies; the file is removed when the compile ends.
* The compile works in ``.OUT.partial`` beside OUT (same file system: renames are atomic). Its
  study lives there during the search and its artefacts are written there; only when everything
  is verified is it marked complete and swapped with OUT in one rename (``renameat2`` with
  ``RENAME_EXCHANGE``; on a file system without it, OUT -> ``.OUT.old`` then partial -> OUT).
  Killed at any moment, a compile leaves the previous OUT as it was or the new one complete.
* At the start of a compile, under the lock, whatever a dead compile left is put right: a complete
  partial that was not committed is committed, an interrupted commit is finished or rolled back,
  the remains of a finished commit are removed, and a partial search is kept for ``--resume``
  (a compile without ``--resume`` removes it).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homunculus.errors import HomunculusError
from homunculus.faults import checkpoint

MARKER = ".homunculus.json"
FORMAT = "homunculus-out/1"
SPECIAL_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))
MAX_NAME_BYTES = 200  # leaves room for the ".NAME.partial" siblings within NAME_MAX (255)
MAX_PATH_BYTES = 3000
MAX_ENTRIES = 10_000  # more files than any compile writes
MAX_MARKER_BYTES = 4 << 20
# what an OUT written before the marker existed may hold (top-level names only)
LEGACY_NAMES = frozenset({"p4", "runtime", "model", "c", "xdp", "pipeline.json",
                          "resources.json", "report.json", "report.html", "study.db"})


class OutputError(HomunculusError):
    """An output directory that cannot be used, or is in use."""


# ---------------------------------------------------------------------------------------------
# which OUT may be used


@dataclass(frozen=True)
class OutPaths:
    """OUT and its siblings: the lock file, the compile in progress, a commit's old OUT."""

    out: Path

    def sibling(self, suffix: str) -> Path:
        return self.out.with_name(f".{self.out.name}.{suffix}")

    @property
    def lock(self) -> Path:
        return self.sibling("lock")

    @property
    def partial(self) -> Path:
        return self.sibling("partial")

    @property
    def old(self) -> Path:
        return self.sibling("old")


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "a file"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a directory"


def absolute(path: Path) -> Path:
    """``path`` made absolute with its parent's symbolic links resolved (not its own name)."""
    raw = Path(os.path.abspath(path))
    if raw == Path(raw.anchor):
        return raw
    return raw.parent.resolve() / raw.name


def check_out_dir(out: Path, inputs: Iterable[Path] = ()) -> Path:
    """The absolute OUT if a compile may write it, else an OutputError saying why not.

    ``inputs`` are the files the compile reads (spec, data, captures): OUT may not contain them.
    """
    shown = str(out)
    if not shown.strip() or shown.strip() in (".", "./"):
        raise OutputError(f"the output directory '{shown}' is the current directory; "
                          "give a new or Homunculus-made directory with -o")
    if len(os.fsencode(shown)) > MAX_PATH_BYTES:
        raise OutputError(f"the output path is too long ({len(os.fsencode(shown))} bytes)")
    try:
        path = absolute(out)
    except (OSError, RuntimeError) as exc:
        raise OutputError(f"output directory {shown}: {getattr(exc, 'strerror', None) or exc}"
                          ) from None
    if path == Path(path.anchor) or path.name in ("", ".", ".."):
        raise OutputError(f"the output directory {shown} is the root of the file system")
    if len(os.fsencode(path.name)) > MAX_NAME_BYTES:
        raise OutputError(f"the output directory's name is too long "
                          f"({len(os.fsencode(path.name))} bytes; at most {MAX_NAME_BYTES})")
    for root in SPECIAL_ROOTS:
        if _inside(path, root):
            raise OutputError(f"the output directory {shown} is under {root}, a special file "
                              "system; give a directory on disk")
    cwd = Path.cwd().resolve()
    if _inside(cwd, path):
        what = "the current directory" if path == cwd else "a parent of the current directory"
        raise OutputError(f"the output directory {shown} is {what}: a compile replaces its "
                          "output directory, so give a new or Homunculus-made directory")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputError(f"output directory {shown}: {exc.strerror}") from None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"the output directory {shown} is {_kind(st.st_mode)}, not a "
                          "directory; give a new or Homunculus-made directory")
    for source in inputs:
        if _inside(absolute(Path(source)), path):
            raise OutputError(f"the output directory {shown} contains the input {source}: "
                              "write the output somewhere else")
    if st is not None:
        owned_files(path)  # refuses a directory with files Homunculus did not write
    return path


# ---------------------------------------------------------------------------------------------
# markers and manifests


def read_marker(directory: Path) -> dict[str, Any] | None:
    """The marker of a Homunculus-made directory, or None (absent or not ours)."""
    path = directory / MARKER
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            data = json.loads(f.read(MAX_MARKER_BYTES))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    if not isinstance(data.get("generation"), int) or data.get("state") not in (
            "partial", "complete"):
        return None
    files = data.get("files", [])
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return data


def write_marker(directory: Path, **content: Any) -> None:
    """Write (atomically replace) the marker of ``directory``."""
    data = {"format": FORMAT, **content}
    tmp = directory / (MARKER + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MARKER)


def manifest(directory: Path) -> list[str]:
    """Every file and directory under ``directory`` (relative POSIX paths), the marker excepted;
    OutputError beyond MAX_ENTRIES."""
    out: list[str] = []
    for root, dirs, files in os.walk(directory):
        rel = Path(root).relative_to(directory)
        for name in dirs + files:
            entry = (rel / name).as_posix()
            if entry not in (MARKER, MARKER + ".tmp"):
                out.append(entry)
        if len(out) > MAX_ENTRIES:
            raise OutputError(f"{directory} holds more than {MAX_ENTRIES} files: not an output "
                              "directory of Homunculus; give another")
    return sorted(out)


def _shown(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more


def owned_files(out: Path) -> list[str]:
    """The files of an existing OUT that Homunculus wrote (all of them, or OutputError)."""
    entries = manifest(out)
    if not entries:
        return []
    marker = read_marker(out)
    if marker is not None and marker["state"] == "complete":
        foreign = sorted(set(entries) - set(marker["files"]))
        if foreign:
            raise OutputError(f"the output directory {out} holds files Homunculus did not write "
                              f"({_shown(foreign)}); move them away or choose another directory")
        return entries
    top = sorted({e.split("/", 1)[0] for e in entries})
    if marker is None and set(top) <= LEGACY_NAMES and {"report.json", "study.db"} & set(top):
        return entries  # written by an earlier version of Homunculus
    raise OutputError(f"the output directory {out} is not empty and was not made by Homunculus "
                      f"(it holds {_shown(top)}); give a new or empty directory")


def remove_listed(directory: Path, files: Iterable[str]) -> list[str]:
    """Delete the listed entries of ``directory``, its marker and, if then empty, the directory
    itself; return what is left (entries Homunculus did not list are never deleted)."""
    for rel in sorted(set(files), key=lambda r: (-r.count("/"), r)):
        path = directory / rel
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            if path.is_dir() and not path.is_symlink():
                with contextlib.suppress(OSError):
                    path.rmdir()
            else:
                path.unlink()
    for name in (MARKER, MARKER + ".tmp"):
        (directory / name).unlink(missing_ok=True)
    try:
        directory.rmdir()
    except FileNotFoundError:
        return []
    except OSError:
        return manifest(directory)
    return []


def remove_ours(directory: Path) -> list[str]:
    """Remove a directory Homunculus made (its marker's files, or an earlier version's layout)."""
    marker = read_marker(directory)
    if marker is not None and marker["state"] == "complete":
        return remove_listed(directory, marker["files"])
    if marker is not None:  # a partial compile: everything in it is ours
        shutil.rmtree(directory, ignore_errors=True)
        return []
    entries = manifest(directory)
    return remove_listed(directory, [e for e in entries if e.split("/", 1)[0] in LEGACY_NAMES])


# ---------------------------------------------------------------------------------------------
# the lock


_PID_LINE = re.compile(rb"^\d*\n?$")


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).strip()
    except OSError:
        return "unknown"
    return text.decode() if text.isdigit() else "unknown"


def acquire_lock(paths: OutPaths) -> int:
    """Lock ``.OUT.lock`` (created if need be) and write our pid into it; the locked fd."""
    while True:
        try:
            fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
                         | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot create the lock file {paths.lock}: "
                              f"{exc.strerror or exc}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OutputError(f"{paths.lock} exists and is not a lock file; remove it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OutputError(f"the output directory {paths.out} is in use by pid "
                                  f"{_read_pid(fd)} (another compile); wait for it to finish "
                                  "or choose another directory") from None
            try:  # a holder removes the file before unlocking: ours must still be the file
                same = os.path.samestat(os.fstat(fd), os.stat(paths.lock))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            if not _PID_LINE.match(os.pread(fd, 64, 0)):
                raise OutputError(f"{paths.lock} exists and is not a Homunculus lock file; "
                                  "remove it")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise


def release_lock(paths: OutPaths, fd: int) -> None:
    """Remove the lock file, then unlock (in that order: see acquire_lock)."""
    with contextlib.suppress(OSError):
        os.unlink(paths.lock)
    os.close(fd)


# ---------------------------------------------------------------------------------------------
# commit


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directory entries (Linux renameat2); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _generation(directory: Path) -> int:
    marker = read_marker(directory)
    return marker["generation"] if marker else 0


def commit(paths: OutPaths) -> list[str]:
    """Make the complete partial OUT; remove the previous OUT (what Homunculus wrote of it).
    Returns entries of the previous OUT that were left (not written by Homunculus)."""
    if not paths.out.exists():
        os.rename(paths.partial, paths.out)
        return []
    if exchange(paths.partial, paths.out):
        checkpoint("between-renames")
        return remove_ours(paths.partial)
    os.rename(paths.out, paths.old)
    checkpoint("between-renames")
    os.rename(paths.partial, paths.out)
    return remove_ours(paths.old)


def recover(paths: OutPaths) -> None:
    """Put right what a dead compile of this OUT left behind (call with the lock held)."""
    partial = read_marker(paths.partial) if paths.partial.is_dir() else None
    complete = partial is not None and partial["state"] == "complete"
    if paths.old.is_dir():
        if paths.out.exists():
            remove_ours(paths.old)
        elif complete:
            os.rename(paths.partial, paths.out)
            remove_ours(paths.old)
            return
        else:
            os.rename(paths.old, paths.out)
    if paths.partial.is_dir():
        if partial is None:
            left = [e for e in manifest(paths.partial) if not e.startswith(MARKER)]
            if left:
                raise OutputError(f"{paths.partial} exists but was not made by Homunculus "
                                  f"(it holds {_shown(left)}); move it away")
            shutil.rmtree(paths.partial)
        elif complete:
            if not paths.out.exists() or partial["generation"] > _generation(paths.out):
                commit(paths)  # a verified compile that died before its commit
            else:
                remove_ours(paths.partial)  # the previous OUT, swapped out by a commit
    pattern = re.compile(re.escape(f".{paths.out.name}.staging.") + r"[A-Za-z0-9_]{8}")
    for stale in paths.out.parent.glob(f".{glob_escape(paths.out.name)}.staging.*"):
        if pattern.fullmatch(stale.name) and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)  # an earlier version's dead staging


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


# ---------------------------------------------------------------------------------------------
# a compile's output


@dataclass
class Output:
    """OUT while a compile holds it: the lock, the partial workspace and what to do at the end."""

    paths: OutPaths
    lock_fd: int
    fresh_partial: bool = False  # created by this compile (removed on failure)
    resumed: str | None = None  # "partial" or "out": where the resumed study came from

    @property
    def work(self) -> Path:
        return self.paths.partial

    @property
    def study_path(self) -> Path:
        return self.paths.partial / "study.db"

    def start(self, resume: bool) -> None:
        """Prepare the partial workspace: continue a dead compile's search or OUT's study
        (``resume``), or start afresh."""
        marker = read_marker(self.work) if self.work.is_dir() else None
        if (resume and marker is not None and marker["state"] == "partial"
                and self.study_path.is_file()):
            self.resumed = "partial"
            return
        if self.work.is_dir():
            shutil.rmtree(self.work)
        study = self.paths.out / "study.db"
        if resume and not study.is_file():
            raise OutputError(f"--resume: {self.paths.out} holds no study to resume; compile "
                              "without --resume to start a new search")
        os.mkdir(self.work)
        self.fresh_partial = True
        write_marker(self.work, generation=_generation(self.paths.out) + 1, state="partial",
                     pid=os.getpid())
        if resume:
            shutil.copyfile(study, self.study_path)
            self.resumed = "out"

    def commit(self) -> list[str]:
        """Mark the workspace complete (listing its files) and make it OUT."""
        marker = read_marker(self.work) or {}
        write_marker(self.work, generation=marker.get("generation", 1), state="complete",
                     pid=os.getpid(), files=manifest(self.work))
        checkpoint("before-commit")
        left = commit(self.paths)
        self.fresh_partial = False
        return left

    def abandon(self, interrupted: bool) -> None:
        """After a failure: drop the workspace this compile made, unless the compile was
        interrupted (it then holds a search ``--resume`` continues)."""
        if self.fresh_partial and not interrupted and self.work.is_dir():
            shutil.rmtree(self.work, ignore_errors=True)


def remove_empty_dirs(created: list[Path]) -> None:
    """rmdir the directories (innermost last in the list) that are still empty."""
    for path in reversed(created):
        with contextlib.suppress(OSError):
            path.rmdir()


def make_parents(directory: Path) -> list[Path]:
    """mkdir -p ``directory``; the directories it created, outermost first."""
    created: list[Path] = []
    try:
        missing = []
        probe = directory
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        for path in reversed(missing):
            with contextlib.suppress(FileExistsError):
                path.mkdir()
                created.append(path)
        if not directory.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(directory))
    except OSError as exc:
        remove_empty_dirs(created)
        raise OutputError(f"cannot create {exc.filename or directory}: "
                          f"{exc.strerror or exc}") from None
    return created


@contextlib.contextmanager
def open_output(out: Path) -> Iterator[Output]:
    """Hold OUT (checked by :func:`check_out_dir`) for a compile: create its parent, lock it and
    recover what a dead compile left. On failure, remove what this compile made."""
    paths = OutPaths(out)
    created = make_parents(out.parent)
    try:
        fd = acquire_lock(paths)
    except BaseException:
        remove_empty_dirs(created)
        raise
    output = Output(paths, fd)
    failed = False
    try:
        recover(paths)
        if paths.out.exists():
            owned_files(paths.out)  # checked again now that OUT is ours
        yield output
    except KeyboardInterrupt:
        output.abandon(interrupted=True)
        raise
    except BaseException:
        failed = True
        output.abandon(interrupted=False)
        raise
    finally:
        release_lock(paths, fd)
        if failed:
            remove_empty_dirs(created)
