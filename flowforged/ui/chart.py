"""A pipeline's duration-and-outcome chart as server-rendered SVG: one bar per finished run, its height
the duration, its class the outcome (the stylesheet colours it, and patterns failures so that colour is
not the only sign). No script and no inline style: the page's Content-Security-Policy allows neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from markupsafe import Markup, escape

from flowforged.ui.board import duration, parse_time

WIDTH, HEIGHT, TOP, BOTTOM, LEFT = 640, 180, 10, 20, 48


def svg(runs: Sequence[Any]) -> Markup:
    """The chart of `runs` (oldest first, with status, duration_seconds, finished_at, number, run_id)."""
    if not runs:
        return Markup('<p class="muted">No finished runs yet.</p>')
    longest = max((r["duration_seconds"] or 0 for r in runs), default=0) or 1.0
    plot = HEIGHT - TOP - BOTTOM
    step = (WIDTH - LEFT) / len(runs)
    bar = max(step * 0.8, 1.0)
    failed = sum(r["status"] == "failed" for r in runs)
    label = f"Duration of the last {len(runs)} finished runs; {failed} failed; longest {duration(longest)}"
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}">',
        f'<line class="axis" x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH}" y2="{HEIGHT - BOTTOM}"/>',
        f'<text class="tick" x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end">{duration(longest)}</text>',
        f'<text class="tick" x="{LEFT - 4}" y="{HEIGHT - BOTTOM}" text-anchor="end">0</text>',
    ]
    for index, run in enumerate(runs):
        seconds = run["duration_seconds"] or 0
        height = max(plot * seconds / longest, 2.0)
        x = LEFT + index * step
        y = HEIGHT - BOTTOM - height
        number = run["number"] or run["run_id"]
        title = f"#{number} {run['status']} in {duration(run['duration_seconds'])}, {run['finished_at'] or ''}"
        parts.append(
            f'<rect class="s-{escape(run["status"])}" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{height:.1f}">'
            f"<title>{escape(title)}</title></rect>"
        )
    first, last = runs[0]["finished_at"] or "", runs[-1]["finished_at"] or ""
    parts.append(f'<text class="tick" x="{LEFT}" y="{HEIGHT - 4}">{escape(first[:10])}</text>')
    parts.append(f'<text class="tick" x="{WIDTH}" y="{HEIGHT - 4}" text-anchor="end">{escape(last[:10])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every value in it is a number or escaped


def strip(statuses: Sequence[str]) -> Markup:
    """A tile's last runs, oldest first, as bars: one stroked path per outcome keeps it a few bytes."""
    paths: dict[str, list[str]] = {}
    for index, status in enumerate(statuses):
        paths.setdefault(status, []).append(f"M{index * 5 + 2} 0v12")
    body = "".join(f'<path class="s-{escape(status)}" d="{"".join(d)}"/>' for status, d in paths.items())
    return Markup(f'<svg class="strip" viewBox="0 0 100 12" aria-hidden="true">{body}</svg>')  # noqa: S704 - escaped


def success_rate(runs: Sequence[Any]) -> float | None:
    decisive = [r for r in runs if r["status"] in ("success", "failed")]
    return sum(r["status"] == "success" for r in decisive) / len(decisive) if decisive else None


def times_to_fix(breakages: Sequence[Any]) -> list[dict[str, Any]]:
    """Each past breakage of a branch and how long until the run that fixed it (None: still broken)."""
    open_: dict[str | None, Any] = {}
    out: list[dict[str, Any]] = []
    for row in breakages:
        if row["transition"] == "broken":
            open_[row["branch"]] = row
        elif row["branch"] in open_:
            broke = open_.pop(row["branch"])
            start, end = parse_time(broke["finished_at"]), parse_time(row["finished_at"])
            seconds = (end - start).total_seconds() if start and end else None
            out.append({"branch": broke["branch"], "broken_at": broke["finished_at"], "seconds": seconds})
    out += [{"branch": b["branch"], "broken_at": b["finished_at"], "seconds": None} for b in open_.values()]
    return sorted(out, key=lambda item: item["broken_at"] or "", reverse=True)
