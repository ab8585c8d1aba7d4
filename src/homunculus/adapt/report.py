"""The adaptation report: summary.json and report.html (F1 and the proxy over time with the
triggers and installs marked; every retrain and gate decision; each agent's coverage and
precision)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any


def figure_png(windows: list[dict[str, Any]], events: list[dict[str, Any]],
               title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=110)
    x = [w["window"] for w in windows]
    for key, style, label in (("f1", "-o", "macro-F1 (ground truth)"),
                              ("proxy", "--s", "accuracy proxy (agents)")):
        ys = [w.get(key) for w in windows]
        pts = [(a, b) for a, b in zip(x, ys, strict=True) if b is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, ms=3, label=label)
    for w in windows:
        if w.get("trigger"):
            ax.axvline(w["window"], color="tab:orange", alpha=0.35, lw=1)
    installs = [e["window"] for e in events if e.get("installed")]
    if installs:
        ax.plot(installs, [1.02] * len(installs), "v", color="tab:green", label="install")
    ax.set_ylim(0, 1.06)
    ax.set_xlabel("window")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape("" if value is None else str(value))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def research_cell(research: dict[str, Any] | None) -> str:
    """A retrain's re-search in one line: why, trials, the choice and its validation score
    against the active hyperparameters' ('' for a plain retrain)."""
    if not research:
        return ""
    choice = "kept the active hyperparameters" if research.get("kept_active") else \
        f"chose {research['chosen']}"
    return (f"{research['why']}; {len(research['trials'])} trials in "
            f"{research['cpu_seconds']:.2f} CPU s; {choice} "
            f"(validation macro-F1 {research['score']} vs active {research['active_score']})")


def write_report(out: Path, summary: dict[str, Any], windows: list[dict[str, Any]],
                 events: list[dict[str, Any]], title: str) -> Path:
    """Write summary.json and report.html into ``out``; the HTML's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    png = base64.b64encode(figure_png(windows, events, title)).decode()
    retrains = [{"window": e["window"], "triggered in": e["triggered_in"],
                 "samples": e["train_samples"], "CPU s": e["cpu_seconds"],
                 "verified": e["verified"], "gate": e["gate"]["reason"],
                 "installed": e.get("version") if e["installed"] else "no",
                 "re-search": research_cell(e.get("research"))}
                for e in events if e.get("event") == "retrain"]
    agents = summary.get("agents", [])
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:72em}}table{{border-collapse:collapse;
margin:1em 0}}td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{summary.get('windows')} windows; {summary.get('retrains')} retrains
({summary.get('researches', 0)} with a re-search); {summary.get('installs')} installs;
{summary.get('cpu_seconds')} CPU seconds retraining; mean macro-F1
{_cell(summary.get('mean_f1'))}.</p>
<img alt="F1 and proxy over time" src="data:image/png;base64,{png}">
<p>Orange lines: windows that triggered a retrain; green triangles: installs.</p>
<h2>Agents</h2>
{_table(agents, ['name', 'calls', 'failures', 'timeouts', 'skipped', 'samples', 'labelled',
                 'coverage', 'precision', 'last_error'])}
<h2>Retrains and the install gate</h2>
{_table(retrains, ['window', 'triggered in', 'samples', 'CPU s', 'verified', 'gate',
                   'installed', 're-search'])}
<h2>Windows</h2>
{_table(windows, ['window', 'samples', 'labelled', 'proxy', 'f1', 'drift', 'trigger', 'why',
                  'version'])}
</body></html>
"""
    path = out / "report.html"
    path.write_text(page)
    return path
