"""Calibration of the stage model against the real Tofino compiler's reports.

The real compiler ran on programs of an earlier release (tests/fixtures/real-compilers): tables
keyed on metadata copies of header fields, narrow outputs packed into shared containers, the
verdict applied by if/else after its table. :func:`legacy_units` reads such a program's tables,
apply order and verdict code back into units, so the allocation pass (passes/allocate.py) can be
checked against the stage count the compiler reported for that very program.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from homunculus.ir.pipeline import Entry, Field, MatchKind, Table, TableRole, Ternary
from homunculus.passes.allocate import Unit, pack_narrow, place
from homunculus.targets.p4.check import (
    _actions,
    _block,
    _control_body,
    _metadata_widths,
    _strip_comments,
    _tables,
)
from homunculus.targets.p4.codegen import CSUM_FLAG, INGRESS_CONTROL
from homunculus.targets.p4.profiles import SwitchProfile
from homunculus.targets.p4.resources import stage_caps
from homunculus.targets.p4.units import PORT, table_unit

_APPLY = re.compile(r"\b(\w+)\.apply\(\)\s*;")
_COPY = re.compile(r"meta\.(\w+)\s*=\s*(?:\(bit<\d+>\))?hdr\.[\w.]+\s*;")


@dataclass(frozen=True)
class Calibration:
    """The model's stage count for a program next to the compiler's."""

    program: str
    estimated: int
    real: int | None
    stages: tuple[tuple[str, ...], ...]


def legacy_units(p4_text: str, profile: SwitchProfile) -> list[Unit]:
    """Units of a program of the earlier release (see the module docstring)."""
    text = _strip_comments(p4_text)
    meta = _metadata_widths(text)
    widths = {f"meta.{n}": w for n, w in meta.items()}
    body = _control_body(text, INGRESS_CONTROL)
    actions = _actions(body)
    decls = _tables(body, widths, actions)
    apply = _block(body, body.index("{", body.index("apply {")))
    header_copies = set(_COPY.findall(apply))  # copy-propagated by the compiler: no stage
    order = [name for name in _APPLY.findall(apply) if name in decls]
    written = [(n, w, "") for n, w in meta.items()]
    packed = pack_narrow([(n, w, t) for n, w, t in written])
    units = [Unit("default_port", "action", writes=frozenset({PORT}))]
    for name in order:
        decl = decls[name]
        outs = [p for a in decl.actions for p in actions.get(a, {})]
        keys = [k.removeprefix("meta.") for k in decl.keys]
        kinds = tuple(MatchKind(kind) for kind, _ in decl.keys.values())
        table = Table(name, TableRole.LOOKUP, tuple(Field(k, w) for k, (_, w) in
                                                    zip(keys, decl.keys.values(), strict=True)),
                      kinds, tuple(Field(o, meta[o]) for o in outs),
                      tuple(Entry(tuple(Ternary(0, 0) for _ in keys), tuple(0 for _ in outs))
                            for _ in range(decl.size)), tuple(0 for _ in outs))
        reads = frozenset(k for k in keys if k not in header_copies)
        writes = frozenset(outs)
        units.append(table_unit(table, profile, reads, writes,
                                frozenset(packed[o] for o in outs if o in packed)))
    if "meta.verdict_drop" in apply or "meta.verdict_port" in apply:
        outs = frozenset(n for n in meta if n.startswith("verdict_"))
        units.append(Unit("verdict_apply", "action", outs, frozenset({PORT, CSUM_FLAG}),
                          logical=3, gateways=2))
    if CSUM_FLAG in text and "Checksum()" in text:
        units.append(Unit("ipv4_checksum_condition", "condition", frozenset({CSUM_FLAG}),
                          frozenset({"hmn_deparser_csum"}), exact_xbar_bytes=1))
    return units


def calibrate(name: str, p4_text: str, profile: SwitchProfile, real: int | None
              ) -> Calibration:
    """Place a legacy program's units and report the stage count next to the real one."""
    stages = place(legacy_units(p4_text, profile), stage_caps(profile))
    return Calibration(name, len(stages), real, tuple(tuple(u.name for u in s) for s in stages))
