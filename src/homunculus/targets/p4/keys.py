"""How each table key appears in the P4 program and in its control-plane entries.

Features bound to a header field are matched on the header field itself (no copy into metadata,
no stage spent on it): ``hdr.ipv4.ttl``, or its low bits ``hdr.ipv4.total_len[7:0]`` when the
feature is narrower. Only the TCP-or-UDP ports ("l4.*") are copied, since they come from one of
two headers. Sliced keys (the arg-max sign bits) are slices on TNA, named with ``@name`` for the
control plane; on bmv2 the whole field is matched with the bit in the mask, since bmv2's entry
encoding of slice keys is not what P4Runtime's is.
"""

from __future__ import annotations

from dataclasses import dataclass

from homunculus.features.headers import lookup_header_field
from homunculus.ir.pipeline import Pipeline, Table

COPIED_HEADERS = ("l4",)
"""Header groups whose fields are copied into metadata before use (TCP or UDP)."""


@dataclass(frozen=True)
class KeyView:
    """One key as the P4 program declares it."""

    expr: str  # the key expression, e.g. "hdr.ipv4.ttl", "meta.c_ttl", "meta.am_d0_1[9:9]"
    width: int  # bits the program matches
    shift: int = 0  # IR match values and masks are shifted left by this in the program
    name: str | None = None  # control-plane name (@name) of a sliced key


def header_key(feature_header: str | None, name: str, width: int, flow: bool
               ) -> str | None:
    """The header expression a feature is matched on directly, or None if it is copied."""
    if flow:
        return None
    if feature_header is None:
        return f"hdr.hmn_features.{name}"
    hf = lookup_header_field(feature_header)
    if hf.header in COPIED_HEADERS or width > hf.width:
        return None
    expr = f"hdr.{hf.header}.{hf.field}"
    return expr if width == hf.width else f"{expr}[{width - 1}:0]"


def feature_keys(pipeline: Pipeline) -> dict[str, str]:
    """Feature field name -> the header expression it is matched on (features read directly)."""
    out: dict[str, str] = {}
    for f in pipeline.features:
        expr = header_key(f.header_field, f.field.name, f.field.width, f.flow)
        if expr is not None:
            out[f.field.name] = expr
    return out


def key_views(table: Table, direct: dict[str, str], arch: str) -> tuple[KeyView, ...]:
    """Every key of ``table`` as ``arch``'s program declares it (``direct``: feature_keys)."""
    views = []
    for i, key in enumerate(table.keys):
        bit = table.key_slice(i)
        if bit is not None:
            if arch == "tna":
                views.append(KeyView(f"meta.{key.name}[{bit}:{bit}]", 1, 0,
                                     f"{key.name}_b{bit}"))
            else:
                views.append(KeyView(f"meta.{key.name}", key.width, bit))
            continue
        views.append(KeyView(direct.get(key.name, f"meta.{key.name}"), key.width))
    return tuple(views)
