"""A lint of generated P4 against the rules the real Tofino compiler enforces.

Each rule names what the open-source Tofino backend (bf-p4c) rejected in this project's programs
or what its source enforces (docs/targets.md):

* one ALU operation per destination per action, operands of the destination's width, and no
  statement reading what the same action wrote before ("action spanning multiple stages");
* conditions compare a field with a constant (or test bits): never ``<``/``>`` between two
  fields ("one operand ... must be constant");
* the verdict is acted on inside the deciding table's actions (no ``verdict_*`` metadata read
  by if/else after the table: a stage of its own);
* the 48-bit clock is read only inside stateful ALUs (a window of it in an action failed PHV
  allocation);
* a RegisterAction makes at most two comparisons, writes at most two distinct values to the
  register, uses one operator per statement and no shifts (one stateful ALU).

The templates are written to these rules; this check keeps them so (it runs on every emitted
program, and the tests run it for every family, feature kind and verdict).
"""

from __future__ import annotations

import re

from homunculus.targets.p4.check import _block, _metadata_widths, _strip_comments

_LITERAL = re.compile(r"^\d+w\d+$|^true$|^false$")
_COMPARE = re.compile(r"(.+?)\s*(==|!=|<=|>=|<|>)\s*(.+)")
_BINARY = re.compile(r"\s(\|\+\||\+|-|\||&|\^|<<|>>)\s")
_OPERAND = re.compile(r"^(?:\(bit<(\d+)>\))?(meta\.\w+|\d+w\d+|[a-z_]\w*)(?:\[(\d+):(\d+)\])?$")


def _bodies(text: str, pattern: str) -> list[tuple[str, str]]:
    """(name, body) of every block whose header matches ``pattern`` (group 1 = name)."""
    out = []
    for m in re.finditer(pattern, text):
        out.append((m.group(1), _block(text, text.index("{", m.end() - 1))))
    return out


def _statements(body: str) -> list[str]:
    return [s.strip() for s in re.split(r"[;{}]", body) if s.strip()]


def _operand_width(token: str, widths: dict[str, int]) -> int | None:
    m = _OPERAND.match(token.strip())
    if m is None:
        return None
    cast, name, hi, lo = m.groups()
    if cast:
        return int(cast)
    if hi is not None:
        return int(hi) - int(lo) + 1
    if re.match(r"^\d+w\d+$", name):
        return int(name.split("w")[0])
    return widths.get(name)


def action_violations(name: str, body: str, widths: dict[str, int], casts: bool = False
                      ) -> list[str]:
    """One action: single-operator statements, equal widths (with ``casts``: no cast operand
    in arithmetic), no read-after-write."""
    bad: list[str] = []
    written: set[str] = set()
    for stmt in _statements(body):
        m = re.fullmatch(r"([\w.\[\]:]+)\s*=\s*(.+)", stmt)
        if m is None:
            continue
        dst, expr = m.group(1), m.group(2)
        ops = _BINARY.findall(f" {expr} ")
        if len(ops) > 1:
            bad.append(f"action {name}: '{stmt}' has {len(ops)} operators (one per destination)")
        operands = [o.strip() for o in _BINARY.split(f" {expr} ")[::2] if o.strip()]
        reads = {o.split("[")[0] for o in operands if o.startswith("meta.")}
        if reads & (written - {dst}):
            bad.append(f"action {name}: '{stmt}' reads a field the action wrote before")
        if dst in written:
            bad.append(f"action {name}: {dst} written twice")
        written.add(dst)
        if ops and not casts:
            dst_width = _operand_width(dst, widths)
            if any(o.startswith("(bit<") for o in operands):
                bad.append(f"action {name}: cast operand in '{stmt}'")
            mixed = {w for o in operands if (w := _operand_width(o, widths)) is not None}
            if dst_width is not None and mixed - {dst_width}:
                bad.append(f"action {name}: '{stmt}' mixes operand widths with {dst_width} bits")
    return bad


def condition_violations(text: str) -> list[str]:
    """No comparison of two non-constant operands in any if()."""
    bad = []
    for cond in re.findall(r"\bif\s*\((.*?)\)\s*\{", text):
        for part in re.split(r"&&|\|\|", cond):
            m = _COMPARE.fullmatch(part.strip())
            if m is None:
                continue
            left, op, right = (x.strip() for x in m.groups())
            if not (_LITERAL.match(left) or _LITERAL.match(right)):
                bad.append(f"condition '{cond}': '{left} {op} {right}' compares two fields")
    return bad


def register_violations(name: str, body: str) -> list[str]:
    """One stateful ALU: <= 2 comparisons, <= 2 distinct register writes, one op, no shift."""
    bad = []
    compares = sum(len(re.findall(r"==|!=|<=|>=|<|>", c))
                   for c in re.findall(r"\bif\s*\((.*?)\)\s*\{", body))
    if compares > 2:
        bad.append(f"RegisterAction {name}: {compares} comparisons (a stateful ALU has 2)")
    writes = set(re.findall(r"(?:^|[;{}])\s*v\s*=\s*([^;]+);", body))
    if len(writes) > 2:
        bad.append(f"RegisterAction {name}: {len(writes)} distinct values written (2 at most)")
    for stmt in _statements(body):
        m = re.fullmatch(r"\w+\s*=\s*(.+)", stmt)
        if m is None:
            continue
        if len(_BINARY.findall(f" {m.group(1)} ")) > 1 or ">>" in stmt or "<<" in stmt:
            bad.append(f"RegisterAction {name}: '{stmt}' is more than one ALU operation")
    return bad


def rule_violations(p4_text: str, arch: str) -> list[str]:
    """Every violation of the rules above in ``p4_text`` (an empty list if none)."""
    text = _strip_comments(p4_text)
    widths = {f"meta.{n}": w for n, w in _metadata_widths(text).items()}
    bad: list[str] = []
    registers = _bodies(text, r"RegisterAction<.*?>>\((\w+)\)\s*\w+\s*=\s*\{")
    outside = text  # everything but the stateful ALUs' bodies (their rules differ)
    for _, body in registers:
        outside = outside.replace(body, "")
    casts = arch != "tna"
    for name, body in _bodies(outside, r"\baction\s+(\w+)\s*\([^)]*\)\s*\{"):
        bad += action_violations(name, body, widths, casts)
    for name, body in _bodies(outside, r"(?s)\bcontrol\s+(\w+)\s*\(.*?\)\s*\{"):
        if "apply" in body:  # each statement of an apply block becomes an action of its own
            apply = _block(body, body.rindex("{", 0, body.index("apply") + 7))
            for stmt in _statements(apply):
                bad += action_violations(f"{name}.apply", stmt + ";", widths, casts)
    bad += condition_violations(outside)
    if re.search(r"\bmeta\.verdict_\w+", text):
        bad.append("the verdict is read from metadata after its table (act in its actions)")
    for name, body in registers:
        bad += register_violations(name, body)
    if arch == "tna" and "global_tstamp" in outside:
        bad.append("the clock is read outside a stateful ALU (PHV slicing fails)")
    return list(dict.fromkeys(bad))


def check_rules(p4_text: str, arch: str) -> None:
    """Raise ValueError listing every rule the program breaks."""
    bad = rule_violations(p4_text, arch)
    if bad:
        raise ValueError("generated P4 breaks target rules: " + "; ".join(bad[:10]))
