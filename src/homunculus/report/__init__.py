"""Compilation reports: ``report.json`` plus a self-contained ``report.html``."""

from homunculus.report.render import (
    build_context,
    derive,
    pareto_front,
    render_html,
    to_jsonable,
    write_report,
)

__all__ = [
    "build_context",
    "derive",
    "pareto_front",
    "render_html",
    "to_jsonable",
    "write_report",
]
