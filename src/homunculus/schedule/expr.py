"""Schedules of several models: the expression, its parser and its checks.

``a | b``: both models classify every packet the schedule classifies. ``a > b``: ``b`` runs only on
packets that *pass* ``a``. A model with a gate, ``a[benign, web]``, passes the packets it puts in
one of those classes; without a gate, a model passes the packets its own verdict does not drop.
``|`` binds tighter than ``>`` (as in Python) and ``>`` groups to the left, so
``ad[benign] > tc | bd`` is ``ad[benign] > (tc | bd)``. Recursively:

* ``ran(root)`` is every classified packet; ``ran(part) = ran(a | b ...)`` for every part of a
  ``|``; for ``l > r``, ``ran(l) = ran(l > r)`` and ``ran(r) = passes(l)``.
* ``passes(m)`` = ``ran(m)`` and (class in the gate, or, without a gate, not dropped by m's
  verdict); ``passes(a | b ...)`` = every part passes; ``passes(l > r)`` = ``passes(r)``.

A gate is only meaningful where its model decides what runs next: on a model that ends the left
side of a ``>``. The verdicts of the models that ran combine by the schedule's policy
(schedule/policy.py). A model may read an upstream model's class as a feature; the upstream model
must then run before it (be on the left of a ``>`` whose right side holds it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass


class ScheduleSyntaxError(ValueError):
    """A malformed schedule expression; ``column`` is 1-based."""

    def __init__(self, message: str, column: int | None = None) -> None:
        self.column = column
        super().__init__(message if column is None else f"at column {column}: {message}")


@dataclass(frozen=True)
class Ref:
    """One model, optionally with the gate of the ``>`` it ends the left side of."""

    name: str
    gate: tuple[str, ...] | None = None
    column: int | None = None  # where it appears in the expression (1-based), for errors


@dataclass(frozen=True)
class Par:
    """``a | b | ...``: every part classifies the same packets."""

    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Seq:
    """``first > then``: ``then`` runs on the packets that pass ``first``."""

    first: Node
    then: Node


Node = Ref | Par | Seq


def refs(node: Node) -> Iterator[Ref]:
    """Every model reference, left to right."""
    if isinstance(node, Ref):
        yield node
    elif isinstance(node, Par):
        for part in node.parts:
            yield from refs(part)
    else:
        yield from refs(node.first)
        yield from refs(node.then)


def names(node: Node) -> list[str]:
    return [r.name for r in refs(node)]


def exposed(node: Node) -> list[Ref]:
    """The models whose outcome decides whether a packet passes ``node``."""
    if isinstance(node, Ref):
        return [node]
    if isinstance(node, Par):
        return [r for part in node.parts for r in exposed(part)]
    return exposed(node.then)


def upstream_pairs(node: Node) -> set[tuple[str, str]]:
    """(a, b) for every model a that runs before model b (a on the left of a ``>``, b right)."""
    if isinstance(node, Ref):
        return set()
    if isinstance(node, Par):
        return set().union(*(upstream_pairs(p) for p in node.parts))
    pairs = upstream_pairs(node.first) | upstream_pairs(node.then)
    return pairs | {(a, b) for a in names(node.first) for b in names(node.then)}


def priority(node: Node) -> list[str]:
    """The default policy order: downstream models before the ones they follow, parallel
    models left to right."""
    if isinstance(node, Ref):
        return [node.name]
    if isinstance(node, Par):
        return [n for part in node.parts for n in priority(part)]
    return priority(node.then) + priority(node.first)


def to_text(node: Node) -> str:
    """The canonical text of a schedule (what the YAML parser reads back)."""
    if isinstance(node, Ref):
        gate = "" if node.gate is None else "[" + ", ".join(_quote(g) for g in node.gate) + "]"
        return _quote(node.name) + gate
    if isinstance(node, Par):
        return " | ".join(_wrap(p, Seq) for p in node.parts)
    return f"{to_text(node.first)} > {_wrap(node.then, Seq)}"


def _wrap(node: Node, kind: type) -> str:
    text = to_text(node)
    return f"({text})" if isinstance(node, kind) else text


_BARE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _quote(name: str) -> str:
    return name if _BARE.match(name) else '"' + name.replace('"', "'") + '"'


# ----------------------------------------------------------------------------- parser

_TOKEN = re.compile(r"""\s*(?:(?P<punct>[>|()\[\],])|"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|"""
                    r"""(?P<name>[A-Za-z0-9_.\-]+))""")


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, value, column) tokens: kind is 'punct' or 'name'."""
    out = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            col = pos + 1 + (len(text[pos:]) - len(text[pos:].lstrip()))
            raise ScheduleSyntaxError(f"unexpected character {text[col - 1]!r}", col)
        start = m.start(m.lastgroup) + 1 - (1 if m.lastgroup in ("dq", "sq") else 0)
        kind = "punct" if m.lastgroup == "punct" else "name"
        out.append((kind, m.group(m.lastgroup), start))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.i = 0
        self.end = len(text.rstrip()) + 1

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def expect(self, value: str) -> None:
        tok = self.peek()
        if tok is None or tok[:2] != ("punct", value):
            where = tok[2] if tok else self.end
            got = f"'{tok[1]}'" if tok else "the end"
            raise ScheduleSyntaxError(f"expected '{value}', found {got}", where)
        self.i += 1

    def parse(self) -> Node:
        if not self.tokens:
            raise ScheduleSyntaxError("the schedule is empty", 1)
        node = self.seq()
        tok = self.peek()
        if tok is not None:
            raise ScheduleSyntaxError(f"unexpected '{tok[1]}'", tok[2])
        return node

    def seq(self) -> Node:
        node = self.par()
        while (tok := self.peek()) is not None and tok[:2] == ("punct", ">"):
            self.i += 1
            node = Seq(node, self.par())
        return node

    def par(self) -> Node:
        parts = [self.atom()]
        while (tok := self.peek()) is not None and tok[:2] == ("punct", "|"):
            self.i += 1
            parts.append(self.atom())
        return parts[0] if len(parts) == 1 else par_of(parts)

    def atom(self) -> Node:
        tok = self.peek()
        if tok is None:
            raise ScheduleSyntaxError("expected a model name or '(', found the end", self.end)
        kind, value, column = tok
        if (kind, value) == ("punct", "("):
            self.i += 1
            node = self.seq()
            self.expect(")")
            return node
        if kind != "name":
            raise ScheduleSyntaxError(f"expected a model name or '(', found '{value}'", column)
        self.i += 1
        gate = None
        nxt = self.peek()
        if nxt is not None and nxt[:2] == ("punct", "["):
            self.i += 1
            gate = self.gate()
        return Ref(value, gate, column)

    def gate(self) -> tuple[str, ...]:
        classes = []
        while True:
            tok = self.peek()
            if tok is None or tok[0] != "name":
                where = tok[2] if tok else self.end
                raise ScheduleSyntaxError("expected a class label in the gate", where)
            classes.append(tok[1])
            self.i += 1
            tok = self.peek()
            if tok is not None and tok[:2] == ("punct", ","):
                self.i += 1
                continue
            self.expect("]")
            return tuple(classes)


def par_of(parts: list[Node]) -> Par:
    """A ``|`` of ``parts``, flattened (``|`` is associative)."""
    flat: list[Node] = []
    for p in parts:
        flat.extend(p.parts if isinstance(p, Par) else [p])
    return Par(tuple(flat))


def parse_schedule(text: str) -> Node:
    """Parse ``"ad[benign] > (tc | bd)"``; ScheduleSyntaxError names the column."""
    return _Parser(text).parse()


# ----------------------------------------------------------------------------- checks


class ScheduleError(ValueError):
    """A schedule that does not make sense for its models; ``column`` when it is known."""

    def __init__(self, message: str, column: int | None = None) -> None:
        self.column = column
        super().__init__(message if column is None else f"at column {column}: {message}")


def check_schedule(node: Node, declared: list[str],
                   uses: dict[str, list[str]] | None = None) -> None:
    """Reject unknown models, a model used twice, declared models left out, gates where they
    cannot act, and class features whose model does not run first (cycles included).

    ``uses[b]``: the models whose class ``b`` reads as a feature.
    """
    seen: dict[str, Ref] = {}
    for r in refs(node):
        if r.name not in declared:
            raise ScheduleError(f"'{r.name}' is not a model of the spec (models: "
                                f"{', '.join(declared)})", r.column)
        if r.name in seen:
            first = seen[r.name].column
            where = f" (first at column {first})" if first else ""
            raise ScheduleError(f"model '{r.name}' is used twice in the schedule{where}; "
                                "each model runs once", r.column)
        seen[r.name] = r
    missing = [n for n in declared if n not in seen]
    if missing:
        raise ScheduleError(f"model(s) {missing} are declared but not in the schedule")
    _check_gates(node)
    if uses:
        check_dependencies(node, uses)


def _gate_positions(node: Node) -> set[str]:
    """Models that end the left side of some ``>`` (where a gate acts)."""
    if isinstance(node, Ref):
        return set()
    if isinstance(node, Par):
        return set().union(*(_gate_positions(p) for p in node.parts))
    out = _gate_positions(node.first) | _gate_positions(node.then)
    return out | {r.name for r in exposed(node.first)}


def _check_gates(node: Node) -> None:
    allowed = _gate_positions(node)
    for r in refs(node):
        if r.gate is not None and r.name not in allowed:
            raise ScheduleError(f"the gate on '{r.name}' never acts: a gate says on which of "
                                f"{r.name}'s classes the models after '>' run, and "
                                f"'{r.name}' does not end the left side of a '>'", r.column)
        if r.gate is not None and len(set(r.gate)) != len(r.gate):
            raise ScheduleError(f"the gate on '{r.name}' repeats a class", r.column)


def find_cycle(uses: dict[str, list[str]]) -> list[str] | None:
    """A dependency cycle among class features (``b -> a``: b reads a's class), if any."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in uses.get(n, []):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if state.get(m) is None:
                found = visit(m)
                if found:
                    return found
        path.pop()
        state[n] = 2
        return None

    for n in uses:
        if state.get(n) is None:
            found = visit(n)
            if found:
                return found
    return None


def check_dependencies(node: Node, uses: dict[str, list[str]]) -> None:
    cycle = find_cycle(uses)
    if cycle:
        raise ScheduleError("class features form a cycle: " + " -> ".join(
            f"'{n}'" for n in cycle) + " (each reads the class of the next)")
    before = upstream_pairs(node)
    columns = {r.name: r.column for r in refs(node)}
    for b, ups in uses.items():
        for a in ups:
            if a not in columns:
                raise ScheduleError(f"model '{b}' reads the class of '{a}', which is not a "
                                    "model of the schedule")
            if (a, b) not in before:
                raise ScheduleError(f"model '{b}' reads the class of '{a}', but '{a}' does "
                                    f"not run before it: schedule {a} > {b}", columns.get(b))
