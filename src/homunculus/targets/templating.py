"""The Jinja2 environment every code generator renders its template files with."""

from __future__ import annotations

import functools

import jinja2


@functools.cache
def code_env(package: str) -> jinja2.Environment:
    """Templates of ``package``'s ``templates`` directory: strict, no autoescaping (code)."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader(package, "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
