"""libbpf through ctypes: load BPF objects, pin, attach XDP, read/write maps, BPF_PROG_TEST_RUN.

No bcc, no compiled extension: ``libbpf.so.1`` (libbpf >= 1.0, where API calls return ``-errno``
or NULL with ``errno`` set). Every failure raises :class:`BpfError` naming the call, the object
and the errno text.

Lifecycle (what the CLI's deploy/stats/push/undeploy build on)::

    obj = BpfObject.open(path)            # bpf_object__open_file
    obj.load()                            # bpf_object__load (verifier); obj.verifier_stats
    pinned = obj.pin("name")              # /sys/fs/bpf/homunculus/name/{maps,progs}/...
    attach_xdp(ifindex, pinned.prog_fd("hmn_xdp"), mode="skb")
    obj.close()                           # pins and attachment keep everything alive
    ...                                   # later, in another process:
    pinned = Pinned.open("name")          # bpf_obj_get on every pin
    pinned.map("hmn_counts").lookup_sum(0)
    detach_xdp(ifindex); pinned.unpin()

Network namespaces: :func:`in_netns` runs a function on a short-lived thread that first
``setns(CLONE_NEWNET)``s into ``/run/netns/<name>``; only that thread changes namespace (the
netlink socket behind ``bpf_xdp_attach`` and ``if_nametoindex`` are created there), BPF fds are
process-wide, and the thread ends afterwards, so the caller never leaves its namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from homunculus.errors import HomunculusError

BPFFS = Path("/sys/fs/bpf")
PIN_ROOT = BPFFS / "homunculus"
XDP_FLAGS = {"skb": 1 << 1, "native": 1 << 2, "hw": 1 << 3}  # XDP_FLAGS_{SKB,DRV,HW}_MODE
XDP_FLAGS_UPDATE_IF_NOEXIST = 1
XDP_ACTIONS = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}
BPF_ANY = 0
LOG_LEVEL_STATS = 4
CLONE_NEWNET = 0x40000000

T = TypeVar("T")


class BpfError(HomunculusError):
    """A libbpf or bpf(2) call failed."""

    def __init__(self, what: str, err: int, detail: str = "") -> None:
        self.errno = abs(err)
        text = f"{what}: {os.strerror(self.errno)} (errno {self.errno})"
        super().__init__(f"{text}\n{detail}" if detail else text)


class _TestRunOpts(ctypes.Structure):
    """``struct bpf_test_run_opts`` of /usr/include/bpf/bpf.h (libbpf 1.x)."""

    _fields_ = [("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p),
                ("data_out", ctypes.c_void_p), ("data_size_in", ctypes.c_uint32),
                ("data_size_out", ctypes.c_uint32), ("ctx_in", ctypes.c_void_p),
                ("ctx_out", ctypes.c_void_p), ("ctx_size_in", ctypes.c_uint32),
                ("ctx_size_out", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("repeat", ctypes.c_int), ("duration", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32)]


class _MapInfo(ctypes.Structure):
    """The head of ``struct bpf_map_info`` (the kernel fills what fits)."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16)]


PERCPU_MAP_TYPES = frozenset({5, 6, 10, 21})  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU, cgroup


_lib: ctypes.CDLL | None = None
RING_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


def libbpf() -> ctypes.CDLL:
    """The loaded libbpf with the prototypes used here."""
    global _lib
    if _lib is not None:
        return _lib
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise HomunculusError(f"cannot load libbpf ({name}): {exc}; install libbpf1") from None
    vp, i, u32, cp = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_char_p
    protos: dict[str, tuple[type | None, list[type]]] = {
        "bpf_object__open_file": (vp, [cp, vp]),
        "bpf_object__load": (i, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__find_program_by_name": (vp, [vp, cp]),
        "bpf_object__find_map_by_name": (vp, [vp, cp]),
        "bpf_object__next_program": (vp, [vp, vp]),
        "bpf_object__next_map": (vp, [vp, vp]),
        "bpf_program__name": (cp, [vp]),
        "bpf_program__fd": (i, [vp]),
        "bpf_program__set_log_level": (i, [vp, u32]),
        "bpf_program__set_log_buf": (i, [vp, vp, ctypes.c_size_t]),
        "bpf_map__name": (cp, [vp]),
        "bpf_map__fd": (i, [vp]),
        "bpf_map__value_size": (u32, [vp]),
        "bpf_map__key_size": (u32, [vp]),
        "bpf_map__max_entries": (u32, [vp]),
        "bpf_map__type": (i, [vp]),
        "bpf_obj_pin": (i, [i, cp]),
        "bpf_obj_get": (i, [cp]),
        "bpf_obj_get_info_by_fd": (i, [i, vp, ctypes.POINTER(u32)]),
        "bpf_map_update_elem": (i, [i, vp, vp, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (i, [i, vp, vp]),
        "bpf_prog_test_run_opts": (i, [i, ctypes.POINTER(_TestRunOpts)]),
        "bpf_xdp_attach": (i, [i, i, u32, vp]),
        "bpf_xdp_detach": (i, [i, u32, vp]),
        "bpf_xdp_query_id": (i, [i, i, ctypes.POINTER(u32)]),
        "libbpf_num_possible_cpus": (i, []),
        "ring_buffer__new": (vp, [i, RING_CALLBACK, vp, vp]),
        "ring_buffer__poll": (i, [vp, i]),
        "ring_buffer__consume": (i, [vp]),
        "ring_buffer__free": (None, [vp]),
    }
    for fn, (res, args) in protos.items():
        f = getattr(lib, fn)
        f.restype, f.argtypes = res, args
    _lib = lib
    return lib


def _check(rc: int, what: str, detail: str = "") -> int:
    """Raise for a negative libbpf return code (``-errno``; plain -1 means: see errno)."""
    if rc < 0:
        err = -rc if rc != -1 else (ctypes.get_errno() or errno.EPERM)
        raise BpfError(what, err, detail)
    return rc


def _check_ptr(ptr: int | None, what: str) -> int:
    if not ptr:
        raise BpfError(what, ctypes.get_errno() or errno.ENOENT)
    return ptr


def possible_cpus() -> int:
    return _check(libbpf().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


# ---------------------------------------------------------------------------------------------
# maps and programs by fd


@dataclass
class BpfMap:
    """A map by fd with its geometry; values are raw bytes (per-CPU maps: one per CPU)."""

    name: str
    fd: int
    key_size: int
    value_size: int
    max_entries: int
    map_type: int

    @property
    def percpu(self) -> bool:
        return self.map_type in PERCPU_MAP_TYPES

    @classmethod
    def from_fd(cls, fd: int, name: str) -> BpfMap:
        info = _MapInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        _check(libbpf().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
               f"bpf_obj_get_info_by_fd({name})")
        return cls(name, fd, info.key_size, info.value_size, info.max_entries, info.type)

    def _key(self, key: int) -> ctypes.Array:
        return ctypes.create_string_buffer(key.to_bytes(self.key_size, "little"), self.key_size)

    def _slot_bytes(self) -> int:
        """Size of the value buffer: per-CPU values are rounded up to 8 bytes, one per CPU."""
        if self.percpu:
            return ((self.value_size + 7) // 8 * 8) * possible_cpus()
        return self.value_size

    def update(self, key: int, value: bytes, flags: int = BPF_ANY) -> None:
        if self.percpu:
            stride = (self.value_size + 7) // 8 * 8
            value = b"".join(value.ljust(stride, b"\0") for _ in range(possible_cpus()))
        elif len(value) != self.value_size:
            raise ValueError(f"map {self.name}: value of {len(value)} bytes, expected "
                             f"{self.value_size}")
        buf = ctypes.create_string_buffer(value, len(value))
        _check(libbpf().bpf_map_update_elem(self.fd, self._key(key), buf, flags),
               f"bpf_map_update_elem({self.name}[{key}])")

    def lookup(self, key: int) -> bytes | list[bytes]:
        """The value (per-CPU maps: the list of per-CPU values)."""
        size = self._slot_bytes()
        buf = ctypes.create_string_buffer(size)
        _check(libbpf().bpf_map_lookup_elem(self.fd, self._key(key), buf),
               f"bpf_map_lookup_elem({self.name}[{key}])")
        raw = buf.raw
        if not self.percpu:
            return raw
        stride = (self.value_size + 7) // 8 * 8
        return [raw[i:i + self.value_size] for i in range(0, size, stride)]

    def lookup_u64(self, key: int) -> int:
        """A u64 value; per-CPU maps: summed over the possible CPUs."""
        value = self.lookup(key)
        values = value if isinstance(value, list) else [value]
        return sum(int.from_bytes(v[:8], "little") for v in values)

    def update_u32(self, key: int, value: int) -> None:
        self.update(key, value.to_bytes(4, "little"))

    def clear(self) -> None:
        """Zero every entry (array maps)."""
        zero = bytes(self.value_size)
        for k in range(self.max_entries):
            self.update(k, zero)


@dataclass(frozen=True)
class RunResult:
    retval: int
    data: bytes
    duration_ns: int

    @property
    def action(self) -> str:
        return XDP_ACTIONS.get(self.retval, str(self.retval))


def prog_test_run(prog_fd: int, frame: bytes, *, repeat: int = 1, out_room: int = 256) -> RunResult:
    """BPF_PROG_TEST_RUN of an XDP program on one frame."""
    data_in = ctypes.create_string_buffer(frame, len(frame))
    out_size = len(frame) + out_room
    data_out = ctypes.create_string_buffer(out_size)
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), data_in=ctypes.addressof(data_in),
                        data_out=ctypes.addressof(data_out), data_size_in=len(frame),
                        data_size_out=out_size, repeat=repeat)
    _check(libbpf().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)),
           "bpf_prog_test_run_opts")
    return RunResult(opts.retval, data_out.raw[:opts.data_size_out], opts.duration)


# ---------------------------------------------------------------------------------------------
# objects


@dataclass(frozen=True)
class VerifierStats:
    program: str
    insns_processed: int
    log: str


_PROCESSED = re.compile(r"processed (\d+) insns")


@dataclass
class BpfObject:
    """An opened (and, after :meth:`load`, verified and loaded) BPF object file."""

    path: Path
    ptr: int
    verifier_stats: dict[str, VerifierStats] = field(default_factory=dict)
    _logs: dict[str, ctypes.Array] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path | str) -> BpfObject:
        path = Path(path)
        if not path.is_file():
            raise BpfError(f"bpf_object__open_file({path})", errno.ENOENT)
        ptr = _check_ptr(libbpf().bpf_object__open_file(str(path).encode(), None),
                         f"bpf_object__open_file({path})")
        return cls(path, ptr)

    def programs(self) -> list[tuple[str, int]]:
        out, prog = [], libbpf().bpf_object__next_program(self.ptr, None)
        while prog:
            out.append((libbpf().bpf_program__name(prog).decode(), prog))
            prog = libbpf().bpf_object__next_program(self.ptr, prog)
        return out

    def map_names(self) -> list[str]:
        out, m = [], libbpf().bpf_object__next_map(self.ptr, None)
        while m:
            name = libbpf().bpf_map__name(m).decode()
            if "." not in name:  # .rodata, <obj>.rodata, .bss: internal maps
                out.append(name)
            m = libbpf().bpf_object__next_map(self.ptr, m)
        return out

    def load(self, *, log_size: int = 1 << 20) -> None:
        """Verify and load; ``verifier_stats`` then holds instructions processed per program.
        On rejection the verifier's log (its last part) is in the exception."""
        lib = libbpf()
        for name, prog in self.programs():
            buf = ctypes.create_string_buffer(log_size)
            self._logs[name] = buf
            lib.bpf_program__set_log_buf(prog, buf, log_size)
            lib.bpf_program__set_log_level(prog, LOG_LEVEL_STATS)
        rc = lib.bpf_object__load(self.ptr)
        if rc < 0:
            detail = self._failure_log()
            _check(rc, f"bpf_object__load({self.path.name})", detail)
        for name, buf in self._logs.items():
            text = buf.value.decode(errors="replace")
            m = _PROCESSED.search(text)
            self.verifier_stats[name] = VerifierStats(name, int(m.group(1)) if m else -1, text)

    def _failure_log(self) -> str:
        """Re-verify in a fresh object at log level 1 to get the verifier's reasoning."""
        lib = libbpf()
        ptr = lib.bpf_object__open_file(str(self.path).encode(), None)
        if not ptr:
            return ""
        size = 1 << 24
        bufs = []
        try:
            prog = lib.bpf_object__next_program(ptr, None)
            while prog:
                buf = ctypes.create_string_buffer(size)
                bufs.append(buf)
                lib.bpf_program__set_log_buf(prog, buf, size)
                lib.bpf_program__set_log_level(prog, 1 | LOG_LEVEL_STATS)
                prog = lib.bpf_object__next_program(ptr, prog)
            lib.bpf_object__load(ptr)
        finally:
            lib.bpf_object__close(ptr)
        text = "\n".join(b.value.decode(errors="replace") for b in bufs if b.value)
        return "verifier log (tail):\n" + text[-6000:] if text else ""

    def prog_fd(self, name: str) -> int:
        prog = _check_ptr(libbpf().bpf_object__find_program_by_name(self.ptr, name.encode()),
                          f"program {name} in {self.path.name}")
        return _check(libbpf().bpf_program__fd(prog), f"bpf_program__fd({name})")

    def map(self, name: str) -> BpfMap:
        m = _check_ptr(libbpf().bpf_object__find_map_by_name(self.ptr, name.encode()),
                       f"map {name} in {self.path.name}")
        fd = _check(libbpf().bpf_map__fd(m), f"bpf_map__fd({name})")
        return BpfMap.from_fd(fd, name)

    def maps(self) -> dict[str, BpfMap]:
        return {n: self.map(n) for n in self.map_names()}

    def pin(self, name: str, root: Path = PIN_ROOT) -> Pinned:
        """Pin every program and map under ``root/name/{progs,maps}/`` (replacing old pins)."""
        ensure_bpffs()
        base = pin_dir(name, root)
        if base.exists():
            unpin(name, root)
        for sub in ("progs", "maps"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        for prog_name, _ in self.programs():
            _check(libbpf().bpf_obj_pin(self.prog_fd(prog_name),
                                        str(base / "progs" / prog_name).encode()),
                   f"bpf_obj_pin(program {prog_name})")
        for map_name, m in self.maps().items():
            _check(libbpf().bpf_obj_pin(m.fd, str(base / "maps" / map_name).encode()),
                   f"bpf_obj_pin(map {map_name})")
        return Pinned.open(name, root)

    def close(self) -> None:
        if self.ptr:
            libbpf().bpf_object__close(self.ptr)
            self.ptr = 0

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_object(path: Path | str) -> BpfObject:
    """Open and load (verify) a BPF object file."""
    obj = BpfObject.open(path)
    try:
        obj.load()
    except BaseException:
        obj.close()
        raise
    return obj


# ---------------------------------------------------------------------------------------------
# pinning


def ensure_bpffs() -> None:
    """Mount bpffs on /sys/fs/bpf if it is not mounted."""
    if os.path.ismount(BPFFS):
        return
    BPFFS.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "bpf", "bpf", str(BPFFS)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise HomunculusError(f"cannot mount bpffs on {BPFFS}: {proc.stderr.strip()}")


def pin_dir(name: str, root: Path = PIN_ROOT) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", name):
        raise ValueError(f"pin name {name!r} is not a safe directory name")
    return root / name


def unpin(name: str, root: Path = PIN_ROOT) -> None:
    """Remove the pins of ``name`` (maps and programs go away with their last reference)."""
    base = pin_dir(name, root)
    if base.exists():
        shutil.rmtree(base)


def obj_get(path: Path) -> int:
    """bpf_obj_get: a new fd for a pinned object."""
    return _check(libbpf().bpf_obj_get(str(path).encode()), f"bpf_obj_get({path})")


@dataclass
class Pinned:
    """Fds of a pinned deployment, re-opened with bpf_obj_get (from any process)."""

    name: str
    base: Path
    progs: dict[str, int]
    maps: dict[str, BpfMap]

    @classmethod
    def open(cls, name: str, root: Path = PIN_ROOT) -> Pinned:
        base = pin_dir(name, root)
        if not base.is_dir():
            raise BpfError(f"no pinned deployment at {base}", errno.ENOENT)
        progs = {p.name: obj_get(p) for p in sorted((base / "progs").iterdir())}
        maps = {p.name: BpfMap.from_fd(obj_get(p), p.name)
                for p in sorted((base / "maps").iterdir())}
        return cls(name, base, progs, maps)

    def map(self, name: str) -> BpfMap:
        try:
            return self.maps[name]
        except KeyError:
            raise BpfError(f"map {name} is not pinned under {self.base}", errno.ENOENT) from None

    def prog_fd(self, name: str) -> int:
        try:
            return self.progs[name]
        except KeyError:
            raise BpfError(f"program {name} is not pinned under {self.base}",
                           errno.ENOENT) from None

    def close(self) -> None:
        for fd in [*self.progs.values(), *(m.fd for m in self.maps.values())]:
            os.close(fd)
        self.progs, self.maps = {}, {}


# ---------------------------------------------------------------------------------------------
# XDP attachment and namespaces


def ifindex_of(interface: str | int) -> int:
    if isinstance(interface, int):
        return interface
    try:
        return socket.if_nametoindex(interface)
    except OSError:
        raise BpfError(f"no interface '{interface}'", errno.ENODEV) from None


def attach_xdp(interface: str | int, prog_fd: int, *, mode: str = "skb",
               replace: bool = True) -> int:
    """Attach ``prog_fd`` to an interface in ``skb`` (generic), ``native`` or ``hw`` mode."""
    if mode not in XDP_FLAGS:
        raise ValueError(f"XDP mode must be one of {sorted(XDP_FLAGS)}")
    ifindex = ifindex_of(interface)
    flags = XDP_FLAGS[mode] | (0 if replace else XDP_FLAGS_UPDATE_IF_NOEXIST)
    _check(libbpf().bpf_xdp_attach(ifindex, prog_fd, flags, None),
           f"bpf_xdp_attach(ifindex {ifindex}, {mode})")
    return ifindex


def detach_xdp(interface: str | int, *, mode: str = "skb") -> None:
    ifindex = ifindex_of(interface)
    _check(libbpf().bpf_xdp_detach(ifindex, XDP_FLAGS[mode], None),
           f"bpf_xdp_detach(ifindex {ifindex}, {mode})")


def attached_prog_id(interface: str | int, *, mode: str = "skb") -> int:
    """The id of the XDP program attached in ``mode`` (0 when none)."""
    prog_id = ctypes.c_uint32(0)
    _check(libbpf().bpf_xdp_query_id(ifindex_of(interface), XDP_FLAGS[mode],
                                     ctypes.byref(prog_id)), "bpf_xdp_query_id")
    return prog_id.value


def in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` in network namespace ``/run/netns/<netns>`` (None: here) on its own thread."""
    if netns is None:
        return fn()
    path = Path("/run/netns") / netns
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", netns) or not path.exists():
        raise BpfError(f"no network namespace '{netns}'", errno.ENOENT)
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise BpfError(f"setns({path})", ctypes.get_errno())
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # re-raised in the caller
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


# ---------------------------------------------------------------------------------------------
# ring buffers


class RingBuffer:
    """A BPF ring buffer map read through libbpf (``ring_buffer__new``/``__poll``): every
    record is copied out as bytes and kept until :meth:`drain` hands it over."""

    def __init__(self, map_fd: int) -> None:
        self._records: list[bytes] = []

        def on_record(_ctx: int | None, data: int | None, size: int) -> int:
            self._records.append(ctypes.string_at(data, size))
            return 0

        self._callback = RING_CALLBACK(on_record)  # kept alive as long as the ring buffer
        self._ptr = _check_ptr(libbpf().ring_buffer__new(map_fd, self._callback, None, None),
                               "ring_buffer__new")

    def poll(self, timeout_ms: int = 100) -> int:
        """Wait up to ``timeout_ms`` for records and collect them; how many were collected."""
        before = len(self._records)
        rc = libbpf().ring_buffer__poll(self._ptr, timeout_ms)
        if rc < 0 and -rc != errno.EINTR:
            _check(rc, "ring_buffer__poll")
        return len(self._records) - before

    def consume(self) -> int:
        """Collect whatever is there without waiting."""
        before = len(self._records)
        _check(libbpf().ring_buffer__consume(self._ptr), "ring_buffer__consume")
        return len(self._records) - before

    def drain(self) -> list[bytes]:
        """The records collected so far (and forget them)."""
        out, self._records = self._records, []
        return out

    def close(self) -> None:
        if self._ptr:
            libbpf().ring_buffer__free(self._ptr)
            self._ptr = 0

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
