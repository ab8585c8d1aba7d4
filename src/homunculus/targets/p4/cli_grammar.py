"""``simple_switch_CLI`` command files, checked against the P4 program they configure.

The grammar is bmv2's ``tools/runtime_CLI.py`` (p4lang/behavioral-model), one command a line:

* ``table_clear <table>``
* ``table_set_default <table> <action> <action parameters>``
* ``table_add <table> <action> <match fields> => <action parameters> [priority]``

Names are control-plane names (``MyIngress.verdict``) or a unique suffix of one. A match field
is ``value`` (exact), ``value&&&mask`` (ternary), ``value/length`` (lpm) or ``low->high``
(range); numbers are anything Python's ``int(text, 0)`` reads (hex ``0x..`` or decimal; dotted
IPv4 for 32-bit, MAC for 48-bit and IPv6 for 128-bit fields are accepted too). A table whose keys
include a range or ternary field takes a priority as the last word, a decimal integer (the CLI
uses ``int()``); in bmv2 the *smallest* number wins (p4lang/behavioral-model issue 1121); other
tables take none. The CLI sizes a key by its *whole field* (p4c's bmv2 backend keys a slice
``f[h:l]`` on ``f`` with a mask), so a slice's value must sit at the slice's bit position.

Checked on top of what the CLI itself rejects, because bmv2 would take them silently and the
switch would then compute something else: every value fits its width (bmv2 neither checks nor
truncates), no bits outside a slice, ternary values within their masks, lpm values within their
prefix, no two entries of a table with the same priority (their order would be arbitrary), no
duplicate exact key, at most ``size`` entries, no blank line (``cmd.Cmd`` repeats the previous
command on an empty line) and no comment (``#`` is not CLI syntax).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from homunculus.targets.p4.check import _block, _strip_comments

EXACT, TERNARY, LPM, RANGE = "exact", "ternary", "lpm", "range"
MATCH_KINDS = (EXACT, TERNARY, LPM, RANGE, "optional")
DEFAULT_TABLE_SIZE = 1024  # p4c's bmv2 backend, when a table declares no size
PRIORITY_MAX = 2**31 - 1  # the CLI sends priorities as Thrift i32

# v1model.p4's standard_metadata_t (the program includes it, so it is not in the program text).
STANDARD_METADATA = {
    "ingress_port": 9, "egress_spec": 9, "egress_port": 9, "instance_type": 32,
    "packet_length": 32, "enq_timestamp": 32, "enq_qdepth": 19, "deq_timedelta": 32,
    "deq_qdepth": 19, "ingress_global_timestamp": 48, "egress_global_timestamp": 48,
    "mcast_grp": 16, "egress_rid": 16, "checksum_error": 1, "priority": 3,
}

_ANNOTATION = r"(?:@\w+(?:\s*\((?:[^()]|\([^()]*\))*\))?\s*)*"
_TYPE_DECL = re.compile(r"\b(header|struct|header_union)\s+(\w+)\s*\{")
_TYPEDEF = re.compile(r"\b(?:typedef|type)\s+(bit<\d+>|int<\d+>|bool|\w+)\s+(\w+)\s*;")
_MEMBER = re.compile(_ANNOTATION + r"(bit<\s*\d+\s*>|int<\s*\d+\s*>|bool|\w+)\s+(\w+)\s*;")
_CONTROL = re.compile(r"\bcontrol\s+(\w+)\s*(?:<[^>]*>)?\s*\(([^)]*)\)\s*(?:\([^)]*\)\s*)?")
_CONTROL_PARAM = re.compile(r"^(?:in|out|inout)?\s*(\w+(?:<\s*\d+\s*>)?)\s+(\w+)$")
_DECL_HEAD = re.compile(r"(" + _ANNOTATION + r")\b(action|table)\s+(\w+)\s*")
_NAME = re.compile(r"@name\s*\(\s*\"([^\"]+)\"\s*\)")
_PARAM = re.compile(r"^(?:(in|out|inout)\s+)?(bit<\s*\d+\s*>|int<\s*\d+\s*>|bool|\w+)\s+(\w+)$")
_WIDTH = re.compile(r"^(?:bit|int)<\s*(\d+)\s*>$")
_KEY_BLOCK = re.compile(r"\bkey\s*=\s*\{")
_ACTIONS_BLOCK = re.compile(r"\bactions\s*=\s*\{")
_SIZE = re.compile(r"\bsize\s*=\s*(\d+)\s*;")
_DEFAULT = re.compile(r"\b(const\s+)?default_action\s*=")
_CONST_ENTRIES = re.compile(r"\bconst\s+entries\s*=")
_SLICE = re.compile(r"^(.+)\[(\d+):(\d+)\]$")
_DECIMAL = re.compile(r"^\d+$")


class CliError(ValueError):
    """A line of a CLI file that bmv2 would reject or take to mean something else."""

    def __init__(self, line: int, text: str, message: str) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}: {text.strip()!r}")


# ----------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class KeyField:
    """One key of a table, as the CLI sees it."""

    expr: str  # as written in the program, without spaces: "hdr.ipv4.ttl", "meta.x[15:15]"
    kind: str
    width: int  # bits the CLI reads: the whole field, also for a slice
    mask: int  # the field's bits this key uses (all of them unless a slice)
    shift: int  # the slice's low bit (0 unless a slice)


@dataclass(frozen=True)
class ActionDecl:
    name: str  # control-plane name: "MyIngress.verdict_set"
    params: tuple[tuple[str, int], ...]  # (name, width) of each control-plane parameter


@dataclass(frozen=True)
class TableDecl:
    name: str
    keys: tuple[KeyField, ...]
    actions: tuple[str, ...]
    size: int
    default_only: frozenset[str] = frozenset()
    table_only: frozenset[str] = frozenset()
    const_default: bool = False
    const_entries: bool = False

    @property
    def match_type(self) -> str:
        """bmv2's table match type: range > ternary > lpm > exact (p4c's bmv2 backend)."""
        kinds = {TERNARY if k.kind == "optional" else k.kind for k in self.keys}
        return next((k for k in (RANGE, TERNARY, LPM) if k in kinds), EXACT)

    @property
    def prioritised(self) -> bool:
        return self.match_type in (TERNARY, RANGE)


@dataclass(frozen=True)
class Declarations:
    tables: dict[str, TableDecl]
    actions: dict[str, ActionDecl]


def _width_of(type_name: str, typedefs: dict[str, str]) -> int | None:
    seen = 0
    while type_name in typedefs and seen < 16:
        type_name, seen = typedefs[type_name], seen + 1
    if type_name == "bool":
        return 1
    m = _WIDTH.match(type_name.replace(" ", ""))
    return int(m.group(1)) if m else None


def _types(text: str) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Header/struct member types by type name, and typedefs."""
    composite: dict[str, dict[str, str]] = {}
    for m in _TYPE_DECL.finditer(text):
        body = _block(text, m.end() - 1)
        composite[m.group(2)] = {name: kind for kind, name in _MEMBER.findall(body)}
    typedefs = {name: kind for kind, name in _TYPEDEF.findall(text)}
    composite.setdefault("standard_metadata_t",
                         {k: f"bit<{w}>" for k, w in STANDARD_METADATA.items()})
    return composite, typedefs


def _field_width(path: list[str], scope: dict[str, str], composite: dict[str, dict[str, str]],
                 typedefs: dict[str, str]) -> int:
    if path[0] not in scope:
        raise ValueError(f"'{path[0]}' is not a parameter of the control")
    kind = scope[path[0]]
    for part in path[1:]:
        members = composite.get(kind)
        if members is None or part not in members:
            raise ValueError(f"'{part}' is not a field of {kind}")
        kind = members[part]
    width = _width_of(kind, typedefs)
    if width is None:
        raise ValueError(f"'{'.'.join(path)}' is a {kind}, not a bit field")
    return width


def key_field(expr: str, kind: str, scope: dict[str, str],
              composite: dict[str, dict[str, str]], typedefs: dict[str, str]) -> KeyField:
    """A key expression (field path, slice of one, or ``h.isValid()``) as the CLI sizes it."""
    text = re.sub(r"\s+", "", expr)
    if kind not in MATCH_KINDS:
        raise ValueError(f"key {text}: match kind '{kind}' is not one bmv2 knows")
    if text.endswith(".isValid()"):
        return KeyField(text, kind, 1, 1, 0)
    sliced = _SLICE.match(text)
    base = sliced.group(1) if sliced else text
    if not re.fullmatch(r"\w+(\.\w+)+", base):
        raise ValueError(f"key {text}: only fields, slices of fields and isValid() are read")
    width = _field_width(base.split("."), scope, composite, typedefs)
    if sliced is None:
        return KeyField(text, kind, width, (1 << width) - 1, 0)
    hi, lo = int(sliced.group(2)), int(sliced.group(3))
    if not lo <= hi < width:
        raise ValueError(f"key {text}: slice [{hi}:{lo}] outside bit<{width}>")
    if kind == LPM:
        raise ValueError(f"key {text}: lpm on a slice is not read by this checker")
    return KeyField(text, kind, width, ((1 << (hi - lo + 1)) - 1) << lo, lo)


def _control_name(control: str, local: str, annotations: str) -> str:
    named = _NAME.search(annotations)
    if named is None:
        return f"{control}.{local}"
    name = named.group(1)
    return name[1:] if name.startswith(".") else f"{control}.{name}"


def _params(text: str, typedefs: dict[str, str], what: str) -> tuple[tuple[str, int], ...]:
    params = []
    for raw in filter(str.strip, text.split(",")):
        m = _PARAM.match(re.sub(_ANNOTATION, "", raw.strip()).strip())
        if m is None:
            raise ValueError(f"{what}: cannot read parameter '{raw.strip()}'")
        if m.group(1):  # directional: bound by the caller, not by the control plane
            continue
        width = _width_of(m.group(2), typedefs)
        if width is None:
            raise ValueError(f"{what}: parameter '{raw.strip()}' is not a bit field")
        params.append((m.group(3), width))
    return tuple(params)


def _action_list(body: str, names: dict[str, str]) -> tuple[tuple[str, ...], set[str], set[str]]:
    found = _ACTIONS_BLOCK.search(body)
    if found is None:
        return (), set(), set()
    actions: list[str] = []
    default_only: set[str] = set()
    table_only: set[str] = set()
    for item in filter(str.strip, _block(body, found.end() - 1).split(";")):
        local = re.sub(_ANNOTATION, "", item).strip().removesuffix("()").strip()
        name = names.get(local, local)
        actions.append(name)
        if "@defaultonly" in item:
            default_only.add(name)
        if "@tableonly" in item:
            table_only.add(name)
    return tuple(actions), default_only, table_only


def _table(name: str, body: str, names: dict[str, str], scope: dict[str, str],
           composite: dict[str, dict[str, str]], typedefs: dict[str, str]) -> TableDecl:
    keys: list[KeyField] = []
    found = _KEY_BLOCK.search(body)
    if found is not None:
        for element in filter(str.strip, _block(body, found.end() - 1).split(";")):
            expr, sep, kind = re.sub(r"@\w+(\([^)]*\))?", "", element).rpartition(":")
            if not sep:
                raise ValueError(f"table {name}: cannot read key '{element.strip()}'")
            keys.append(key_field(expr, kind.strip(), scope, composite, typedefs))
    if sum(k.kind == LPM for k in keys) > 1:
        raise ValueError(f"table {name}: more than one lpm key")
    actions, default_only, table_only = _action_list(body, names)
    size = _SIZE.search(body)
    default = _DEFAULT.search(body)
    return TableDecl(name, tuple(keys), actions,
                     int(size.group(1)) if size else DEFAULT_TABLE_SIZE,
                     frozenset(default_only), frozenset(table_only),
                     bool(default and default.group(1)), bool(_CONST_ENTRIES.search(body)))


def _control_decls(control: str, params: str, body: str, composite: dict[str, dict[str, str]],
                   typedefs: dict[str, str], actions: dict[str, ActionDecl],
                   tables: dict[str, TableDecl]) -> None:
    scope = {}
    for raw in filter(str.strip, params.split(",")):
        m = _CONTROL_PARAM.match(raw.strip())
        if m is not None:
            scope[m.group(2)] = m.group(1)
    heads = []
    depth = 0
    last = 0
    for m in _DECL_HEAD.finditer(body):  # only the control's own declarations (depth 0)
        depth += body.count("{", last, m.start()) - body.count("}", last, m.start())
        last = m.start()
        if depth == 0:
            heads.append(m)
    names = {}
    for m in heads:
        names[m.group(3)] = _control_name(control, m.group(3), m.group(1))
    for m in heads:
        name = names[m.group(3)]
        if m.group(2) == "action":
            close = body.index(")", m.end())
            actions[name] = ActionDecl(name, _params(body[m.end() + 1:close], typedefs,
                                                     f"action {name}"))
        else:
            tables[name] = _table(name, _block(body, body.index("{", m.end())), names, scope,
                                  composite, typedefs)


def declarations(p4_text: str) -> Declarations:
    """The tables and actions a P4 program declares, with control-plane names and widths."""
    text = _strip_comments(p4_text)
    composite, typedefs = _types(text)
    actions: dict[str, ActionDecl] = {}
    tables: dict[str, TableDecl] = {}
    outside = text
    for m in _CONTROL.finditer(text):
        if m.end() >= len(text) or text[m.end()] != "{":
            continue  # a control type declaration, not a control
        body = _block(text, m.end())
        _control_decls(m.group(1), m.group(2), body, composite, typedefs, actions, tables)
        span = slice(m.start(), m.end() + len(body) + 2)
        outside = outside[:span.start] + " " * (span.stop - span.start) + outside[span.stop:]
    actions.setdefault("NoAction", ActionDecl("NoAction", ()))  # core.p4
    for m in re.finditer(r"\baction\s+(\w+)\s*\(([^)]*)\)", outside):  # top-level actions
        actions.setdefault(m.group(1), ActionDecl(m.group(1), _params(m.group(2), typedefs,
                                                                      m.group(1))))
    for table in tables.values():
        missing = [a for a in table.actions if a not in actions]
        if missing:
            raise ValueError(f"table {table.name}: actions {missing} are not declared")
    return Declarations(tables, actions)


# ----------------------------------------------------------------------------- the CLI file

Key = tuple[int, ...]  # exact (value,), ternary (value, mask), lpm (value, length), range (lo, hi)


@dataclass(frozen=True)
class CliEntry:
    line: int
    keys: tuple[Key, ...]
    action: str
    params: tuple[int, ...]
    priority: int | None


@dataclass
class TableState:
    """One table after the whole file has run: its default action and its entries."""

    default: tuple[str, tuple[int, ...]] | None = None
    entries: list[CliEntry] = field(default_factory=list)


def suffix_names(names: list[str]) -> dict[str, str]:
    """Every name and every unique dotted suffix of one -> the name (as the CLI resolves)."""
    found: dict[str, set[str]] = {}
    for name in names:
        parts = name.split(".")
        for i in range(len(parts)):
            found.setdefault(".".join(parts[i:]), set()).add(name)
    return {suffix: next(iter(full)) for suffix, full in found.items() if len(full) == 1}


def parse_number(text: str, width: int) -> int:
    """A CLI number (or address) that must fit ``bit<width>``; ValueError says why not."""
    if width == 32 and "." in text:
        value = int(ipaddress.IPv4Address(text))
    elif width == 48 and ":" in text:
        groups = text.split(":")
        if len(groups) != 6:
            raise ValueError(f"'{text}' is not a MAC address")
        value = int("".join(g.zfill(2) for g in groups), 16)
    elif width == 128 and ":" in text:
        value = int(ipaddress.IPv6Address(text))
    else:
        try:
            value = int(text, 0)
        except ValueError:
            raise ValueError(f"'{text}' is not a number") from None
    if value < 0 or value >= 1 << width:
        raise ValueError(f"{text} does not fit in bit<{width}>")
    return value


def parse_match(text: str, key: KeyField) -> Key:
    """One match field of ``table_add`` for ``key``, with the checks bmv2 leaves out."""
    kind = TERNARY if key.kind == "optional" else key.kind
    separator = {TERNARY: "&&&", LPM: "/", RANGE: "->"}.get(kind)
    parts = text.split(separator) if separator else [text]
    if len(parts) != (1 if separator is None else 2):
        raise ValueError(f"{kind} key {key.expr} is written "
                         + {EXACT: "value", TERNARY: "value&&&mask", LPM: "value/length",
                            RANGE: "low->high"}[kind])
    if kind == LPM:
        value, length = parse_number(parts[0], key.width), parts[1]
        if not _DECIMAL.match(length) or int(length) > key.width:
            raise ValueError(f"lpm length {length} of {key.expr} is not 0..{key.width}")
        if value & ((1 << (key.width - int(length))) - 1):
            raise ValueError(f"lpm value of {key.expr} has bits beyond its /{length} prefix")
        return (value, int(length))
    values = tuple(parse_number(p, key.width) for p in parts)
    for value in values:
        if value & ~key.mask:
            raise ValueError(f"{text} sets bits outside {key.expr} (mask {key.mask:#x}): bmv2 "
                             "keys a slice on its whole field, so write the value at its bit "
                             "position")
    if kind == TERNARY and values[0] & ~values[1]:
        raise ValueError(f"ternary value of {key.expr} has bits outside its mask")
    if kind == RANGE and values[0] > values[1]:
        raise ValueError(f"empty range on {key.expr}")
    return values


def parse_params(words: list[str], action: ActionDecl) -> tuple[int, ...]:
    if len(words) != len(action.params):
        raise ValueError(f"action {action.name} takes {len(action.params)} parameter(s), "
                         f"got {len(words)}")
    return tuple(parse_number(w, width) for w, (_, width) in zip(words, action.params,
                                                                  strict=True))


@dataclass(frozen=True)
class _Resolver:
    decls: Declarations
    tables: dict[str, str]
    actions: dict[str, str]

    def table(self, word: str) -> TableDecl:
        if word not in self.tables:
            raise ValueError(f"no table '{word}' in the program")
        return self.decls.tables[self.tables[word]]

    def action(self, table: TableDecl, word: str) -> ActionDecl:
        name = self.actions.get(word)
        if name is None or name not in table.actions:
            raise ValueError(f"table {table.name} has no action '{word}'")
        return self.decls.actions[name]


def _table_add(args: list[str], resolve: _Resolver, number: int,
               states: dict[str, TableState]) -> None:
    if len(args) < 3:
        raise ValueError("table_add needs <table> <action> <match fields> => <parameters>")
    table = resolve.table(args[0])
    action = resolve.action(table, args[1])
    if action.name in table.default_only:
        raise ValueError(f"action {action.name} is @defaultonly in table {table.name}")
    if table.const_entries:
        raise ValueError(f"table {table.name} has const entries")
    words = args[2:]
    priority = None
    if table.prioritised:
        if not words or not _DECIMAL.match(words[-1]) or int(words[-1]) > PRIORITY_MAX:
            raise ValueError(f"table {table.name} is {table.match_type}: the last word must "
                             "be a decimal priority (0..2^31-1)")
        priority = int(words.pop())
    if words.count("=>") != 1:
        raise ValueError("table_add needs exactly one '=>' between match fields and parameters")
    cut = words.index("=>")
    if cut != len(table.keys):
        raise ValueError(f"table {table.name} has {len(table.keys)} key(s), got {cut} "
                         "match field(s)" + ("" if table.prioritised else
                                             " (exact and lpm tables take no priority)"))
    keys = tuple(parse_match(w, k) for w, k in zip(words[:cut], table.keys, strict=True))
    entry = CliEntry(number, keys, action.name, parse_params(words[cut + 1:], action), priority)
    state = states.setdefault(table.name, TableState())
    for other in state.entries:
        if priority is not None and other.priority == priority:
            raise ValueError(f"priority {priority} is taken by line {other.line}: the order "
                             "of the two entries would be arbitrary")
        if priority is None and other.keys == keys:
            raise ValueError(f"the key is already added on line {other.line}")
    if len(state.entries) >= table.size:
        raise ValueError(f"table {table.name} holds {table.size} entries (size)")
    state.entries.append(entry)


def _command(words: list[str], resolve: _Resolver, number: int,
             states: dict[str, TableState]) -> None:
    command, args = words[0], words[1:]
    if command == "table_clear":
        if len(args) != 1:
            raise ValueError("table_clear takes one table")
        states.setdefault(resolve.table(args[0]).name, TableState()).entries.clear()
    elif command == "table_set_default":
        if len(args) < 2:
            raise ValueError("table_set_default needs <table> <action> <parameters>")
        table = resolve.table(args[0])
        action = resolve.action(table, args[1])
        if table.const_default:
            raise ValueError(f"table {table.name} has a const default_action")
        if action.name in table.table_only:
            raise ValueError(f"action {action.name} is @tableonly in table {table.name}")
        states.setdefault(table.name, TableState()).default = (
            action.name, parse_params(args[2:], action))
    elif command == "table_add":
        _table_add(args, resolve, number, states)
    else:
        raise ValueError(f"'{command}' is not a command this checker reads")


def check_cli(text: str, decls: Declarations) -> dict[str, TableState]:
    """Run every line of a CLI file against the program's declarations; raise CliError at the
    first line bmv2 would reject or read otherwise. Returns each table's resulting state."""
    resolve = _Resolver(decls, suffix_names(list(decls.tables)),
                        suffix_names(list(decls.actions)))
    states: dict[str, TableState] = {}
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the file
    for number, line in enumerate(lines, 1):
        words = line.split()
        try:
            if not words:
                raise ValueError("blank line (simple_switch_CLI repeats the previous command)")
            if words[0].startswith("#"):
                raise ValueError("comment (not simple_switch_CLI syntax)")
            _command(words, resolve, number, states)
        except ValueError as exc:
            raise CliError(number, line, str(exc)) from None
    return states


def unconfigured_tables(states: dict[str, TableState], decls: Declarations) -> list[str]:
    """Tables the file never touches (they keep the program's default action and no entry)."""
    return sorted(set(decls.tables) - set(states))


# ----------------------------------------------------------------------------- vs entries.json


def _runtime_key(spec: Any, key: KeyField) -> Key:
    """A P4Runtime-style match (slice coordinates) moved to the CLI's field coordinates."""
    kind = TERNARY if key.kind == "optional" else key.kind
    body = spec.get(kind) if isinstance(spec, dict) else None
    fields = {EXACT: ("value",), TERNARY: ("value", "mask"), LPM: ("value", "prefix_len"),
              RANGE: ("low", "high")}[kind]
    if not isinstance(body, dict) or sorted(body) != sorted(fields):
        raise ValueError(f"{key.expr}: expected a {kind} match with {list(fields)}")
    values = [int(body[f], 0) if isinstance(body[f], str) else int(body[f]) for f in fields]
    if kind == LPM:
        return (values[0] << key.shift, values[1])
    return tuple(v << key.shift for v in values)


def _runtime_action(spec: Any, table: TableDecl,
                    decls: Declarations) -> tuple[str, tuple[int, ...]]:
    name = spec.get("action") if isinstance(spec, dict) else None
    if name not in table.actions:
        raise ValueError(f"table {table.name}: action {name!r} is not one of its actions")
    params = spec.get("params") or {}
    order = [p for p, _ in decls.actions[name].params]
    if sorted(params) != sorted(order):
        raise ValueError(f"table {table.name}: params {sorted(params)} != {order}")
    return name, tuple(int(params[p], 0) if isinstance(params[p], str) else int(params[p])
                       for p in order)


def _in_match_order(entries: list[tuple[int | None, Any]], smaller_first: bool) -> list[Any]:
    """Entries in the order a lookup tries them (exact-only tables: a canonical order)."""
    if all(p is None for p, _ in entries):
        return sorted((e for _, e in entries), key=repr)
    sign = 1 if smaller_first else -1
    return [e for _, e in sorted(entries, key=lambda pe: sign * pe[0])]


def compare_with_runtime(states: dict[str, TableState], decls: Declarations,
                         runtime: dict[str, Any]) -> None:
    """Raise ValueError unless the CLI file installs what ``runtime/entries.json`` installs:
    the same defaults, entries and match order (P4Runtime: larger priority first; bmv2's CLI:
    smaller first)."""
    specs = runtime.get("tables") if isinstance(runtime, dict) else None
    if not isinstance(specs, list):
        raise ValueError("entries.json: 'tables' must be a list")
    seen = set()
    for spec in specs:
        table = decls.tables.get(spec.get("table")) if isinstance(spec, dict) else None
        if table is None:
            raise ValueError(f"entries.json: table {spec!r:.60} is not in the program")
        seen.add(table.name)
        state = states.get(table.name, TableState())
        default = _runtime_action(spec.get("default_action"), table, decls)
        if state.default != default:
            raise ValueError(f"table {table.name}: default {state.default} in the CLI file, "
                             f"{default} in entries.json")
        wanted = []
        for e in spec.get("entries", []):
            keys = tuple(_runtime_key(e["match"].get(k.expr), k) for k in table.keys)
            priority = int(e.get("priority", 0)) if table.prioritised else None
            wanted.append((priority, (keys, *_runtime_action(e.get("action"), table, decls))))
        have = [(e.priority, (e.keys, e.action, e.params)) for e in state.entries]
        if _in_match_order(have, True) != _in_match_order(wanted, False):
            raise ValueError(f"table {table.name}: the CLI file's {len(have)} entries differ "
                             f"from entries.json's {len(wanted)} (keys, actions or order)")
    extra = sorted(set(states) - seen)
    if extra:
        raise ValueError(f"the CLI file configures tables entries.json lacks: {extra}")
