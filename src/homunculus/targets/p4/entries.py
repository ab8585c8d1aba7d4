"""Control-plane entries for the generated P4 programs: writers for three APIs and one reader.

Priorities differ by API. IR entries are first-match-wins, so the first entry must win:

* P4Runtime: a larger number is a higher priority; ternary/range tables need priority >= 1, and
  tables with only exact keys must use priority 0. The first IR entry gets ``len(entries)``.
* bmv2 ``simple_switch_CLI`` (Thrift): a *smaller* number is a higher priority. p4lang/PI's bmv2
  target (targets/bmv2/pi_tables_imp.cpp, ``PriorityInverter::pi_to_bm``) converts a P4Runtime
  priority ``p`` to ``BM_MAX_PRIORITY - p`` before calling bmv2, which is only right if bmv2
  prefers the smallest number. The first IR entry gets 0.
* Tofino BF-RT ``$MATCH_PRIORITY``: also smaller = higher. stratum/stratum's
  stratum/hal/lib/barefoot/utils.cc (``ConvertPriorityFromP4rtToBfrt``) maps P4Runtime ``p`` to
  ``kMaxPriority - p``. The first IR entry gets 0.
"""

from __future__ import annotations

import re
from typing import Any

from homunculus.ir.names import safe_comment
from homunculus.ir.pipeline import Entry, Exact, Match, MatchKind, Pipeline, Range, Table, Ternary
from homunculus.passes.switch import lower_for_switch
from homunculus.targets.p4.actions import (
    ActionDecl,
    action_call,
    params_of_call,
    table_actions,
)
from homunculus.targets.p4.codegen import INGRESS_CONTROL, render
from homunculus.targets.p4.keys import KeyView, feature_keys, key_views

_PROGRAM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _hex(value: int) -> str:
    return f"0x{value:x}"


def needs_priority(table: Table) -> bool:
    """True when the table has a ternary or range key (its entries need priorities)."""
    return any(k in (MatchKind.TERNARY, MatchKind.RANGE) for k in table.kinds)


def canonical(match: Match) -> Match:
    """The match as installed: ternary values are masked (P4Runtime rejects bits outside mask)."""
    if isinstance(match, Ternary):
        return Ternary(match.value & match.mask, match.mask)
    return match


def _check_match(table: Table, kind: MatchKind, match: Match) -> None:
    expected = {MatchKind.EXACT: Exact, MatchKind.TERNARY: Ternary, MatchKind.RANGE: Range}[kind]
    if not isinstance(match, expected):
        raise ValueError(f"table {table.name}: {type(match).__name__} match on a {kind} key")


# --- the program's view of a table -----------------------------------------------------------


def _views(pipeline: Pipeline, arch: str) -> dict[str, tuple[KeyView, ...]]:
    direct = feature_keys(pipeline)
    return {t.name: key_views(t, direct, arch) for t in pipeline.tables()}


def _shifted(match: Match, view: KeyView) -> Match:
    """The IR match as the program's key sees it (sliced bits moved into place on bmv2)."""
    m = canonical(match)
    if not view.shift:
        return m
    if isinstance(m, Ternary):
        return Ternary(m.value << view.shift, m.mask << view.shift)
    if isinstance(m, Exact):
        return Ternary(m.value << view.shift, 1 << view.shift)
    raise ValueError("a range match on a sliced key")


def _unshifted(match: Match, view: KeyView, what: str) -> Match:
    if not view.shift:
        return match
    if not isinstance(match, Ternary) or (match.mask & ~(1 << view.shift)):
        raise ValueError(f"{what}: a sliced key takes a ternary match on bit {view.shift} only")
    return Ternary(match.value >> view.shift, match.mask >> view.shift)


# --- P4Runtime-style JSON ----------------------------------------------------------------------


def _match_json(match: Match) -> dict[str, Any]:
    m = canonical(match)
    if isinstance(m, Exact):
        return {"exact": {"value": _hex(m.value)}}
    if isinstance(m, Ternary):
        return {"ternary": {"value": _hex(m.value), "mask": _hex(m.mask)}}
    return {"range": {"low": _hex(m.lo), "high": _hex(m.hi)}}


def _action_json(table: Table, params: tuple[int, ...]) -> dict[str, Any]:
    action, args = action_call(table, params)
    return {
        "action": f"{INGRESS_CONTROL}.{action.name}",
        "params": {p.name: _hex(v) for p, v in zip(action.params, args, strict=True)},
    }


def _kinds(table: Table, views: tuple[KeyView, ...]) -> tuple[MatchKind, ...]:
    """Match kinds as declared (a bmv2 sliced key is ternary on the whole field)."""
    return tuple(MatchKind.TERNARY if v.shift else k
                 for k, v in zip(table.kinds, views, strict=True))


def _table_json(table: Table, views: tuple[KeyView, ...]) -> dict[str, Any]:
    n = len(table.entries)
    entries = []
    for i, entry in enumerate(table.entries):
        for kind, match in zip(table.kinds, entry.matches, strict=True):
            _check_match(table, kind, match)
        entries.append({
            "match": {v.expr: _match_json(_shifted(m, v))
                      for v, m in zip(views, entry.matches, strict=True)},
            "action": _action_json(table, entry.params),
            "priority": n - i if needs_priority(table) else 0,
        })
    return {
        "table": f"{INGRESS_CONTROL}.{table.name}",
        "default_action": _action_json(table, table.default),
        "entries": entries,
    }


def runtime_entries(pipeline: Pipeline, *, program_name: str, arch: str = "tna"
                    ) -> dict[str, Any]:
    """All tables' entries and defaults as P4Runtime-style named JSON (see module docstring),
    keyed by the key expressions of ``arch``'s program."""
    pipeline = lower_for_switch(pipeline)
    views = _views(pipeline, arch)
    return {"program": program_name, "arch": arch,
            "tables": [_table_json(t, views[t.name]) for t in pipeline.tables()]}


def parse_int(value: Any, what: str) -> int:
    """Parse a JSON number or a "0x.."/decimal string as a non-negative int."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected an integer, got {value!r}")
    if isinstance(value, int):
        result = value
    elif isinstance(value, str):
        try:
            result = int(value, 0)
        except ValueError:
            raise ValueError(f"{what}: not an integer: {safe_comment(value)!r}") from None
    else:
        raise ValueError(f"{what}: expected an integer, got {type(value).__name__}")
    if result < 0:
        raise ValueError(f"{what}: negative value {result}")
    return result


def _parse_match(spec: Any, kind: MatchKind, what: str) -> Match:
    if not isinstance(spec, dict) or list(spec) != [str(kind)]:
        raise ValueError(f"{what}: expected exactly a '{kind}' match, got {spec!r}")
    body = spec[str(kind)]
    if not isinstance(body, dict):
        raise ValueError(f"{what}: malformed {kind} match")
    try:
        if kind is MatchKind.EXACT:
            return Exact(parse_int(body["value"], what))
        if kind is MatchKind.TERNARY:
            return Ternary(parse_int(body["value"], what), parse_int(body["mask"], what))
        return Range(parse_int(body["low"], what), parse_int(body["high"], what))
    except KeyError as exc:
        raise ValueError(f"{what}: {kind} match lacks {exc}") from None


def _parse_params(spec: Any, table: Table, default_port: int, what: str,
                  declared: tuple[ActionDecl, ...]) -> tuple[int, ...]:
    if not isinstance(spec, dict) or not isinstance(spec.get("action"), str):
        raise ValueError(f"{what}: no action")
    control, _, name = spec["action"].partition(".")
    if control != INGRESS_CONTROL:
        raise ValueError(f"{what}: expected an action of {INGRESS_CONTROL}")
    params = spec.get("params")
    if not isinstance(params, dict):
        raise ValueError(f"{what}: params must be an object")
    names = list(params)
    values = tuple(parse_int(params[n], f"{what} param {n}") for n in names)
    action = next((a for a in declared if a.name == name), None)
    if action is None:
        raise ValueError(f"{what}: {name} is not an action of table {table.name}")
    expected = [p.name for p in action.params]
    if sorted(names) != sorted(expected):
        raise ValueError(f"{what}: params of {name} must be exactly {expected}")
    ordered = tuple(values[names.index(n)] for n in expected)
    return params_of_call(table, name, ordered, default_port, declared)


def _parse_entry(spec: Any, table: Table, views: tuple[KeyView, ...], default_port: int,
                 what: str, declared: tuple[ActionDecl, ...]) -> tuple[int, Entry]:
    if not isinstance(spec, dict):
        raise ValueError(f"{what}: entry is not an object")
    match = spec.get("match")
    keys = [v.expr for v in views]
    if not isinstance(match, dict) or sorted(match) != sorted(keys):
        raise ValueError(f"{what}: match keys must be exactly {keys}")
    matches = tuple(_unshifted(_parse_match(match[v.expr], kind, f"{what} {v.expr}"), v, what)
                    for v, kind in zip(views, _kinds(table, views), strict=True))
    priority = parse_int(spec.get("priority", 0), f"{what} priority")
    params = _parse_params(spec.get("action"), table, default_port, what, declared)
    return priority, Entry(matches, params)


def _parse_table(spec: Any, pipeline: Pipeline, views: dict[str, tuple[KeyView, ...]]
                 ) -> tuple[Table, tuple[Entry, ...], tuple[int, ...]]:
    if not isinstance(spec, dict) or not isinstance(spec.get("table"), str):
        raise ValueError("runtime table without a 'table' name")
    prefix, _, name = spec["table"].partition(".")
    try:
        table = pipeline.table(name)
    except KeyError:
        raise ValueError(f"unknown table {safe_comment(spec['table'])!r}") from None
    if prefix != INGRESS_CONTROL:
        raise ValueError(f"table {name}: expected control {INGRESS_CONTROL}")
    raw = spec.get("entries", [])
    if not isinstance(raw, list):
        raise ValueError(f"table {name}: 'entries' is not a list")
    port = pipeline.default_port
    declared = table_actions(table)
    parsed = [_parse_entry(e, table, views[name], port, f"table {name} entry {i}", declared)
              for i, e in enumerate(raw)]
    # Highest priority first; ties (exact-only tables, all priority 0) keep their file order.
    ordered = tuple(e for _, e in sorted(parsed, key=lambda pe: -pe[0]))
    default = _parse_params(spec.get("default_action"), table, port, f"table {name} default",
                            declared)
    return table, ordered, default


def read_runtime_entries(
    data: dict[str, Any], pipeline: Pipeline
) -> dict[str, tuple[tuple[Entry, ...], tuple[int, ...]]]:
    """Parse :func:`runtime_entries` JSON into (entries in first-match order, default) per table
    of the switch form of ``pipeline``."""
    pipeline = lower_for_switch(pipeline)
    tables = data.get("tables") if isinstance(data, dict) else None
    if not isinstance(tables, list):
        raise ValueError("runtime entries: 'tables' must be a list")
    arch = data.get("arch", "tna")
    if arch not in ("tna", "v1model"):
        raise ValueError(f"runtime entries: unknown arch {safe_comment(str(arch))!r}")
    views = _views(pipeline, arch)
    result: dict[str, tuple[tuple[Entry, ...], tuple[int, ...]]] = {}
    for spec in tables:
        table, entries, default = _parse_table(spec, pipeline, views)
        if table.name in result:
            raise ValueError(f"table {table.name} appears twice")
        result[table.name] = (entries, default)
    missing = [t.name for t in pipeline.tables() if t.name not in result]
    if missing:
        raise ValueError(f"runtime entries lack tables {missing}")
    return result


# --- bmv2 simple_switch_CLI ----------------------------------------------------------------------


def _cli_match(match: Match) -> str:
    m = canonical(match)
    if isinstance(m, Exact):
        return _hex(m.value)
    if isinstance(m, Ternary):
        return f"{_hex(m.value)}&&&{_hex(m.mask)}"
    return f"{_hex(m.lo)}->{_hex(m.hi)}"


def _cli_table(table: Table, views: tuple[KeyView, ...]) -> list[str]:
    qualified = f"{INGRESS_CONTROL}.{table.name}"
    default_action, default_args = action_call(table, table.default)
    lines = [f"table_clear {qualified}",
             " ".join(["table_set_default", qualified, f"{INGRESS_CONTROL}.{default_action.name}",
                       *map(_hex, default_args)])]
    for i, entry in enumerate(table.entries):
        keys = [_cli_match(_shifted(m, v)) for m, v in zip(entry.matches, views, strict=True)]
        action, args = action_call(table, entry.params)
        # bmv2: smaller number = higher priority; no priority at all for exact-only tables.
        prio = [str(i)] if needs_priority(table) else []
        lines.append(" ".join(["table_add", qualified, f"{INGRESS_CONTROL}.{action.name}",
                               *keys, "=>", *map(_hex, args), *prio]))
    return lines


def simple_switch_commands(pipeline: Pipeline) -> str:
    """bmv2 ``simple_switch_CLI`` commands that clear and install every table (v1model)."""
    pipeline = lower_for_switch(pipeline)
    views = _views(pipeline, "v1model")
    lines: list[str] = []
    for table in pipeline.tables():
        lines += _cli_table(table, views[table.name])
    return "\n".join(lines) + "\n"


# --- Tofino bfrt_python ------------------------------------------------------------------------


def bfrt_key_name(view: KeyView) -> str:
    """bfrt_python's keyword for a key: its @name, else the expression with dots as '_'."""
    if view.name is not None:
        return view.name
    return re.sub(r"[^A-Za-z0-9_]", "_", view.expr)


def _bfrt_keys(table: Table, entry: Entry, views: tuple[KeyView, ...]) -> list[dict[str, str]]:
    """Keyword arguments for one key set."""
    args: list[dict[str, str]] = []
    for view, match in zip(views, entry.matches, strict=True):
        name = bfrt_key_name(view)
        m = canonical(match)
        if isinstance(m, Exact):
            args.append({"name": name, "value": _hex(m.value)})
        elif isinstance(m, Ternary):
            args += [{"name": name, "value": _hex(m.value)},
                     {"name": f"{name}_mask", "value": _hex(m.mask)}]
        else:
            args += [{"name": f"{name}_start", "value": _hex(m.lo)},
                     {"name": f"{name}_end", "value": _hex(m.hi)}]
    return args


def _bfrt_call(table: Table, params: tuple[int, ...]) -> tuple[str, list[dict[str, str]]]:
    action, args = action_call(table, params)
    return action.name, [{"name": p.name, "value": _hex(v)}
                         for p, v in zip(action.params, args, strict=True)]


def _bfrt_table(table: Table, views: tuple[KeyView, ...]) -> dict[str, Any]:
    entries = []
    for i, entry in enumerate(table.entries):
        args = _bfrt_keys(table, entry, views)
        if needs_priority(table):
            args.append({"name": "MATCH_PRIORITY", "value": str(i)})
        action, params = _bfrt_call(table, entry.params)
        entries.append({"action": action, "args": args + params})
    action, params = _bfrt_call(table, table.default)
    return {"name": table.name, "entries": entries, "default": {"action": action, "args": params}}


def bfrt_loader(pipeline: Pipeline, *, program_name: str) -> str:
    """A ``bfrt_python`` script that clears every table and installs entries and defaults."""
    if not _PROGRAM.match(program_name):
        raise ValueError(f"program name {safe_comment(program_name)!r} is not an identifier")
    pipeline = lower_for_switch(pipeline)
    views = _views(pipeline, "tna")
    return render("bfrt_loader.py.j2", {
        "program": program_name,
        "control": INGRESS_CONTROL,
        "tables": [_bfrt_table(t, views[t.name]) for t in pipeline.tables()],
    })
