"""User strings on a terminal or in a plot: control characters escaped, length bounded.

Names, labels and paths come from specs, data and captures. Printed raw, an ANSI escape would
reach the terminal, a ``[/]`` would be read as rich markup, and a 100,000-character name would
cost the renderer quadratic time; so every user string is passed through :func:`shown` (one
value) or :func:`message` (a whole message, newlines kept) and printed as plain text.
"""

from __future__ import annotations

import re

MAX_SHOWN = 120  # characters of one user string
MAX_MESSAGE = 4000  # characters of one message
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069"
                      r"\ufeff]")
_CONTROL_OR_NEWLINE = re.compile(_CONTROL.pattern[:-1] + r"\n\r]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _bounded(text: str, limit: int, pattern: re.Pattern[str]) -> str:
    head = pattern.sub(_escape, text[:limit])
    return head if len(text) <= limit else f"{head}... ({len(text) - limit} more characters)"


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """One user string, safe to print: control characters (newlines too) escaped, shortened."""
    return _bounded(str(value), limit, _CONTROL_OR_NEWLINE)


def message(value: object, limit: int = MAX_MESSAGE) -> str:
    """A whole message, safe to print: newlines kept, other control characters escaped,
    shortened."""
    return _bounded(str(value), limit, _CONTROL)


def clip(value: object, limit: int) -> str:
    """A short label (plot ticks): control characters escaped, cut to ``limit`` with an
    ellipsis."""
    text = str(value)
    head = _CONTROL_OR_NEWLINE.sub(_escape, text[:limit])
    return head if len(text) <= limit else head[:max(limit - 1, 1)] + "\u2026"
