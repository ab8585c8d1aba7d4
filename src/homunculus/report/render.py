"""Render a compilation report to ``report.json`` and a self-contained ``report.html``.

The JSON file is the single source of truth: the HTML page (tables and inline SVG
plots) is rendered from the JSON-round-tripped copy of the report, so every number on
the page can be traced back to ``report.json``.  Derived figures (utilisation, Pareto
front, best-so-far curve) are stored under the extra top-level key ``"derived"``.

Plots are drawn with matplotlib's object-oriented API (``matplotlib.figure.Figure``
rendered by the SVG backend), which never touches pyplot or the global backend, so it
is headless-safe and has no global side effects.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import matplotlib
from markupsafe import Markup
from matplotlib.figure import Figure

from homunculus.display import clip

Json = Any

_RC = {
    "svg.fonttype": "none",  # real <text> elements: small, searchable, escaped by matplotlib
    "svg.hashsalt": "homunculus",  # deterministic ids
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}

# Order and presentation of resource keys; "min" means the limit is a lower bound.
_RESOURCE_KEYS: dict[str, tuple[str, str]] = {
    "stages": ("Stages", "max"),
    "tables": ("Tables", "max"),
    "entries": ("Table entries", "max"),
    "sram_kbit": ("SRAM (kbit)", "max"),
    "tcam_kbit": ("TCAM (kbit)", "max"),
    "phv_bits": ("PHV (bits)", "max"),
    "latency_ns": ("Latency (ns)", "max"),
    "throughput_gpps": ("Throughput (Gpps)", "min"),
}

MAX_LABEL_CHARS = 24  # of a class label on a plot axis
MAX_PLOTTED_CLASSES = 64  # beyond this a confusion heatmap is unreadable: none is drawn
MAX_ANNOTATED_CLASSES = 24  # counts written in the cells up to this many classes

# A CPU target's own terms for the usage figures (report/summary.py keeps only these keys)
_CPU_LABELS: dict[str, dict[str, str]] = {
    "xdp": {"tables": "Trees / encoders / layers", "entries": "Tree nodes / bins / weights",
            "sram_kbit": "Map memory (kbit)", "latency_ns": "ns per packet (estimate)",
            "throughput_gpps": "Gpkt/s on one core (estimate)",
            "instructions": "Verifier instructions (estimate)"},
    "c": {"tables": "Trees / encoders / layers", "entries": "Tree nodes / bins / weights",
          "sram_kbit": "Parameter memory (kbit)",
          "latency_ns": "ns per classification (estimate)",
          "throughput_gpps": "Gclassifications/s (estimate)"},
}

_FEASIBLE = "#1f77b4"
_INFEASIBLE = "#d62728"
_BEST = "#2ca02c"
_STAR = "#ff9f1c"


# --------------------------------------------------------------------------- JSON


def to_jsonable(obj: Any) -> Json:
    """Recursively convert ``obj`` to plain JSON types; NaN and +-inf become ``None``."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return to_jsonable(obj.tolist())
    return str(obj)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ------------------------------------------------------------------------- Pareto


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices (ascending) of the non-dominated points.

    The first coordinate is maximised and the second minimised.  A point is dominated if
    another point is at least as good in both coordinates and strictly better in one, so
    exact duplicates of a front point are all kept.  Points with a non-finite coordinate
    are never on the front.
    """
    valid = [i for i, (m, c) in enumerate(points) if _finite(m) and _finite(c)]
    order = sorted(valid, key=lambda i: (points[i][1], -points[i][0]))
    front: list[int] = []
    best = -math.inf
    pos = 0
    while pos < len(order):
        cost = points[order[pos]][1]
        group = [i for i in order[pos:] if points[i][1] == cost]
        pos += len(group)
        top = points[group[0]][0]
        if top > best:
            front.extend(i for i in group if points[i][0] == top)
            best = top
    return sorted(front)


# ------------------------------------------------------------------------ derived


def _trials(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [t for t in report.get("trials") or [] if isinstance(t, Mapping)]


def _feasible_points(trials: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [
        t for t in trials if t.get("feasible") and _finite(t.get("metric")) and _finite(_entries(t))
    ]


def _entries(trial: Mapping[str, Any]) -> Any:
    if trial.get("entries") is not None:
        return trial.get("entries")
    return (trial.get("usage") or {}).get("entries")


def best_so_far(trials: Sequence[Mapping[str, Any]]) -> list[list[float]]:
    """``[[trial number, best feasible metric so far], ...]`` at every improvement."""
    steps: list[list[float]] = []
    best = -math.inf
    for t in sorted(trials, key=lambda t: t.get("number", 0)):
        m = t.get("metric")
        if t.get("feasible") and _finite(m) and m > best:
            best = m
            steps.append([t.get("number", 0), m])
    return steps


def utilisation(resources: Mapping[str, Any]) -> dict[str, float | None]:
    """Percent of each limit used (for a lower-bound limit: limit / achieved)."""
    totals = resources.get("totals") or {}
    limits = resources.get("limits") or {}
    out: dict[str, float | None] = {}
    for key in _resource_keys(totals, limits):
        total, limit = totals.get(key), limits.get(key)
        kind = _RESOURCE_KEYS.get(key, (key, "max"))[1]
        num, den = (limit, total) if kind == "min" else (total, limit)
        ok = _finite(num) and _finite(den) and den != 0
        out[key] = round(100.0 * num / den, 2) if ok else None
    return out


def _resource_keys(totals: Mapping[str, Any], limits: Mapping[str, Any]) -> list[str]:
    extra = [k for k in [*totals, *limits] if k not in _RESOURCE_KEYS]
    keys = [k for k in _RESOURCE_KEYS if k in totals or k in limits]
    return keys + list(dict.fromkeys(extra))


def derive(report: Mapping[str, Any]) -> dict[str, Any]:
    """Figures computed from the report that the HTML shows (stored in report.json)."""
    trials = _trials(report)
    pts = _feasible_points(trials)
    front = pareto_front([(t["metric"], _entries(t)) for t in pts])
    return {
        "utilisation_pct": utilisation(report.get("resources") or {}),
        "pareto_front": [pts[i].get("number") for i in front],
        "best_so_far": best_so_far(trials),
        "trial_count": len(trials),
        "infeasible_count": sum(1 for t in trials if not t.get("feasible")),
    }


# -------------------------------------------------------------------------- plots


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _search_counts(report: Mapping[str, Any], derived: Mapping[str, Any]) -> tuple[int, int]:
    search = report.get("search") or {}
    n = search.get("trials", derived["trial_count"])
    k = search.get("infeasible", derived["infeasible_count"])
    return n, k


def plot_history(report: Mapping[str, Any], derived: Mapping[str, Any]) -> str:
    """SVG: metric per trial, feasible filled, infeasible hollow/crossed, best-so-far step."""
    trials = _trials(report)
    if not trials:
        return ""
    metric = str(report.get("metric") or "metric")
    with matplotlib.rc_context(_RC):
        fig = _new_figure(9.0, 3.6)
        ax = fig.add_subplot()
        _history_points(ax, trials)
        _history_best(ax, report, derived, trials)
        n, k = _search_counts(report, derived)
        ax.set_title(f"Search history: {n} trials, {k} infeasible", parse_math=False)
        ax.set_xlabel("trial number")
        ax.set_ylabel(metric, parse_math=False)
        ax.grid(alpha=0.3)
        _legend_outside(ax)
        return _svg(fig)


def _legend_outside(ax: Any) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def _history_points(ax: Any, trials: Sequence[Mapping[str, Any]]) -> None:
    feas = [t for t in trials if t.get("feasible") and _finite(t.get("metric"))]
    hollow = [t for t in trials if not t.get("feasible") and _finite(t.get("metric"))]
    nometric = [t for t in trials if not _finite(t.get("metric"))]
    if feas:
        ax.scatter(
            [t.get("number", 0) for t in feas],
            [t["metric"] for t in feas],
            s=22,
            color=_FEASIBLE,
            label=f"feasible ({len(feas)})",
            zorder=3,
        )
    if hollow:
        ax.scatter(
            [t.get("number", 0) for t in hollow],
            [t["metric"] for t in hollow],
            s=26,
            facecolors="none",
            edgecolors=_INFEASIBLE,
            linewidths=1.2,
            label=f"infeasible ({len(hollow)})",
            zorder=3,
        )
    if nometric:
        ax.scatter(
            [t.get("number", 0) for t in nometric],
            [0.0] * len(nometric),
            transform=ax.get_xaxis_transform(),
            marker="x",
            s=26,
            color=_INFEASIBLE,
            clip_on=False,
            label=f"no metric ({len(nometric)})",
            zorder=4,
        )


def _history_best(
    ax: Any,
    report: Mapping[str, Any],
    derived: Mapping[str, Any],
    trials: Sequence[Mapping[str, Any]],
) -> None:
    steps = derived.get("best_so_far") or []
    if not steps:
        return
    last = max(t.get("number", 0) for t in trials)
    xs = [s[0] for s in steps] + [max(last, steps[-1][0])]
    ys = [s[1] for s in steps] + [steps[-1][1]]
    ax.step(xs, ys, where="post", color=_BEST, lw=1.5, label="best feasible so far", zorder=2)
    best = _best_trial(report, trials)
    if best is not None and _finite(best.get("metric")):
        ax.scatter(
            [best.get("number", 0)],
            [best["metric"]],
            marker="*",
            s=160,
            color=_STAR,
            edgecolors="black",
            linewidths=0.6,
            label=f"best trial #{best.get('number')}",
            zorder=5,
        )


def _best_trial(
    report: Mapping[str, Any], trials: Sequence[Mapping[str, Any]]
) -> Mapping[str, Any] | None:
    number = report.get("best_trial")
    return next((t for t in trials if number is not None and t.get("number") == number), None)


def plot_pareto(report: Mapping[str, Any], derived: Mapping[str, Any]) -> str:
    """SVG: metric vs table entries over feasible trials, non-dominated front connected."""
    pts = _feasible_points(_trials(report))
    if not pts:
        return ""
    on_front = set(derived.get("pareto_front") or [])
    front = sorted(
        (t for t in pts if t.get("number") in on_front), key=lambda t: (_entries(t), t["metric"])
    )
    with matplotlib.rc_context(_RC):
        fig = _new_figure(9.0, 3.6)
        ax = fig.add_subplot()
        ax.scatter(
            [_entries(t) for t in pts],
            [t["metric"] for t in pts],
            s=20,
            color="#9aa5b1",
            label=f"feasible trials ({len(pts)})",
            zorder=2,
        )
        _pareto_front_line(ax, front)
        entries = [_entries(t) for t in pts]
        if min(entries) > 0 and max(entries) / min(entries) > 100:
            ax.set_xscale("log")
        ax.set_title("Pareto front: metric (maximise) vs table entries (minimise)")
        ax.set_xlabel("table entries")
        ax.set_ylabel(str(report.get("metric") or "metric"), parse_math=False)
        ax.grid(alpha=0.3)
        _legend_outside(ax)
        return _svg(fig)


def _pareto_front_line(ax: Any, front: Sequence[Mapping[str, Any]]) -> None:
    xs = [_entries(t) for t in front]
    ys = [t["metric"] for t in front]
    ax.plot(xs, ys, drawstyle="steps-post", color=_INFEASIBLE, lw=1.5, zorder=3)
    ax.scatter(
        xs,
        ys,
        s=40,
        color=_INFEASIBLE,
        edgecolors="black",
        linewidths=0.5,
        label=f"Pareto front ({len(front)})",
        zorder=4,
    )
    if len(front) <= 8:  # more labels than this overlap; the trial table lists them all
        for t, x, y in zip(front, xs, ys, strict=True):
            ax.annotate(
                f"#{t.get('number')}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7
            )


def plot_confusion(report: Mapping[str, Any]) -> str:
    """SVG heatmap of the confusion matrix (rows = true, columns = predicted); none beyond
    MAX_PLOTTED_CLASSES classes (the table in report.json has them all)."""
    cm = report.get("confusion_matrix") or {}
    matrix = [[v if _finite(v) else 0 for v in row] for row in cm.get("matrix") or []]
    if not matrix or not matrix[0] or len(matrix) > MAX_PLOTTED_CLASSES:
        return ""
    labels = _labels(cm.get("labels") or report.get("class_labels"), len(matrix))
    size = min(9.0, 2.4 + 0.55 * len(labels))
    with matplotlib.rc_context(_RC):
        fig = _new_figure(size + 1.2, size)
        ax = fig.add_subplot()
        im = ax.imshow(matrix, cmap="Blues", aspect="equal")
        fig.colorbar(im, ax=ax, shrink=0.8)
        if len(labels) <= MAX_ANNOTATED_CLASSES:
            _annotate_counts(ax, matrix, font=max(5.0, 10.0 - 0.25 * len(labels)))
        cols = range(len(matrix[0]))
        ax.set_xticks(
            list(cols),
            [labels[i] if i < len(labels) else str(i) for i in cols],
            rotation=45,
            ha="right",
            rotation_mode="anchor",
            parse_math=False,
        )
        ax.set_yticks(range(len(matrix)), labels[: len(matrix)], parse_math=False)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title("Confusion matrix (generated pipeline)")
        ax.spines[["top", "right"]].set_visible(True)
        return _svg(fig)


def _labels(labels: Iterable[Any] | None, n: int) -> list[str]:
    """Tick labels: user strings escaped and cut to MAX_LABEL_CHARS (the plot's size and cost
    must not grow with a label's length)."""
    out = [clip(x, MAX_LABEL_CHARS) for x in list(labels or [])[:n]]
    return out + [str(i) for i in range(len(out), n)]


def _annotate_counts(ax: Any, matrix: Sequence[Sequence[float]], font: float) -> None:
    peak = max((max(row) for row in matrix if row), default=0) or 1
    for r, row in enumerate(matrix):
        for c, v in enumerate(row):
            colour = "white" if v > peak / 2 else "black"
            ax.text(c, r, f"{v:g}", ha="center", va="center", fontsize=font, color=colour)


# --------------------------------------------------------------------------- HTML


def _fmt(value: Any, digits: int = 4) -> str:
    """Jinja filter: numbers for display, ``—`` for missing values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 1e6 else f"{value:,.0f}"
    return str(value)


def _pct(value: Any, digits: int = 2) -> str:
    """Jinja filter: a fraction in [0, 1] as a percentage."""
    return "—" if not _finite(value) else f"{100.0 * value:.{digits}f}%"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("homunculus.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _fmt
    env.filters["pct"] = _pct
    env.filters["compact_json"] = lambda v: json.dumps(v, sort_keys=True, separators=(", ", ": "))
    return env


def _resource_rows(resources: Mapping[str, Any], util: Mapping[str, Any],
                   target: str = "") -> list[dict]:
    totals = resources.get("totals") or {}
    limits = resources.get("limits") or {}
    binding = resources.get("binding")
    labels = _CPU_LABELS.get(target, {})
    rows = []
    for key in _resource_keys(totals, limits):
        label, kind = _RESOURCE_KEYS.get(key, (key, "max"))
        label = labels.get(key, label)
        pct = util.get(key)
        rows.append(
            {
                "key": key,
                "label": label,
                "total": totals.get(key),
                "limit": limits.get(key),
                "op": "≥" if kind == "min" else "≤",
                "util": pct,
                "over": pct is not None and pct > 100.0,
                "binding": key == binding,
            }
        )
    return rows


def _trial_rows(report: Mapping[str, Any], front: Iterable[Any]) -> list[dict]:
    on_front = set(front)
    best = report.get("best_trial")
    rows = []
    for t in sorted(_trials(report), key=lambda t: t.get("number", 0)):
        rows.append(
            {
                "number": t.get("number"),
                "family": t.get("family", ""),
                "state": t.get("state", ""),
                "metric": t.get("metric"),
                "feasible": bool(t.get("feasible")),
                "entries": _entries(t),
                "binding": t.get("binding"),
                "params": t.get("params") or {},
                "best": best is not None and t.get("number") == best,
                "pareto": t.get("number") in on_front,
            }
        )
    return rows


def _stage_row(stage: Mapping[str, Any]) -> dict[str, Any]:
    tables = stage.get("tables") or []
    ops = stage.get("ops") or []
    return {
        "stage": stage.get("stage"),
        "tables": [str(t) for t in tables] if isinstance(tables, list) else [str(tables)],
        "ops": [str(o) for o in ops] if isinstance(ops, list) else [str(ops)],
        **{k: stage.get(k) for k in ("entries", "sram_bits", "tcam_bits")},
    }


def _candidate_row(cand: Mapping[str, Any]) -> dict[str, Any]:
    allowed = cand.get("allowed")
    return {
        "family": str(cand.get("family", "")),
        "allowed": None if allowed is None else bool(allowed),
        "reason": str(cand.get("reason") or ""),
    }


_REAL_VS_ESTIMATE = (("stages", "Stages"), ("tables", "Tables"), ("sram_kbit", "SRAM (kbit)"),
                     ("tcam_kbit", "TCAM (kbit)"))


def _toolchain_context(report: Mapping[str, Any]) -> dict[str, Any]:
    """The vendor compiler's verdict and figures beside the estimates (``ran`` false when no
    compiler ran, including reports written before the hook existed)."""
    tc = report.get("toolchain") or {}
    ran = bool(tc.get("ran"))
    real = (tc.get("resources") or {}) if ran else {}
    estimate = tc.get("estimate") or (report.get("resources") or {}).get("totals") or {}
    rows = [{"label": label, "estimated": estimate.get(key), "real": real.get(key)}
            for key, label in _REAL_VS_ESTIMATE] if real else []
    tool, version = str(tc.get("tool") or ""), str(tc.get("version") or "")
    return {
        "ran": ran,
        "title": version if version.startswith(tool) and tool else (
            tool + (f" ({version})" if version else "")),
        "reason": tc.get("reason"),
        "tool": tc.get("tool"),
        "version": tc.get("version"),
        "accepted": tc.get("accepted"),
        "errors": tc.get("errors"),
        "warnings": tc.get("warnings"),
        "seconds": tc.get("seconds"),
        "log_excerpt": str(tc.get("log_excerpt") or ""),
        "files": [str(f) for f in tc.get("files") or []],
        "rows": rows,
        "sram_blocks": real.get("sram_blocks"),
        "tcam_blocks": real.get("tcam_blocks"),
        "stages": [{"stage": st.get("stage"), "tables": [str(t) for t in st.get("tables") or []],
                    "sram_blocks": st.get("sram_blocks"), "tcam_blocks": st.get("tcam_blocks")}
                   for st in real.get("per_stage") or []],
    }


def build_context(report: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the template needs, with defaults for missing optional keys."""
    derived = report.get("derived") or derive(report)
    resources = report.get("resources") or {}
    metrics = report.get("metrics") or {}
    return {
        "name": report.get("name") or "unnamed",
        "target": report.get("target") or "—",
        "metric": report.get("metric") or "metric",
        "class_labels": [str(x) for x in report.get("class_labels") or []],
        "metrics": {k: metrics.get(k) for k in ("float", "quantised", "pipeline", "agreement")},
        "cv": metrics.get("cv") or {},
        "category_table": report.get("category_table"),
        "decide_at": metrics.get("decide_at") or 0,
        "per_class_f1": metrics.get("per_class_f1") or {},
        "best_trial": report.get("best_trial"),
        "search": report.get("search") or {},
        "derived": derived,
        "history_svg": plot_history(report, derived),
        "pareto_svg": plot_pareto(report, derived),
        "confusion_svg": plot_confusion(report),
        "stages": [_stage_row(s) for s in resources.get("stages") or []],
        "resource_rows": _resource_rows(resources, derived.get("utilisation_pct") or {},
                                        str(report.get("target") or "")),
        "cpu_target": report.get("target") in _CPU_LABELS,
        "feasible": resources.get("feasible"),
        "binding": resources.get("binding"),
        "violations": [str(v) for v in resources.get("violations") or []],
        "candidates": [_candidate_row(c) for c in report.get("candidates") or []],
        "toolchain": _toolchain_context(report),
        "trials": _trial_rows(report, derived.get("pareto_front") or []),
    }


def render_html(report: Mapping[str, Any]) -> str:
    """The self-contained HTML page for ``report`` (a JSON-clean dict)."""
    context = build_context(report)
    for key in ("history_svg", "pareto_svg", "confusion_svg"):
        context[key] = Markup(context[key])
    return _environment().get_template("report.html.j2").render(**context)


def write_report(out_dir: Path, report: dict) -> None:
    """Write ``out_dir/report.json`` and ``out_dir/report.html`` (creating ``out_dir``).

    ``report.json`` holds the report (NaN/inf replaced by null) plus a ``"derived"``
    block with the figures computed for the page; the HTML is rendered from exactly
    that JSON content.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = to_jsonable(report)
    clean["derived"] = to_jsonable(derive(clean))
    text = json.dumps(clean, indent=2, allow_nan=False, ensure_ascii=False)
    (out_dir / "report.json").write_text(text + "\n", encoding="utf-8")
    (out_dir / "report.html").write_text(render_html(json.loads(text)), encoding="utf-8")
