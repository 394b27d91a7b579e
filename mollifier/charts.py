"""Small SVG charts for the admin dashboard, drawn server-side: no JavaScript, no CDN, works offline.

Inputs are numbers and labels; labels are escaped. Returns SVG markup safe to embed.
"""

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe


def stacked_bars(
    series: list[dict], layers: list[tuple[str, str, str]], *, width: int = 720, height: int = 180
) -> SafeString:
    """One bar per item of ``series`` (oldest first), stacked by ``layers`` = (field, colour, label)."""
    top = max((sum(item.get(field, 0) for field, _, _ in layers) for item in series), default=0) or 1
    bar = width / max(len(series), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height + 52}" class="mollifier-chart" role="img">'
    ]
    parts.append(f'<text x="0" y="12" font-size="11">max {top:,} per minute</text>')
    for i, item in enumerate(series):
        y = height + 16
        for field, colour, label in layers:
            value = item.get(field, 0)
            if value:
                h = value / top * height
                y -= h
                parts.append(
                    f'<rect x="{i * bar + 1:.1f}" y="{y:.1f}" width="{max(bar - 2, 1):.1f}" height="{h:.1f}" fill="{colour}">'
                    f"<title>{escape(label)}: {value:,}</title></rect>"
                )
    parts.append(f'<text x="0" y="{height + 16 + 12}" font-size="10" fill="#777">{len(series)} min ago</text>')
    parts.append(f'<text x="{width}" y="{height + 16 + 12}" font-size="10" fill="#777" text-anchor="end">now</text>')
    legend_x = 0
    for _, colour, label in layers:
        parts.append(f'<rect x="{legend_x}" y="{height + 36}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{legend_x + 14}" y="{height + 45}" font-size="11">{escape(label)}</text>')
        legend_x += 14 + 8 * len(label) + 16
    parts.append("</svg>")
    return mark_safe("".join(parts))


def horizontal_bars(items: list[tuple[str, int]], *, colour: str = "#417690", width: int = 720) -> SafeString:
    """One labelled horizontal bar per (label, value)."""
    top = max((value for _, value in items), default=0) or 1
    row, label_width = 22, 260
    height = row * max(len(items), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" class="mollifier-chart" role="img">'
    ]
    for i, (label, value) in enumerate(items):
        w = value / top * (width - label_width - 70)
        y = i * row
        parts.append(f'<text x="0" y="{y + 15}" font-size="12">{escape(label)}</text>')
        parts.append(f'<rect x="{label_width}" y="{y + 4}" width="{w:.1f}" height="14" fill="{colour}"/>')
        parts.append(f'<text x="{label_width + w + 6:.1f}" y="{y + 15}" font-size="12">{value:,}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))


def line(
    series: list[dict],
    field: str,
    *,
    colour: str = "#417690",
    label: str,
    unit: str,
    ceiling: float | None = None,
    ceiling_label: str = "",
    width: int = 720,
    height: int = 160,
) -> SafeString:
    """One line over ``series`` (oldest first) of ``item[field]``; a None value breaks the line (no
    data that minute). ``ceiling`` draws a dashed reference line (and sets the scale)."""
    values = [item.get(field) for item in series]
    top = max([v for v in values if v is not None] + ([ceiling] if ceiling else []), default=0) or 1
    step = width / max(len(series) - 1, 1)

    def y(value: float) -> float:
        return height + 16 - value / top * height

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height + 52}" class="mollifier-chart" role="img">'
    ]
    parts.append(f'<text x="0" y="12" font-size="11">max {top:,.0f} {escape(unit)}</text>')
    if ceiling:
        parts.append(
            f'<line x1="0" x2="{width}" y1="{y(ceiling):.1f}" y2="{y(ceiling):.1f}" stroke="#999" stroke-dasharray="4 4">'
            f"<title>{escape(ceiling_label)}: {ceiling:,.0f} {escape(unit)}</title></line>"
        )
    runs: list[list[str]] = [[]]
    for i, value in enumerate(values):
        if value is None:
            runs.append([])
            continue
        runs[-1].append(f"{i * step:.1f},{y(value):.1f}")
        parts.append(
            f'<circle cx="{i * step:.1f}" cy="{y(value):.1f}" r="2" fill="{colour}">'
            f"<title>{escape(label)}: {value:,.0f} {escape(unit)}</title></circle>"
        )
    for points in runs:
        if len(points) > 1:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(points)}"/>')
    parts.append(f'<text x="0" y="{height + 16 + 12}" font-size="10" fill="#777">{len(series)} min ago</text>')
    parts.append(f'<text x="{width}" y="{height + 16 + 12}" font-size="10" fill="#777" text-anchor="end">now</text>')
    parts.append(f'<rect x="0" y="{height + 36}" width="10" height="10" fill="{colour}"/>')
    parts.append(f'<text x="14" y="{height + 45}" font-size="11">{escape(label)}</text>')
    if ceiling:
        parts.append(
            f'<line x1="{30 + 8 * len(label)}" x2="{50 + 8 * len(label)}" y1="{height + 41}" y2="{height + 41}" '
            'stroke="#999" stroke-dasharray="4 4"/>'
        )
        parts.append(f'<text x="{54 + 8 * len(label)}" y="{height + 45}" font-size="11">{escape(ceiling_label)}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))
