"""Raw capture records (frames with their payloads), for tools that need more than headers: the
DPI agent (adapt/dpi.py) and captures assembled from real ones (data/drift.py)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def read_raw_records(path: Path, wanted: Iterable[int] | None = None
                     ) -> dict[int, tuple[int, bytes]]:
    """Record number -> (link type, captured bytes) for the ``wanted`` records (all if None),
    read with the same damage handling as data/pcap.py."""
    from homunculus.data.pcap import (
        FileStats,
        IngestStats,
        _Ctx,
        _iter_pcap,
        _iter_pcapng,
        _Window,
        capture_format,
    )

    path = Path(path)
    fmt = capture_format(path)
    keep = None if wanted is None else set(wanted)
    out: dict[int, tuple[int, bytes]] = {}
    ctx = _Ctx(path, FileStats(str(path)), IngestStats(), lambda _m: None)
    with open(path, "rb", buffering=0) as f:
        win = _Window(f, path.stat().st_size)
        records = _iter_pcapng(win, ctx) if fmt == "pcapng" else _iter_pcap(win, ctx)
        for n, _ts, _wire, linktype, buf, off, caplen in records:
            if keep is None or n in keep:
                out[n] = (linktype, bytes(buf[off:off + caplen]))
    return out


def linktype_of(path: Path) -> int | None:
    """The link type of a capture's first record (None if it has none)."""
    for linktype, _ in _first(path):
        return linktype
    return None


def _first(path: Path) -> list[tuple[int, bytes]]:
    records = read_raw_records(path, [0])
    return list(records.values())
