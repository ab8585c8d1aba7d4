"""Atomic model installs on switches: model tables keyed on a version kept in a register.

The program reads the register ``hmn_version`` once per packet, early in ingress, into the
metadata field ``model_version``; every model table (encoders, lookups, the verdict) has
``model_version`` as its first, exact key. A model's entries carry its version, and each table
with a ternary or range key gets one more entry per version, last (lowest priority), matching
only the version: it carries that model's default, so a miss behaves as the model says, not as
the compiled default. An install (:func:`update_plan`) then

1. inserts the new model's entries under the standby version (packets never match them yet),
2. writes the standby version into the register (the flip: one register write),
3. deletes the old version's entries (no packet reads them any more).

A packet reads the version once, so it matches one model's entries throughout: never a mix.
The update is written for three control planes: P4Runtime-style JSON (an ordered list of
updates), ``simple_switch_CLI`` commands (bmv2) and a ``bfrt_python`` script (Tofino).
:func:`run_updates` executes such a plan interleaved with packets in the twin.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from homunculus.ir.pipeline import Entry, Exact, Field, MatchKind, Pipeline, Range, Table, Ternary
from homunculus.passes.switch import lower_for_switch, wildcard

VERSION_FIELD = Field("model_version", 8)
REGISTER = "hmn_version"


def _catch_all(table: Table, version: int) -> Entry | None:
    if not any(k in (MatchKind.TERNARY, MatchKind.RANGE) for k in table.kinds):
        return None
    matches: list[Any] = [Exact(version)]
    for i, kind in enumerate(table.kinds):
        bits = table.key_bits(i)
        matches.append(Ternary(0, 0) if kind is MatchKind.TERNARY else
                       Range(0, (1 << bits) - 1) if kind is MatchKind.RANGE else Exact(0))
    if any(k is MatchKind.EXACT for k in table.kinds):
        return None  # an exact key cannot be wildcarded: the compiled default applies
    return Entry(tuple(matches), table.default)


def versioned_table(table: Table, version: int) -> Table:
    """``table`` keyed on the version first; its entries (and its default, as a last catch-all
    entry) under ``version``."""
    entries = [Entry((Exact(version), *e.matches), e.params) for e in table.entries]
    last = _catch_all(table, version)
    if last is not None:
        entries.append(last)
    slices = (None, *table.slices) if table.slices else ()
    return replace(table, keys=(VERSION_FIELD, *table.keys),
                   kinds=(MatchKind.EXACT, *table.kinds), entries=tuple(entries), slices=slices)


def versioned(pipeline: Pipeline, version: int = 0) -> Pipeline:
    """The switch-lowered ``pipeline`` with every model table keyed on ``version``."""
    p = lower_for_switch(pipeline)
    names = {f.field.name for f in p.features} | {o.name for t in p.tables() for o in t.outputs}
    if VERSION_FIELD.name in names:
        raise ValueError(f"a pipeline field is named {VERSION_FIELD.name}: rename the feature")
    return replace(p, encoders=tuple(versioned_table(t, version) for t in p.encoders),
                   lookups=tuple(versioned_table(t, version) for t in p.lookups),
                   verdict=versioned_table(p.verdict, version))


def check_compatible(old: Pipeline, new: Pipeline) -> None:
    """A new model can replace the deployed one in place only with the same tables, keys and
    outputs (ValueError naming what differs), and the same default wherever a table has only
    exact keys (no catch-all entry can carry another one)."""
    a, b = lower_for_switch(old), lower_for_switch(new)
    ta, tb = list(a.tables()), list(b.tables())
    if [t.name for t in ta] != [t.name for t in tb]:
        raise ValueError("the new model has other tables than the deployed program")
    for x, y in zip(ta, tb, strict=True):
        if (x.keys, x.kinds, x.outputs, x.slices) != (y.keys, y.kinds, y.outputs, y.slices):
            raise ValueError(f"table {x.name}: keys or outputs differ from the deployed program")
        if all(k is MatchKind.EXACT for k in x.kinds) and x.default != y.default:
            raise ValueError(f"table {x.name}: exact keys only and another default action; "
                             "the default is not versioned")
    if [s.name for s in a.alu] != [s.name for s in b.alu]:
        raise ValueError("the new model's score steps differ from the deployed program's")


# ----------------------------------------------------------------------------- the update


@dataclass(frozen=True)
class Update:
    """One control-plane operation: ``insert``/``delete`` of a table entry, or ``flip`` (the
    version register written)."""

    op: str
    table: str | None = None
    entry: Entry | None = None
    version: int | None = None


def update_plan(old: Pipeline, new: Pipeline, old_version: int, new_version: int
                ) -> list[Update]:
    """Insert ``new`` under ``new_version``, flip, delete ``old``'s ``old_version`` entries."""
    if old_version == new_version or not (0 <= old_version < 256 and 0 <= new_version < 256):
        raise ValueError("versions must differ and fit the 8-bit version register")
    check_compatible(old, new)
    vo, vn = versioned(old, old_version), versioned(new, new_version)
    plan = [Update("insert", t.name, e) for t in vn.tables() for e in t.entries]
    plan.append(Update("flip", version=new_version))
    plan += [Update("delete", t.name, e) for t in vo.tables() for e in t.entries]
    return plan


def _priority(table: Table, position: int) -> int:
    """P4Runtime priority of an entry (larger wins), versions interleaving without clashes:
    both versions' entries of a table keep their first-match order by position."""
    return 0 if all(k is MatchKind.EXACT for k in table.kinds) else 1_000_000 - position


def _positioned(plan: list[Update], tables: dict[str, Table]
                ) -> Iterator[tuple[Update, Table | None, int]]:
    """Each update with its table and its entry's position among the entries written under the
    same version (a flip: no table)."""
    positions: dict[tuple[str, int], int] = {}
    for u in plan:
        if u.op == "flip":
            yield u, None, 0
            continue
        assert u.table is not None and u.entry is not None
        version = u.entry.matches[0].value  # type: ignore[union-attr]
        position = positions.get((u.table, version), 0)
        positions[(u.table, version)] = position + 1
        yield u, tables[u.table], position


def p4runtime_updates(plan: list[Update], pipeline: Pipeline, arch: str) -> dict[str, Any]:
    """The update as P4Runtime-style JSON: ``updates`` in order (INSERT/MODIFY/DELETE)."""
    from homunculus.targets.p4.codegen import INGRESS_CONTROL
    from homunculus.targets.p4.entries import _action_json, _match_json, _shifted, _views

    vp = versioned(pipeline, 0)
    views = _views(vp, arch)
    tables = {t.name: t for t in vp.tables()}
    out = []
    for u, table, position in _positioned(plan, tables):
        if table is None:
            out.append({"type": "MODIFY", "entity": {"register_entry": {
                "register": f"{INGRESS_CONTROL}.{REGISTER}", "index": 0,
                "data": hex(int(u.version or 0))}}})
            continue
        assert u.table is not None and u.entry is not None
        match = {v.expr: _match_json(_shifted(m, v))
                 for v, m in zip(views[u.table], u.entry.matches, strict=True)}
        out.append({"type": "INSERT" if u.op == "insert" else "DELETE", "entity": {
            "table_entry": {"table": f"{INGRESS_CONTROL}.{u.table}", "match": match,
                            "action": _action_json(table, u.entry.params),
                            "priority": _priority(table, position)}}})
    return {"arch": arch, "register": REGISTER, "updates": out}


def cli_updates(plan: list[Update], pipeline: Pipeline) -> str:
    """The update as bmv2 ``simple_switch_CLI`` commands: entries added under the standby
    version, ``register_write`` of the version, old entries deleted by handle (the handles
    ``table_add`` printed for them, looked up with ``table_dump_entry_from_key``)."""
    from homunculus.targets.p4.actions import action_call
    from homunculus.targets.p4.codegen import INGRESS_CONTROL
    from homunculus.targets.p4.entries import _cli_match, _shifted, _views, needs_priority

    vp = versioned(pipeline, 0)
    views = _views(vp, "v1model")
    tables = {t.name: t for t in vp.tables()}
    lines = ["// Generated by Homunculus: atomic model update (versioned tables)."]
    for u, table, position in _positioned(plan, tables):
        if table is None:
            lines.append(f"register_write {INGRESS_CONTROL}.{REGISTER} 0 {u.version}")
            continue
        keys = [_cli_match(_shifted(m, v)) for m, v in
                zip(u.entry.matches, views[u.table], strict=True)]
        prio = [str(1_000_000 - _priority(table, position))] if needs_priority(table) else []
        qualified = f"{INGRESS_CONTROL}.{u.table}"
        if u.op == "insert":
            action, args = action_call(table, u.entry.params)
            lines.append(" ".join(["table_add", qualified, f"{INGRESS_CONTROL}.{action.name}",
                                   *keys, "=>", *(hex(a) for a in args), *prio]))
        else:
            lines.append(" ".join(["table_delete_by_key", qualified, *keys, *prio]))
    return "\n".join(lines) + "\n"


def bfrt_updates(plan: list[Update], pipeline: Pipeline, program: str) -> str:
    """The update as a ``bfrt_python`` script (Tofino): add_with_<action> under the standby
    version, the version register's ``mod``, then ``delete`` of the old version's keys."""
    from homunculus.targets.p4.entries import _bfrt_call, _bfrt_keys, _views, needs_priority

    vp = versioned(pipeline, 0)
    views = _views(vp, "tna")
    tables = {t.name: t for t in vp.tables()}
    lines = ["# Generated by Homunculus: atomic model update (versioned tables).",
             f"ingress = bfrt.{program}.pipe.MyIngress", ""]
    for u, table, position in _positioned(plan, tables):
        if table is None:
            lines.append(f"ingress.{REGISTER}.mod(REGISTER_INDEX=0, f1={u.version})")
            continue
        args = _bfrt_keys(table, u.entry, views[u.table])
        if needs_priority(table):
            args.append({"name": "MATCH_PRIORITY",
                         "value": str(1_000_000 - _priority(table, position))})
        text = ", ".join(f"{a['name']}={a['value']}" for a in args)
        if u.op == "insert":
            action, params = _bfrt_call(table, u.entry.params)
            text = ", ".join([text, *(f"{p['name']}={p['value']}" for p in params)])
            lines.append(f"ingress.{u.table}.add_with_{action}({text})")
        else:
            lines.append(f"ingress.{u.table}.delete({text})")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the twin


def run_updates(old: Pipeline, plan: list[Update], x: np.ndarray, old_version: int,
                ops_between: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The twin under an update: the switch starts with ``old`` installed under
    ``old_version``; packets (rows of ``x``) are processed in order, ``ops_between`` control-
    plane operations of ``plan`` being applied after each packet. Returns, per packet, the class
    it got and the version it read."""
    from homunculus.targets.p4.twin import simulate

    state = versioned(old, old_version)
    installed = {t.name: list(t.entries) for t in state.tables()}
    register = old_version
    classes = np.zeros(len(x), dtype=np.int64)
    seen = np.zeros(len(x), dtype=np.int64)
    ops = iter(plan)
    for i, row in enumerate(np.asarray(x, dtype=np.int64)):
        current = _with_entries(state, installed)
        result = simulate(current, row[None, :], extra={VERSION_FIELD.name: np.array([register])})
        classes[i], seen[i] = int(result.class_index[0]), register
        for _ in range(ops_between):
            u = next(ops, None)
            if u is None:
                break
            if u.op == "flip":
                register = int(u.version or 0)
            elif u.op == "insert":
                installed[u.table].append(u.entry)  # type: ignore[index,arg-type]
            else:
                installed[u.table].remove(u.entry)  # type: ignore[index,arg-type]
    return classes, seen


def _with_entries(p: Pipeline, installed: dict[str, list[Entry]]) -> Pipeline:
    def swap(t: Table) -> Table:
        return replace(t, entries=tuple(_ordered(installed[t.name])))

    return replace(p, encoders=tuple(swap(t) for t in p.encoders),
                   lookups=tuple(swap(t) for t in p.lookups), verdict=swap(p.verdict))


def _ordered(entries: list[Entry]) -> list[Entry]:
    """Entries in match order: within a version, insertion order (the first wins); versions
    never overlap (the version key is exact), so their relative order does not matter."""
    return entries


# ----------------------------------------------------------------------------- capacity


def capacity(compiled: Pipeline) -> dict[str, int]:
    """Per model table, the entries one version may hold in the compiled program: the P4 table
    is declared with ``2 * VERSION_TABLE_HEADROOM`` times the compiled model's entries (its
    catch-all included), and an install holds two versions at once."""
    from homunculus.targets.p4.codegen import VERSION_TABLE_HEADROOM

    p = versioned(compiled, 0)
    return {t.name: VERSION_TABLE_HEADROOM * max(1, len(t.entries)) for t in p.tables()}


def conform(new: Pipeline, compiled: Pipeline) -> Pipeline:
    """A retrained tree model (same family) in the compiled program's tables, so it can be
    installed under the standby version: the same encoder tables, keyed on the same features,
    their thermometer codes at the compiled widths (a code with fewer thresholds is padded
    with bits that stay 0; a feature the new model does not test gets one entry giving code 0;
    range encoders, or their ternary prefixes on Tofino),
    the leaf table keyed on the compiled code fields (wildcards on those it does not test), and
    every table within :func:`capacity`. Raises ``CapacityError`` (the retrain then tries a
    shallower model) when it does not fit, ValueError when the tables cannot correspond."""
    from homunculus.targets.xdp.layout import CapacityError

    a, b = lower_for_switch(compiled), lower_for_switch(new)
    known = {t.name: t for t in a.encoders}
    extra = [t.name for t in b.encoders if t.name not in known]
    if extra:
        raise CapacityError(f"the new model tests features the deployed program does not "
                            f"encode ({', '.join(extra)})")
    fresh = {t.name: t for t in b.encoders}
    encoders = []
    for t in a.encoders:
        n = fresh.get(t.name)
        if len(t.keys) != 1 or t.kinds not in ((MatchKind.RANGE,), (MatchKind.TERNARY,)):
            raise ValueError(f"table {t.name}: not a range encoder (or its ternary prefixes)")
        if n is None:
            n = replace(t, entries=(Entry((wildcard(t.kinds[0], t.keys[0]),), t.default),))
        else:
            n = into_code_fields(n, t)
        encoders.append(n)
    if [t.name for t in b.lookups] != [t.name for t in a.lookups] or \
            a.verdict.name != b.verdict.name:
        raise ValueError("the new model has other lookup tables than the deployed program")
    rest = [_rekey(t, n) for t, n in zip((*a.lookups, a.verdict), (*b.lookups, b.verdict),
                                         strict=True)]
    # the compiled program's score steps: its code is what runs (the sums' schedule follows the
    # compiled keys, which the new model's own keys, before rekeying, need not match)
    out = replace(b, encoders=tuple(encoders), lookups=tuple(rest[:-1]), verdict=rest[-1],
                  alu=a.alu, order=a.order)
    room = capacity(a)
    for t in versioned(out, 1).tables():
        if len(t.entries) > room.get(t.name, 0):
            raise CapacityError(f"table {t.name}: {len(t.entries)} entries, the compiled "
                                f"program holds {room.get(t.name, 0)} per version")
    return out


def into_code_fields(n: Table, t: Table) -> Table:
    """The new encoder ``n`` writing the compiled encoder ``t``'s code fields: a code with fewer
    thresholds is padded with bits that stay 0, and a code field ``n`` does not write (a chunk,
    or a tree's own code, that the new model does not need) stays 0."""
    from homunculus.targets.xdp.layout import CapacityError

    if n.keys != t.keys or n.kinds != t.kinds:
        raise ValueError(f"table {t.name}: keys differ")
    room = {o.name: o for o in t.outputs}
    for got in n.outputs:
        if got.name not in room:
            raise CapacityError(f"table {t.name}: the new model needs a code field ({got.name}) "
                                "the deployed program does not have")
        if got.width > room[got.name].width:
            raise CapacityError(f"table {t.name}: {got.width} thresholds in a code of "
                                f"{room[got.name].width} bits")
    at = {o.name: i for i, o in enumerate(n.outputs)}

    def coded(params: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(params[at[o.name]] if o.name in at else 0 for o in t.outputs)

    entries = tuple(Entry(e.matches, coded(e.params)) for e in n.entries)
    if coded(n.default) != t.default:  # the default is not versioned: a catch-all entry
        entries += (Entry((wildcard(t.kinds[0], t.keys[0]),), coded(n.default)),)
    return replace(n, outputs=t.outputs, default=t.default, entries=entries)


def _rekey(t: Table, n: Table) -> Table:
    """``n`` keyed as the compiled ``t``: the same key fields in the same order (a ternary
    wildcard on the ones ``n`` does not test)."""
    if (n.keys, n.kinds, n.slices) == (t.keys, t.kinds, t.slices):
        return n
    names = [k.name for k in t.keys]
    if any(k.name not in names for k in n.keys) or n.outputs != t.outputs or any(
            k is not MatchKind.TERNARY for k in (*t.kinds, *n.kinds)) or n.slices or t.slices:
        raise ValueError(f"table {t.name}: keys or outputs differ from the deployed program")
    at = {k.name: i for i, k in enumerate(n.keys)}
    entries = tuple(Entry(tuple(e.matches[at[k]] if k in at else Ternary(0, 0) for k in names),
                          e.params) for e in n.entries)
    return replace(n, keys=t.keys, kinds=t.kinds, entries=entries)
