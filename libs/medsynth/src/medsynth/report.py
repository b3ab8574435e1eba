"""The evaluation report: one self-contained HTML page (images embedded, no server needed) plus the
same numbers as JSON."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

def grid_png(images: np.ndarray, *, columns: int = 8, scale: int = 2) -> bytes:
    """PNG of a grid of grey (N, 1, H, W) images in [0, 1], ``columns`` wide (pairs stay side by side
    with an even count). Sample grids with masks use :func:`medsynth.sampling.cohort.contact_sheet`."""
    from PIL import Image

    n, _, h, w = images.shape
    rows = max(1, -(-n // columns))
    sheet = np.zeros((rows * (h + 2), columns * (w + 2), 3), np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        tile = np.repeat((np.clip(images[i, 0], 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)
        sheet[r * (h + 2) + 1 : r * (h + 2) + 1 + h, c * (w + 2) + 1 : c * (w + 2) + 1 + w] = tile
    img = Image.fromarray(sheet).resize((sheet.shape[1] * scale, sheet.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def curve_svg(series: Mapping[str, Sequence[tuple[float, float]]], *, width: int = 560, height: int = 200) -> str:
    """An inline SVG line chart of named (x, y) series (training curves)."""
    points = [p for s in series.values() for p in s]
    if not points:
        return "<p>(no curve recorded)</p>"
    xs, ys = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
    x0, x1, y0, y1 = xs.min(), max(xs.max(), xs.min() + 1e-9), ys.min(), max(ys.max(), ys.min() + 1e-9)
    colours = ["#c0392b", "#2980b9", "#27ae60", "#8e44ad"]
    lines, legend = [], []
    for k, (name, pts) in enumerate(series.items()):
        coords = " ".join(
            f"{40 + (x - x0) / (x1 - x0) * (width - 50):.1f},{height - 20 - (y - y0) / (y1 - y0) * (height - 30):.1f}" for x, y in pts
        )
        colour = colours[k % len(colours)]
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coords}"/>')
        legend.append(f'<text x="{50 + 120 * k}" y="12" fill="{colour}" font-size="11">{html.escape(name)}</text>')
    axes = (f'<text x="2" y="{height - 20}" font-size="10">{y0:.3g}</text><text x="2" y="24" font-size="10">{y1:.3g}</text>'
            f'<text x="40" y="{height - 4}" font-size="10">{x0:.0f}</text><text x="{width - 40}" y="{height - 4}" font-size="10">{x1:.0f}</text>')
    return f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">{"".join(lines)}{"".join(legend)}{axes}</svg>'


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"/>'


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "–" if np.isnan(value) else f"{value:.4g}"
    return html.escape(str(value))


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p>(none)</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(results: Mapping[str, Any], figures: Mapping[str, bytes], curves: Mapping[str, Sequence[tuple[float, float]]]) -> str:
    """The report page. ``results`` is the JSON report; ``figures`` PNGs by name (``synthetic``,
    ``real``, ``memorization``); ``curves`` named (step, value) series."""
    title = f"medsynth evaluation {results.get('evaluation_id', '')}"
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>cohort <b>{_fmt(results.get('cohort_id'))}</b> from generator <b>{_fmt(results.get('generator_id'))}</b>, "
        f"dataset <b>{_fmt(results.get('dataset'))}</b> v{_fmt(results.get('dataset_version'))}</p>",
        "<h2>Samples</h2><div class='pair'>",
        f"<figure>{_img(figures['synthetic'], 'synthetic samples')}<figcaption>synthetic</figcaption></figure>" if "synthetic" in figures else "",
        f"<figure>{_img(figures['real'], 'real samples')}<figcaption>real (training split)</figcaption></figure>" if "real" in figures else "",
        "</div>",
        "<h2>Fidelity</h2>",
        _table(results.get("fidelity", [])),
        "<h2>Utility (segmentation on held-out real patients)</h2>",
        _table(results.get("utility", [])),
        f"<p>relative Dice (synthetic-only / real-only): <b>{_fmt(results.get('relative_dice', float('nan')))}</b></p>",
        "<h2>Memorization audit</h2>",
        _table([{k: v for k, v in results.get("memorization", {}).items() if not isinstance(v, (list, dict))}]),
        f"<figure>{_img(figures['memorization'], 'closest pairs')}<figcaption>closest synthetic (left) / training (right) pairs</figcaption></figure>"
        if "memorization" in figures else "",
        "<h2>Training curves</h2>",
        curve_svg(curves),
        "<h2>Raw numbers</h2>",
        f"<pre>{html.escape(json.dumps(results, indent=2, default=str))}</pre>",
    ]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}.pair{display:flex;gap:1em}"
             "pre{font-size:11px;background:#f6f6f6;padding:1em;overflow:auto}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>{''.join(sections)}</body></html>"
