"""Model parameters as map contents: encode a pipeline into a snapshot, write it into a slot,
and push a new snapshot atomically (write the standby slot, then flip ``hmn_active``).

A snapshot (JSON-able dict, written as ``xdp/snapshot.json``)::

    {"format": FORMAT, "layout": <Layout.signature()>, "row_words": W, "meta_words": M,
     "tables": [{"name", "base", "capacity",
                 "entries": [[mask, lo, hi, ... params ...], ...], "default": [...]}, ...],
     "bias": [...] | null, "mlp": [s32 words] | null}

Entry words and map indices follow layout.py (maps ``hmn_tables``, ``hmn_defaults``,
``hmn_bias``; an MLP's parameters: ``hmn_mlp``, one value per slot). A packet reads
``hmn_active`` once, so it sees one slot
throughout; ``push`` only ever writes the standby slot. That slot may still be in use by packets
that read ``hmn_active`` just before the previous flip, so ``push`` first waits ``grace_s``
(default 10 ms; an XDP program finishes in microseconds) and only then overwrites it.
"""

from __future__ import annotations

import struct
import time
from typing import Any, Protocol

from homunculus.ir.pipeline import Pipeline
from homunculus.targets.xdp.layout import Layout, layout_of, match_words, mlp_words
from homunculus.targets.xdp.loader import BpfMap

FORMAT = "homunculus-xdp-snapshot/1"
GRACE_S = 0.010
U64_MAX = (1 << 64) - 1


class MapSource(Protocol):
    """Anything that finds maps by name: a loaded BpfObject or a Pinned deployment."""

    def map(self, name: str) -> BpfMap: ...


class SnapshotError(ValueError):
    """A snapshot does not fit the program it is written into."""


def _param(value: int, width: int, what: str) -> int:
    if not 0 <= value < (1 << width):
        raise SnapshotError(f"{what}: value {value} does not fit in {width} bits")
    return value


def _table_snapshot(table: Any, t: Any) -> dict[str, Any]:
    if len(table.entries) > t.capacity:
        raise SnapshotError(f"table '{table.name}': {len(table.entries)} entries exceed its "
                            f"capacity {t.capacity}")
    entries = []
    for e in table.entries:
        words: list[int] = []
        for match, width in zip(e.matches, t.key_widths, strict=True):
            words += match_words(match, width)
        words += [_param(p, w, f"table '{table.name}' parameter")
                  for p, w in zip(e.params, t.output_widths, strict=True)]
        if any(not 0 <= w <= U64_MAX for w in words):
            raise SnapshotError(f"table '{table.name}': a match bound exceeds 64 bits")
        entries.append(words)
    default = [_param(d, w, f"default of table '{table.name}'")
               for d, w in zip(table.default, t.output_widths, strict=True)]
    return {"name": table.name, "base": t.base, "capacity": t.capacity, "entries": entries,
            "default": default}


def snapshot_of(pipeline: Pipeline, layout: Layout | None = None) -> dict[str, Any]:
    """The map contents of ``pipeline`` (for a program built from ``layout``, by default its
    own; pass the deployed program's layout to check a newer compile fits it)."""
    own = layout_of(pipeline)
    layout = layout or own
    if own.signature() != layout.signature():
        raise SnapshotError("the pipeline's shape (tables, keys, outputs, capacities, scores) "
                            "differs from the deployed program's: rebuild and redeploy")
    tables = [_table_snapshot(table, t)
              for table, t in zip(pipeline.tables(), layout.tables, strict=True)]
    bias = None
    if pipeline.score_sum is not None and layout.score is not None:
        bias = [_param(b, w, "score bias")
                for b, w in zip(pipeline.score_sum.bias, layout.score.widths, strict=True)]
    mlp = None
    if pipeline.mlp is not None and layout.mlp is not None:
        mlp = mlp_words(pipeline.mlp, layout.mlp)
    return {"format": FORMAT, "layout": layout.signature(), "row_words": layout.row_words,
            "meta_words": layout.meta_words, "tables": tables, "bias": bias, "mlp": mlp}


def _words(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}Q", *values)


def check_compatible(snapshot: dict[str, Any], maps: MapSource) -> None:
    """Raise SnapshotError unless the program's maps have the snapshot's geometry."""
    if snapshot.get("format") != FORMAT:
        raise SnapshotError(f"not an XDP snapshot (format {snapshot.get('format')!r})")
    rows, meta = maps.map("hmn_tables"), maps.map("hmn_defaults")
    if rows.value_size != 8 * snapshot["row_words"] or meta.value_size != 8 * snapshot[
            "meta_words"]:
        raise SnapshotError("table rows of the snapshot and the program differ in size")
    for i, t in enumerate(snapshot["tables"]):
        if t["base"] + 2 * t["capacity"] > rows.max_entries or 2 * i + 1 >= meta.max_entries:
            raise SnapshotError(f"table '{t['name']}' lies outside the program's maps")
        if len(t["entries"]) > t["capacity"]:
            raise SnapshotError(f"table '{t['name']}': {len(t['entries'])} entries exceed its "
                                f"capacity {t['capacity']}")
    bias = snapshot.get("bias")
    if bias is not None and maps.map("hmn_bias").value_size != 8 * len(bias):
        raise SnapshotError("score biases do not match the program")
    mlp = snapshot.get("mlp")
    if mlp is not None and maps.map("hmn_mlp").value_size != 4 * len(mlp):
        raise SnapshotError("the MLP's parameters do not match the program's network")


def _row(words: list[int], n: int) -> bytes:
    if len(words) > n:
        raise SnapshotError(f"a row of {len(words)} words exceeds the program's {n}")
    return _words([*words, *([0] * (n - len(words)))])


def write_slot(maps: MapSource, snapshot: dict[str, Any], slot: int) -> None:
    """Write every table (entries, count, default) and the biases into ``slot`` (0 or 1)."""
    if slot not in (0, 1):
        raise ValueError("slot must be 0 or 1")
    check_compatible(snapshot, maps)
    rows, meta = maps.map("hmn_tables"), maps.map("hmn_defaults")
    for i, t in enumerate(snapshot["tables"]):
        first = t["base"] + slot * t["capacity"]
        for j, words in enumerate(t["entries"]):
            rows.update(first + j, _row(words, snapshot["row_words"]))
        meta.update(2 * i + slot, _row([len(t["entries"]), *t["default"]],
                                       snapshot["meta_words"]))
    if snapshot.get("bias") is not None:
        maps.map("hmn_bias").update(slot, _words(snapshot["bias"]))
    if snapshot.get("mlp") is not None:
        words = snapshot["mlp"]
        maps.map("hmn_mlp").update(slot, struct.pack(f"<{len(words)}i", *words))


def active_slot(maps: MapSource) -> int:
    return int.from_bytes(maps.map("hmn_active").lookup(0)[:4], "little") & 1  # type: ignore[index]


def install(maps: MapSource, snapshot: dict[str, Any]) -> None:
    """First load, before any packet runs: write slot 0 and make it active."""
    write_slot(maps, snapshot, 0)
    maps.map("hmn_active").update_u32(0, 0)


def push(maps: MapSource, snapshot: dict[str, Any] | Pipeline, *,
         grace_s: float = GRACE_S) -> int:
    """Install a new snapshot without mixing: wait ``grace_s``, write the standby slot
    completely, then flip ``hmn_active``. Returns the new active slot."""
    if isinstance(snapshot, Pipeline):
        snapshot = snapshot_of(snapshot)
    check_compatible(snapshot, maps)
    standby = 1 - active_slot(maps)
    if grace_s > 0:
        time.sleep(grace_s)  # packets that read the old active slot before the last flip
    write_slot(maps, snapshot, standby)
    maps.map("hmn_active").update_u32(0, standby)
    return standby
