"""A self-contained HTML report of a verdicts file: counts, inline SVG charts, flagged traces.

The report has no script, no external resource and a Content-Security-Policy forbidding both, so
it can be opened from anywhere (a CI artifact, an e-mail). Every piece of audited text is hostile
and goes through :func:`html.escape`. Thumbnails are downscaled with Pillow and embedded as data
URIs; without Pillow, or for an image that will not load, the report shows the image's name.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from traceguard._images import ImageAccess, ImageRef
from traceguard._urls import redact_url
from traceguard.audit._output import existing_records
from traceguard.audit.summary import AuditSummary

__all__ = ["MAX_SHOWN", "render_report", "write_report"]

MAX_SHOWN = 200
"""Flagged (and failed) traces listed in full; the rest are counted."""
_THUMB_PX = 160
_THUMB_MAX_BYTES = 20 * 1024 * 1024

_LEVELS = (
    ("safe", "safe", "#2e9d6a"),
    ("potentially_harmful", "potentially harmful", "#e0a100"),
    ("harmful", "harmful", "#d1433f"),
    ("error", "auditor error", "#7a5af8"),
    ("invalid_input", "invalid input", "#98a2b3"),
)
_ACTION_COLORS = {
    "allow": "#2e9d6a",
    "redact": "#e0a100",
    "block": "#d1433f",
    "escalate": "#7a5af8",
}


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _level_of(record: Mapping[str, Any]) -> str:
    if record.get("status") == "ok" and record.get("label"):
        return str(record["label"])
    return str(record.get("status") or "error")


def _bar_chart(rows: Sequence[tuple[str, int, str]], *, width: int = 360) -> str:
    """Horizontal bars, one per ``(label, count, colour)``."""
    if not rows:
        return '<p class="more">No data.</p>'
    label_w, bar_h, gap = 130, 22, 8
    top = max(count for _, count, _ in rows) or 1
    span = width - label_w - 50
    height = len(rows) * (bar_h + gap) + gap
    parts = [
        f'<svg class="chart" role="img" width="100%" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, (label, count, colour) in enumerate(rows):
        y = gap + i * (bar_h + gap)
        w = 0 if count == 0 else max(2, round(span * count / top))
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{_e(label)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_h}" rx="3" fill="{colour}">'
            f"<title>{_e(label)}: {count}</title></rect>"
            f'<text x="{label_w + w + 6}" y="{y + 15}">{count}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _short(category: str, limit: int = 24) -> str:
    text = category.replace("_", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _stacked_chart(by_category: Mapping[str, Counter[str]], *, width: int = 400) -> str:
    """One stacked bar per category, split by risk level."""
    if not by_category:
        return '<p class="more">No categories reported.</p>'
    rows = sorted(by_category.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))[:12]
    label_w, bar_h, gap = 170, 20, 8
    top = max(sum(c.values()) for _, c in rows) or 1
    span = width - label_w - 40
    height = len(rows) * (bar_h + gap) + gap + 24
    parts = [
        f'<svg class="chart" role="img" width="100%" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, (category, counts) in enumerate(rows):
        y = gap + i * (bar_h + gap)
        x = float(label_w)
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 14}" text-anchor="end">{_e(_short(category))}</text>'
        )
        for level, name, colour in _LEVELS[:3]:
            n = counts.get(level, 0)
            if not n:
                continue
            w = span * n / top
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{max(w, 1.5):.1f}" height="{bar_h}" '
                f'fill="{colour}"><title>{_e(category)} / {name}: {n}</title></rect>'
            )
            x += w
        parts.append(f'<text x="{x + 6:.1f}" y="{y + 14}">{sum(counts.values())}</text>')
    legend_y = height - 10
    lx = 10
    for _, name, colour in _LEVELS[:3]:
        parts.append(
            f'<rect x="{lx}" y="{legend_y - 9}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{lx + 14}" y="{legend_y}">{name}</text>'
        )
        lx += 14 + 7 * len(name) + 12
    parts.append("</svg>")
    return "".join(parts)


def _thumbnail(shown: str, access: ImageAccess | None) -> str:
    """An ``<img>`` with a downscaled copy of a local image, or the image's name when we can't."""
    if "://" in shown:  # records written before URLs were redacted may still hold secrets
        shown = redact_url(shown)
    fallback = f'<div class="noimg">image: {_e(shown)}</div>'
    if access is None or shown.startswith(("http://", "https://", "sha256:", "data:")):
        return fallback
    try:
        from PIL import Image
    except ImportError:  # thumbnails are optional
        return fallback
    try:
        loaded = ImageRef.from_path(shown).load(access)
        with loaded.to_pil() as picture:
            picture.thumbnail((_THUMB_PX, _THUMB_PX), Image.Resampling.LANCZOS)
            rgb = picture.convert("RGB")
        buffer = io.BytesIO()
        rgb.save(buffer, format="JPEG", quality=80)
    except Exception:
        return fallback
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{_e(Path(shown).name)}" src="data:image/jpeg;base64,{data}">'


def _field(title: str, text: Any) -> str:
    if text is None or text == "":
        return ""
    return f'<div class="field"><b>{_e(title)}</b><pre>{_e(text)}</pre></div>'


def _trace_block(record: Mapping[str, Any], access: ImageAccess | None) -> str:
    level = _level_of(record)
    source = record.get("source") or {}
    where = f"{source.get('path')}:{source.get('line')}"
    if source.get("turn") is not None:
        where += f" turn {source.get('turn')}"
    excerpt = record.get("excerpt") or {}
    images = record.get("images") or []
    thumbs = "".join(_thumbnail(str(shown), access) for shown in images[:4])
    error = record.get("error") or {}
    categories = ", ".join(str(c) for c in record.get("categories") or [])
    risk = record.get("risk")
    return (
        '<div class="trace">'
        + (f'<div class="thumbs">{thumbs}</div>' if thumbs else "")
        + '<div class="body">'
        + f'<span class="badge b-{_e(level)}">{_e(level.replace("_", " "))}'
        + (f" · {_e(risk)}" if risk is not None else "")
        + "</span>"
        + f'<span class="badge b-action">{_e(record.get("action"))}</span>'
        + f"<strong>{_e(record.get('id'))}</strong>"
        + f'<div class="meta">{_e(where)} · auditor {_e(record.get("auditor"))}'
        + (f" · categories: {_e(categories)}" if categories else "")
        + "</div>"
        + _field("analysis", record.get("analysis"))
        + (_field("error", f"{error.get('type')}: {error.get('message')}") if error else "")
        + _field("query", excerpt.get("query"))
        + _field("thinking", excerpt.get("thinking"))
        + _field("response", excerpt.get("response"))
        + "</div></div>"
    )


def render_report(
    records: Iterable[Mapping[str, Any]],
    *,
    title: str = "",
    image_root: Path | None = None,
    summary: AuditSummary | None = None,
) -> str:
    """The report's HTML for a stream of output records (held in memory: ``MAX_SHOWN`` each)."""
    by_level: Counter[str] = Counter()
    by_action: Counter[str] = Counter()
    by_category: dict[str, Counter[str]] = {}
    harmful: list[Mapping[str, Any]] = []
    potential: list[Mapping[str, Any]] = []
    failed: list[Mapping[str, Any]] = []
    total = 0
    for record in records:
        total += 1
        level = _level_of(record)
        by_level[level] += 1
        by_action[str(record.get("action"))] += 1
        for category in record.get("categories") or ():
            by_category.setdefault(str(category), Counter())[level] += 1
        if level == "harmful" and len(harmful) < MAX_SHOWN:
            harmful.append(record)
        elif level == "potentially_harmful" and len(potential) < MAX_SHOWN:
            potential.append(record)
        elif level in ("error", "invalid_input") and len(failed) < MAX_SHOWN:
            failed.append(record)
    access = ImageAccess(root=image_root, max_bytes=_THUMB_MAX_BYTES) if image_root else None
    flagged_total = by_level["harmful"] + by_level["potentially_harmful"]
    failed_total = by_level["error"] + by_level["invalid_input"]
    shown = (harmful + potential)[:MAX_SHOWN]

    cards = [("traces", total)] + [(name, by_level[key]) for key, name, _ in _LEVELS]
    card_html = "".join(
        f'<div class="card"><div class="n">{n}</div><div class="k">{_e(k)}</div></div>'
        for k, n in cards
    )
    risk_rows = [(name, by_level[key], colour) for key, name, colour in _LEVELS]
    action_rows = [
        (action, by_action[action], _ACTION_COLORS.get(action, "#667085"))
        for action in sorted(
            by_action, key=lambda a: list(_ACTION_COLORS).index(a) if a in _ACTION_COLORS else 99
        )
    ]

    def listing(items: list[Mapping[str, Any]], count: int, empty: str) -> str:
        if not items:
            return f'<p class="more">{empty}</p>'
        body = "".join(_trace_block(r, access) for r in items)
        if count > len(items):
            body += f'<p class="more">{count - len(items)} more not shown (see the JSONL).</p>'
        return body

    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    auditors = ", ".join(sorted(summary.auditors)) if summary is not None else ""
    subtitle = f"{title} · {total} traces · generated {generated}"
    if auditors:
        subtitle += f" · auditor: {auditors}"
    template = Template(
        resources.files("traceguard.audit").joinpath("report_template.html").read_text("utf-8")
    )
    return template.substitute(
        subtitle=_e(subtitle),
        cards=card_html,
        risk_chart=_bar_chart(risk_rows),
        action_chart=_bar_chart(action_rows),
        category_chart=_stacked_chart(by_category),
        flagged_count=flagged_total,
        flagged=listing(
            shown, flagged_total, "No trace was graded potentially harmful or harmful."
        ),
        failed_count=failed_total,
        failed=listing(failed, failed_total, "Every trace was audited."),
        footer=_e(
            "Risk levels follow GuardTrace: 0 safe, 0.5 potentially harmful, 1 harmful. "
            "Traces that could not be audited are never counted as safe."
        ),
    )


def write_report(
    verdicts: str | Path,
    report: str | Path,
    *,
    image_root: str | Path | None = None,
    summary: AuditSummary | None = None,
) -> Path:
    """Render the report of a verdicts file to ``report``; thumbnails come from ``image_root``."""
    verdicts, report = Path(verdicts), Path(report)
    text = render_report(
        existing_records(verdicts),
        title=verdicts.name,
        image_root=Path(image_root).resolve() if image_root is not None else None,
        summary=summary,
    )
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text, encoding="utf-8")
    return report
