"""Emit a portable C11 library (header + source) computing a pipeline's verdict.

Python only prepares a plain context of numbers and checked literals; all C text lives in the
Jinja2 templates next to this module. Every C identifier is built from slot and table *indices*
(see :mod:`homunculus.targets.c.layout`), so user strings — class labels, feature and table names —
can only appear through :func:`safe_comment` inside ``/* */`` comments, and two pipelines that
differ only in names emit the same code outside comments.
"""

from __future__ import annotations

import re
from typing import Any

import jinja2

from homunculus.ir.dense import QMLP
from homunculus.ir.names import safe_comment
from homunculus.ir.pipeline import Pipeline
from homunculus.targets.c.layout import CTable, Layout, build_layout
from homunculus.targets.templating import code_env

ABI_VERSION = 1
"""Version of the generated library's ABI (bump when any exported signature changes)."""

_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
_NAME_BAD = re.compile(r"[^a-z0-9_]+")
C_KEYWORDS = frozenset({
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
    "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long", "register",
    "restrict", "return", "short", "signed", "sizeof", "static", "struct", "switch", "typedef",
    "union", "unsigned", "void", "volatile", "while", "_alignas", "_alignof", "_atomic", "_bool",
    "_complex", "_generic", "_imaginary", "_noreturn", "_static_assert", "_thread_local",
})
VERDICT_ROLES = ("port", "drop", "mark", "dscp")


def template_env() -> jinja2.Environment:
    """The Jinja2 environment over this package's ``templates`` directory."""
    return code_env("homunculus.targets.c")


def render(template: str, context: dict[str, Any]) -> str:
    return template_env().get_template(template).render(**context)


def c_name(name: str) -> str:
    """A safe file/identifier stem for a (possibly hostile) program name."""
    stem = _NAME_BAD.sub("_", name.lower()).strip("_")[:32] or "model"
    return check_identifier(stem if stem[0].isalpha() else f"m_{stem}")


def check_identifier(ident: str) -> str:
    """``ident`` if it is a safe lower-case C identifier and no keyword, else ValueError."""
    if not _IDENT.match(ident) or ident in C_KEYWORDS:
        raise ValueError(f"'{safe_comment(ident)}' is not a safe C identifier")
    return ident


def u64(value: int) -> str:
    """An unsigned C literal of any value in 0..2^64-1."""
    if not 0 <= value < 1 << 64:
        raise ValueError(f"constant {value} does not fit in 64 bits")
    return f"{value}u" if value < 1 << 32 else f"UINT64_C({value})"


def i32(value: int) -> str:
    """A signed 32-bit C literal (INT32_MIN written so that no intermediate overflows)."""
    if not -2**31 <= value < 2**31:
        raise ValueError(f"constant {value} does not fit in int32")
    return "(-2147483647 - 1)" if value == -2**31 else str(value)


def mask_literal(width: int) -> str:
    return u64((1 << width) - 1)


def key_condition(kind: str, slot: int, index: int) -> str:
    """The C test of key ``index`` of an entry ``e`` against slot ``slot``."""
    if kind == "exact":
        return f"v[{slot}] == e->k{index}"
    if kind == "ternary":
        return f"(v[{slot}] & e->m{index}) == e->k{index}"
    return f"v[{slot}] >= e->k{index} && v[{slot}] <= e->h{index}"


def member_names(table: CTable) -> list[str]:
    names = []
    for i, key in enumerate(table.keys):
        names.append(f"k{i}")
        if key.n_constants == 2:
            names.append(f"m{i}" if key.kind == "ternary" else f"h{i}")
    return names


def table_context(index: int, table: CTable) -> dict[str, Any]:
    src = table.source
    return {
        "index": index,
        "comment": safe_comment(f"{src.role} table {src.name}", 100),
        "members": member_names(table),
        "n_params": len(table.out_slots),
        "type": table.element_type,
        "rows": [{"keys": [u64(v) for v in keys], "params": [u64(v) for v in params]}
                 for keys, params in table.rows],
        "conditions": [key_condition(str(k.kind), k.slot, i) for i, k in enumerate(table.keys)],
        "outputs": [{"slot": s, "default": u64(d)}
                    for s, d in zip(table.out_slots, table.default, strict=True)],
    }


def scores_context(pipeline: Pipeline, layout: Layout) -> dict[str, Any] | None:
    if pipeline.score_sum is None or pipeline.argmax is None or pipeline.mlp is not None:
        return None
    ss, am = pipeline.score_sum, pipeline.argmax
    return {
        "sums": [{"slot": layout.slots[out.name], "bias": u64(bias % (1 << 64)),
                  "terms": [layout.slots[t.name] for t in terms],
                  "mask": mask_literal(out.width)}
                 for out, terms, bias in zip(ss.outputs, ss.terms, ss.bias, strict=True)],
        "argmax": {"n": len(am.scores), "slots": [layout.slots[s.name] for s in am.scores],
                   "out": layout.slots[am.output.name]},
    }


def mlp_context(mlp: QMLP, layout: Layout) -> dict[str, Any]:
    last = len(mlp.layers) - 1
    layers = []
    for i, layer in enumerate(mlp.layers):
        n_out, n_in = layer.shape
        layers.append({
            "index": i, "n_in": n_in, "n_out": n_out, "last": i == last,
            "weights": [[str(w) for w in row] for row in layer.weights],
            "bias": [i32(b) for b in layer.bias],
            "multiplier": layer.multiplier, "shift": layer.shift,
            "activation": layer.activation,
            "lut": [str(v) for v in layer.lut] if i != last and layer.activation == "lut" else None,
        })
    return {
        "inputs": [{"slot": s, "shift": sh}
                   for s, sh in zip(layout.feature_slots, mlp.input_shift, strict=True)],
        "layers": layers, "n_classes": mlp.n_classes, "winner": layout.winner_slot,
    }


def verdict_context(pipeline: Pipeline, layout: Layout) -> dict[str, Any]:
    names = {o.name: layout.slots[o.name] for o in pipeline.verdict.outputs}
    return {
        "class_slot": layout.slots[pipeline.class_field.name],
        "roles": [{"role": r, "slot": names.get(f"verdict_{r}")} for r in VERDICT_ROLES],
    }


def build_context(pipeline: Pipeline, name: str) -> dict[str, Any]:
    layout = build_layout(pipeline)
    stem = c_name(name)
    return {
        "stem": f"hmn_{stem}",
        "guard": f"HMN_{stem.upper()}_H",
        "title": safe_comment(name),
        "abi_version": ABI_VERSION,
        "n_features": len(pipeline.features),
        "n_classes": len(pipeline.class_labels),
        "n_slots": len(layout.slots),
        "features": [{"slot": s, "mask": mask_literal(f.field.width), "width": f.field.width,
                      "comment": safe_comment(f.name)}
                     for s, f in zip(layout.feature_slots, pipeline.features, strict=True)],
        "classes": [safe_comment(label) for label in pipeline.class_labels],
        "tables": [table_context(i, t) for i, t in enumerate(layout.encoders_lookups)],
        "verdict_table": table_context(len(layout.encoders_lookups), layout.verdict),
        "scores": scores_context(pipeline, layout),
        "mlp": mlp_context(pipeline.mlp, layout) if pipeline.mlp is not None else None,
        "verdict": verdict_context(pipeline, layout),
    }


def emit_c(pipeline: Pipeline, *, name: str) -> dict[str, str]:
    """File name -> text of the generated header, source, example program and Makefile."""
    ctx = build_context(pipeline, name)
    stem = ctx["stem"]
    return {
        f"{stem}.h": render("hmn_model.h.j2", ctx),
        f"{stem}.c": render("hmn_model.c.j2", ctx),
        "example.c": render("example.c.j2", ctx),
        "Makefile": render("Makefile.j2", ctx),
    }
