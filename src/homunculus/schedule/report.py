"""report.json and report.html of a compiled schedule or chain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2

from homunculus.report.render import to_jsonable

USAGE_KEYS = ("stages", "tables", "sram_kbit", "tcam_kbit", "entries", "latency_ns")


def write_schedule_report(out: Path, report: dict[str, Any], template: str = "schedule.html.j2"
                          ) -> None:
    """``out/report.json`` and the page rendered from exactly that JSON."""
    clean = to_jsonable(report)
    text = json.dumps(clean, indent=2, allow_nan=False, ensure_ascii=False)
    (out / "report.json").write_text(text + "\n", encoding="utf-8")
    env = jinja2.Environment(loader=jinja2.PackageLoader("homunculus.schedule", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    page = env.get_template(template).render(r=json.loads(text), usage_keys=USAGE_KEYS)
    (out / "report.html").write_text(page, encoding="utf-8")
