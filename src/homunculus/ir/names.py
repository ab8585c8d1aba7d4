"""Identifier sanitisation: names that come from a spec can never change generated code."""

from __future__ import annotations

import re

_IDENT_BAD = re.compile(r"[^a-z0-9_]+")
_COMMENT_BAD = re.compile(r"[^ -~]|\*/|/\*|\\")
_QUESTIONS = re.compile(r"\?{2,}")
MAX_IDENT = 32


def sanitise_identifier(name: str, prefix: str) -> str:
    """Map any string to a safe lower-case identifier ``<prefix>_<clean>`` (never a keyword)."""
    clean = _IDENT_BAD.sub("_", name.lower()).strip("_")[:MAX_IDENT] or "x"
    return f"{prefix}_{clean}"


def unique_identifiers(names: list[str], prefix: str) -> list[str]:
    """Sanitise every name and make the results pairwise distinct by numbering collisions."""
    out: list[str] = []
    seen: set[str] = set()
    for name in names:
        base = sanitise_identifier(name, prefix)
        ident, n = base, 1
        while ident in seen:
            ident, n = f"{base}_{n}", n + 1
        seen.add(ident)
        out.append(ident)
    return out


def safe_comment(text: str, limit: int = 80) -> str:
    """Text that is safe inside a // or /* */ comment of P4, C or Python: printable ASCII, no
    comment delimiters, no backslash, and no "??" (a C trigraph such as ??/ would splice lines)."""
    return _QUESTIONS.sub("?", _COMMENT_BAD.sub("?", text))[:limit]
