"""A guard against generator bugs: do the runtime entries fit the P4 program we generated?

The program is our own regular output, so a few regular expressions recover what matters: the
metadata field widths, the ingress control's actions (parameter names and widths) and tables
(keys and match kinds, actions, size, default action). Every runtime table, entry, value, mask
and parameter is then checked against those declarations. Given the flow program, every flow
register must be declared exactly once, with the IR's width and slot count (and, on TNA, with
exactly one RegisterAction of the same width).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from homunculus.ir.flow import FlowProgram
from homunculus.targets.p4.codegen import INGRESS_CONTROL
from homunculus.targets.p4.entries import parse_int
from homunculus.targets.p4.flow_tna import tofino_register_width

_META_STRUCT = re.compile(r"struct\s+metadata_t\s*\{([^}]*)\}")
_BIT_FIELD = re.compile(r"bit<(\d+)>\s+(\w+)\s*;")
_ACTION = re.compile(r"\baction\s+(\w+)\s*\(([^)]*)\)")
_PARAM = re.compile(r"^\s*bit<(\d+)>\s+(\w+)\s*$")
_TABLE = re.compile(r"\btable\s+(\w+)\s*\{")
_KEY_BLOCK = re.compile(r"\bkey\s*=\s*\{([^}]*)\}")
_KEY = re.compile(r"([\w.]+)(?:\[(\d+):(\d+)\])?\s*:\s*(\w+)\s*(?:@name\(\"\w+\"\))?\s*;")
_HEADER_TYPE = re.compile(r"\bheader\s+(\w+)\s*\{([^}]*)\}")
_HEADERS_STRUCT = re.compile(r"struct\s+headers_t\s*\{([^}]*)\}")
_MEMBER = re.compile(r"(\w+)\s+(\w+)\s*;")
_ACTIONS_BLOCK = re.compile(r"\bactions\s*=\s*\{([^}]*)\}")
_SIZE = re.compile(r"\bsize\s*=\s*(\d+)\s*;")
_DEFAULT = re.compile(r"\bdefault_action\s*=\s*(\w+)\s*\(([^)]*)\)\s*;")
_LITERAL = re.compile(r"^\s*(\d+)w(\d+)\s*$")
# v1model: register<bit<W>>(N) name;   TNA: Register<bit<W>, bit<I>>(N[, init]) name;
_REGISTER = re.compile(r"\b(register|Register)\s*<\s*bit<(\d+)>\s*(?:,\s*bit<(\d+)>\s*)?>"
                       r"\s*\(\s*(\d+)\s*(?:,\s*(?:\d+w)?\d+\s*)?\)\s*(\w+)\s*;")
_REGISTER_ACTION = re.compile(r"\bRegisterAction\s*<\s*bit<(\d+)>\s*,\s*bit<(\d+)>\s*,"
                              r"\s*bit<(\d+)>\s*>\s*\(\s*(\w+)\s*\)\s*(\w+)\s*=")


@dataclass(frozen=True)
class TableDecl:
    """What the P4 source declares for one table."""

    keys: dict[str, tuple[str, int]]  # "meta.x" -> (match kind, width)
    actions: tuple[str, ...]
    size: int


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", " ", re.sub(r"//[^\n]*", "", text), flags=re.S)


def _block(text: str, open_brace: int) -> str:
    """The text between the brace at ``open_brace`` and its matching close brace."""
    depth = 0
    for i in range(open_brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_brace + 1 : i]
    raise ValueError("P4 program: unbalanced braces")


def _control_body(text: str, name: str) -> str:
    match = re.search(rf"\bcontrol\s+{name}\s*\(", text)
    if match is None:
        raise ValueError(f"P4 program has no control {name}")
    return _block(text, text.index("{", match.end()))


def _metadata_widths(text: str) -> dict[str, int]:
    match = _META_STRUCT.search(text)
    if match is None:
        raise ValueError("P4 program has no struct metadata_t")
    return {name: int(width) for width, name in _BIT_FIELD.findall(match.group(1))}


def _actions(body: str) -> dict[str, dict[str, int]]:
    actions: dict[str, dict[str, int]] = {}
    for name, params in _ACTION.findall(body):
        parsed: dict[str, int] = {}
        for param in filter(str.strip, params.split(",")):
            m = _PARAM.match(param)
            if m is None:
                raise ValueError(f"action {name}: cannot read parameter '{param.strip()}'")
            parsed[m.group(2)] = int(m.group(1))
        actions[name] = parsed
    return actions


def _header_widths(text: str) -> dict[str, int]:
    """``hdr.<header>.<field>`` -> width, from the header types and struct headers_t."""
    types = {name: {f: int(w) for w, f in _BIT_FIELD.findall(body)}
             for name, body in _HEADER_TYPE.findall(text)}
    struct = _HEADERS_STRUCT.search(text)
    if struct is None:
        raise ValueError("P4 program has no struct headers_t")
    widths: dict[str, int] = {}
    for type_name, member in _MEMBER.findall(struct.group(1)):
        for field, width in types.get(type_name, {}).items():
            widths[f"hdr.{member}.{field}"] = width
    return widths


def _key_width(table: str, expr: str, hi: str, lo: str, widths: dict[str, int]) -> int:
    """The matched width of a key: a metadata or header field, or a slice of one."""
    width = widths.get(expr)
    if width is None:
        raise ValueError(f"table {table}: key {expr} is not a declared field")
    if not hi:
        return width
    if not int(width) > int(hi) >= int(lo) >= 0:
        raise ValueError(f"table {table}: slice [{hi}:{lo}] outside {expr} (bit<{width}>)")
    return int(hi) - int(lo) + 1


def _table_decl(name: str, body: str, widths: dict[str, int],
                actions: dict[str, dict[str, int]]) -> TableDecl:
    keys: dict[str, tuple[str, int]] = {}
    key_block = _KEY_BLOCK.search(body)
    for expr, hi, lo, kind in _KEY.findall(key_block.group(1) if key_block else ""):
        text = f"{expr}[{hi}:{lo}]" if hi else expr
        keys[text] = (kind, _key_width(name, expr, hi, lo, widths))
    acts = _ACTIONS_BLOCK.search(body)
    size = _SIZE.search(body)
    if acts is None or size is None:
        raise ValueError(f"table {name}: no actions or size")
    names = tuple(a.strip() for a in acts.group(1).split(";") if a.strip())
    default = _DEFAULT.search(body)
    if default is not None:
        _check_default_literals(name, default.group(1), default.group(2), actions)
    return TableDecl(keys, names, int(size.group(1)))


def _check_default_literals(table: str, action: str, args: str,
                            actions: dict[str, dict[str, int]]) -> None:
    if action == "NoAction" and not args.strip():  # core.p4's
        return
    if action not in actions:
        raise ValueError(f"table {table}: default action {action} is not declared")
    literals = [a for a in args.split(",") if a.strip()]
    widths = list(actions[action].values())
    if len(literals) != len(widths):
        raise ValueError(f"table {table}: default action has {len(literals)} args, "
                         f"{action} takes {len(widths)}")
    for literal, width in zip(literals, widths, strict=True):
        m = _LITERAL.match(literal)
        if m is None or int(m.group(1)) != width or int(m.group(2)) >= 1 << width:
            raise ValueError(f"table {table}: default argument '{literal.strip()}' is not a "
                             f"bit<{width}> literal that fits")


def _tables(body: str, widths: dict[str, int],
            actions: dict[str, dict[str, int]]) -> dict[str, TableDecl]:
    """Tables the control plane fills (tables with const entries are complete in the source)."""
    tables = {}
    for match in _TABLE.finditer(body):
        name = match.group(1)
        text = _block(body, match.end() - 1)
        if "const entries" in text:
            continue
        tables[name] = _table_decl(name, text, widths, actions)
    return tables


def _fits(value: Any, width: int, what: str) -> int:
    parsed = parse_int(value, what)
    if parsed >= 1 << width:
        raise ValueError(f"{what}: value {parsed} does not fit in bit<{width}>")
    return parsed


def _check_action(spec: Any, decl: TableDecl, actions: dict[str, dict[str, int]],
                  what: str) -> None:
    if not isinstance(spec, dict) or not isinstance(spec.get("action"), str):
        raise ValueError(f"{what}: no action")
    control, _, name = spec["action"].partition(".")
    if control != INGRESS_CONTROL or name not in actions or name not in decl.actions:
        raise ValueError(f"{what}: action {spec['action']!r} is not an action of the table")
    params = spec.get("params", {})
    if not isinstance(params, dict) or sorted(params) != sorted(actions[name]):
        raise ValueError(f"{what}: params {sorted(params) if isinstance(params, dict) else params}"
                         f" != declared {sorted(actions[name])}")
    for pname, width in actions[name].items():
        _fits(params[pname], width, f"{what} param {pname}")


def _check_match(expr: str, spec: Any, kind: str, width: int, what: str) -> tuple[int, ...]:
    if not isinstance(spec, dict) or list(spec) != [kind] or not isinstance(spec[kind], dict):
        raise ValueError(f"{what}: key {expr} is declared {kind}, entry has {spec!r}")
    body = spec[kind]
    fields = {"exact": ("value",), "ternary": ("value", "mask"), "range": ("low", "high")}[kind]
    if sorted(body) != sorted(fields):
        raise ValueError(f"{what}: {kind} match on {expr} needs exactly {list(fields)}")
    values = tuple(_fits(body[f], width, f"{what} {expr} {f}") for f in fields)
    if kind == "ternary" and values[0] & ~values[1]:
        raise ValueError(f"{what}: ternary value of {expr} has bits outside its mask")
    if kind == "range" and values[0] > values[1]:
        raise ValueError(f"{what}: empty range on {expr}")
    return values


def _check_entries(name: str, spec: dict[str, Any], decl: TableDecl,
                   actions: dict[str, dict[str, int]]) -> None:
    entries = spec.get("entries", [])
    if not isinstance(entries, list):
        raise ValueError(f"table {name}: entries is not a list")
    if len(entries) > decl.size:
        raise ValueError(f"table {name}: {len(entries)} entries but size = {decl.size}")
    prioritised = any(kind in ("ternary", "range") for kind, _ in decl.keys.values())
    seen: set[Any] = set()
    for i, entry in enumerate(entries):
        what = f"table {name} entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("match"), dict):
            raise ValueError(f"{what}: no match")
        if sorted(entry["match"]) != sorted(decl.keys):
            raise ValueError(f"{what}: keys {sorted(entry['match'])} != {sorted(decl.keys)}")
        key = tuple(_check_match(expr, entry["match"][expr], kind, width, what)
                    for expr, (kind, width) in decl.keys.items())
        _check_action(entry.get("action"), decl, actions, what)
        priority = parse_int(entry.get("priority", 0), f"{what} priority")
        if prioritised and priority < 1:
            raise ValueError(f"{what}: ternary/range entries need priority >= 1")
        if not prioritised and priority != 0:
            raise ValueError(f"{what}: exact-only entries must have priority 0")
        ident = priority if prioritised else key
        if ident in seen:
            raise ValueError(f"{what}: duplicate {'priority' if prioritised else 'key'}")
        seen.add(ident)


@dataclass(frozen=True)
class RegisterDecl:
    """What the P4 source declares for one register array."""

    width: int
    index_width: int | None  # TNA only
    size: int


def _registers(body: str) -> dict[str, RegisterDecl]:
    decls: dict[str, RegisterDecl] = {}
    for _, width, index, size, name in _REGISTER.findall(body):
        if name in decls:
            raise ValueError(f"register {name} is declared twice")
        decls[name] = RegisterDecl(int(width), int(index) if index else None, int(size))
    return decls


def _check_register_actions(body: str, decls: dict[str, RegisterDecl]) -> None:
    """On TNA: exactly one RegisterAction per register, with the register's types."""
    seen: set[str] = set()
    for width, index, out, reg, name in _REGISTER_ACTION.findall(body):
        decl = decls.get(reg)
        if decl is None:
            raise ValueError(f"RegisterAction {name} uses undeclared register {reg}")
        if reg in seen:
            raise ValueError(f"register {reg} has more than one RegisterAction")
        seen.add(reg)
        # the signature's output is the new-flow flag, the telemetry counter's the sample flag
        expected_out = 1 if reg in ("r_sig", "hmn_tel_ctr") else decl.width
        if (int(width), int(index), int(out)) != (decl.width, decl.index_width, expected_out):
            raise ValueError(f"RegisterAction {name}: types do not match register {reg}")
    missing = sorted(n for n, d in decls.items() if d.index_width is not None and n not in seen)
    if missing:
        raise ValueError(f"registers without a RegisterAction: {missing}")


def check_flow_registers(p4_text: str, flow: FlowProgram) -> None:
    """Raise ValueError unless the program declares exactly the IR's registers, once each."""
    body = _control_body(_strip_comments(p4_text), INGRESS_CONTROL)
    every = _registers(body)
    decls = {n: d for n, d in every.items() if not n.startswith("hmn_")}  # ours: version, tel
    expected = {r.name: r for r in flow.registers}
    if sorted(decls) != sorted(expected):
        raise ValueError(f"registers {sorted(decls)} != flow program {sorted(expected)}")
    index_width = flow.config.slots.bit_length() - 1
    for name, decl in decls.items():
        reg = expected[name]
        width = reg.width if decl.index_width is None else tofino_register_width(reg)
        if decl.width != width or decl.size != flow.config.slots:
            raise ValueError(f"register {name}: declared bit<{decl.width}> x {decl.size}, flow "
                             f"program says bit<{width}> x {flow.config.slots}")
        if decl.index_width not in (None, index_width):
            raise ValueError(f"register {name}: index bit<{decl.index_width}>, "
                             f"needs bit<{index_width}>")
    _check_register_actions(body, every)


def check_program(p4_text: str, runtime: dict[str, Any], *,
                  flow: FlowProgram | None = None) -> None:
    """Raise ValueError unless every runtime table/entry/value fits the P4 declarations.

    With ``flow``, also check the flow registers (:func:`check_flow_registers`).
    """
    if flow is not None:
        check_flow_registers(p4_text, flow)
    text = _strip_comments(p4_text)
    widths = {f"meta.{n}": w for n, w in _metadata_widths(text).items()}
    widths |= _header_widths(text)
    body = _control_body(text, INGRESS_CONTROL)
    actions = _actions(body)
    tables = _tables(body, widths, actions)
    specs = runtime.get("tables") if isinstance(runtime, dict) else None
    if not isinstance(specs, list):
        raise ValueError("runtime: 'tables' must be a list")
    written: set[str] = set()
    for spec in specs:
        if not isinstance(spec, dict) or not isinstance(spec.get("table"), str):
            raise ValueError("runtime: table without a name")
        control, _, name = spec["table"].partition(".")
        if control != INGRESS_CONTROL or name not in tables:
            raise ValueError(f"runtime table {spec['table']!r} is not declared in the program")
        if name in written:
            raise ValueError(f"runtime table {name} appears twice")
        written.add(name)
        _check_action(spec.get("default_action"), tables[name], actions, f"table {name} default")
        _check_entries(name, spec, tables[name], actions)
    missing = sorted(set(tables) - written)
    if missing:
        raise ValueError(f"program tables without runtime entries: {missing}")
