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


#: What shows or names a training image: closest (synthetic, training) pairs, wherever they are listed,
#: training patient ids and the index of a training image.
TRAINING_KEYS = frozenset({"worst_pairs", "closest_pairs", "train_patient", "train_index", "lowpass_train_index", "mask_train_index"})
#: Figures of a report that show training images: real samples, the closest pairs of the evaluation's
#: audit and of the release gate.
TRAINING_FIGURES = frozenset({"real", "memorization", "release"})
WITHHELD = "Training images, closest pairs and training patient ids are withheld for this role."


def without_training_data(results: Mapping[str, Any]) -> dict[str, Any]:
    """``results`` (an evaluation's report, a study's results, a cohort manifest) without anything that
    shows or names training data (:data:`TRAINING_KEYS` at any depth, :data:`TRAINING_FIGURES` under any
    ``figures``), marked ``training_data_withheld``: what a caller who may not see training images gets.
    The reports say so where the withheld parts would be."""

    def strip(value: Any, key: str | None = None) -> Any:
        if isinstance(value, Mapping):
            return {k: strip(v, k) for k, v in value.items()
                    if k not in TRAINING_KEYS and not (key == "figures" and k in TRAINING_FIGURES)}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return {**strip(results), "training_data_withheld": WITHHELD}


def curve_series(curves: Mapping[str, Sequence[float]]) -> dict[str, list[tuple[float, float]]]:
    """A generator's ``curves.json`` (``step`` and one list per series) as named (step, value) series."""
    return {name: list(zip(curves["step"], values)) for name, values in curves.items() if name != "step"}


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


def _generator_section(generator: Mapping[str, Any]) -> str:
    """The family, its options and the training options, as two small tables."""
    if not generator:
        return "<p>(no generator record)</p>"
    budget = " (stopped by its time budget)" if generator.get("stopped_by_time_budget") else ""
    head = (f"<p>family <b>{_fmt(generator.get('family'))}</b>, {_fmt(generator.get('steps_done'))} training steps"
            f"{budget} on {_fmt(generator.get('device'))}</p>")
    options = {k: v for k, v in (generator.get("options") or {}).items() if k != "family"}
    training = generator.get("training") or {}
    return head + "<h3>Options</h3>" + _kv_table(options) + ("<h3>Training</h3>" + _kv_table(training) if training else "")


def curve_svg(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    width: int = 560,
    height: int = 200,
    y_range: tuple[float, float] | None = None,
    x_label: str = "",
    y_label: str = "",
    markers: bool = False,
) -> str:
    """An inline SVG line chart of named (x, y) series (training and validation curves).

    ``y_range`` fixes the vertical axis (e.g. ``(0, 1)`` for Dice), else it spans the data;
    ``markers`` draws a dot at every point (for curves of a few validation steps). Non-finite
    points are skipped.
    """
    clean = {name: [(float(x), float(y)) for x, y in pts if y is not None and np.isfinite(float(y))] for name, pts in series.items()}
    points = [p for s in clean.values() for p in s]
    if not points:
        return "<p>(no curve recorded)</p>"
    xs, ys = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
    y0, y1 = y_range if y_range is not None else (ys.min(), ys.max())
    x0, x1, y1 = xs.min(), max(xs.max(), xs.min() + 1e-9), max(y1, y0 + 1e-9)
    colours = ["#c0392b", "#2980b9", "#27ae60", "#8e44ad"]
    lines, legend = [], []

    def at(x: float, y: float) -> tuple[float, float]:
        return 40 + (x - x0) / (x1 - x0) * (width - 50), height - 20 - (y - y0) / (y1 - y0) * (height - 30)

    for k, (name, pts) in enumerate(clean.items()):
        colour = colours[k % len(colours)]
        xy = [at(x, y) for x, y in pts]
        coords = " ".join(f"{px:.1f},{py:.1f}" for px, py in xy)
        lines.append(f'<polyline data-series="{html.escape(name)}" fill="none" stroke="{colour}" stroke-width="1.5" points="{coords}"/>')
        if markers:
            lines += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{colour}"/>' for px, py in xy]
        legend.append(f'<text x="{50 + 120 * k}" y="12" fill="{colour}" font-size="11">{html.escape(name)}</text>')
    axes = (f'<text x="2" y="{height - 20}" font-size="10">{y0:.3g}</text><text x="2" y="24" font-size="10">{y1:.3g}</text>'
            f'<text x="40" y="{height - 4}" font-size="10">{x0:.0f}</text><text x="{width - 40}" y="{height - 4}" font-size="10">{x1:.0f}</text>'
            f'<text x="{width // 2 - 30}" y="{height - 4}" font-size="10">{html.escape(x_label)}</text>'
            f'<text x="2" y="{height // 2}" font-size="10">{html.escape(y_label)}</text>')
    return f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">{"".join(lines)}{"".join(legend)}{axes}</svg>'


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"/>'


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if np.isnan(value) else f"{value:.4g}"
    return html.escape(str(value))


def _table(rows: Sequence[Mapping[str, Any]], cols: Sequence[str] | None = None) -> str:
    """A table of ``rows``; ``cols`` (default: the first row's keys) name the columns."""
    if not rows:
        return "<p>(none)</p>"
    cols = list(cols or rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def scatter_svg(groups: Mapping[str, Sequence[Sequence[float]]], *, size: int = 320) -> str:
    """Points of named groups (real in grey, synthetic in red, others coloured in turn) in one square."""
    points = [p for pts in groups.values() for p in pts]
    if not points:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    lo_x, hi_x, lo_y, hi_y = min(xs), max(xs), min(ys), max(ys)
    span = max(hi_x - lo_x, hi_y - lo_y, 1e-9)
    at = lambda p: (10 + (p[0] - lo_x) / span * (size - 20), 10 + (p[1] - lo_y) / span * (size - 20))  # noqa: E731
    colours = {"real": "#777777", "synthetic": "#d62728"}
    others = iter(["#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"])
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size + 110}" height="{size}" font-family="sans-serif" font-size="11">'
           f'<rect x="0" y="0" width="{size}" height="{size}" fill="none" stroke="#ccc"/>']
    for i, (name, pts) in enumerate(groups.items()):
        colour = colours.get(name) or next(others, "#000000")
        out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{colour}" fill-opacity="0.6"/>' for x, y in map(at, pts)]
        out.append(f'<circle cx="{size + 12}" cy="{14 + 16 * i}" r="4" fill="{colour}"/>'
                   f'<text x="{size + 20}" y="{18 + 16 * i}">{html.escape(name)} ({len(pts)})</text>')
    out.append("</svg>")
    return "".join(out)


NN_COLOURS = {"synthetic": "#d62728", "held-out real": "#1f77b4", "training (other patients)": "#7f7f7f"}


def nn_histogram_svg(hist: Mapping[str, Any] | None, *, width: int = 640, height: int = 260) -> str:
    """The memorization audit's nearest-training distances as step histograms (share of each group per
    bin), the threshold as a dashed line: a cohort that copies sits left of held-out real patients;
    one that learned the data sits on them. Empty for evaluations without them."""
    if not hist or not hist.get("groups"):
        return ""
    edges = hist["edges"]
    left, right, top, bottom = 45, 190, 10, 40
    shares = {name: [c / max(g["n"], 1) for c in g["counts"]] for name, g in hist["groups"].items()}
    y_max = max((max(v) for v in shares.values() if v), default=1.0) or 1.0
    px = lambda x: left + x / edges[-1] * (width - left - right)  # noqa: E731
    py = lambda y: top + (1 - y / y_max) * (height - top - bottom)  # noqa: E731
    out = [f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11" '
           f'role="img" aria-label="nearest-training distance histograms">',
           f'<line x1="{left}" y1="{py(0)}" x2="{px(edges[-1])}" y2="{py(0)}" stroke="black"/>']
    for t in np.linspace(0, edges[-1], 5):
        out.append(f'<text x="{px(t)}" y="{py(0) + 14}" text-anchor="middle">{t:.3g}</text>')
    out.append(f'<text x="{(left + px(edges[-1])) / 2}" y="{height - 6}" text-anchor="middle">distance to the nearest training image '
               f'(0: a copy)</text>')
    threshold = hist.get("threshold")
    if threshold is not None and threshold <= edges[-1]:
        out.append(f'<line x1="{px(threshold)}" y1="{py(0)}" x2="{px(threshold)}" y2="{py(y_max)}" stroke="black" stroke-dasharray="4 3"/>'
                   f'<text x="{px(threshold) + 3}" y="{top + 10}">flagged below</text>')
    for i, (name, share) in enumerate(shares.items()):
        colour = NN_COLOURS.get(name, "#2ca02c")
        path = " ".join(f"{px(edges[k])},{py(v)} {px(edges[k + 1])},{py(v)}" for k, v in enumerate(share))
        out.append(f'<polyline points="{px(edges[0])},{py(0)} {path} {px(edges[-1])},{py(0)}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        group = hist["groups"][name]
        median = "" if group.get("median") is None else f", median {group['median']:.3g}"
        out.append(f'<text x="{px(edges[-1]) + 10}" y="{top + 14 * i + 10}" fill="{colour}">{html.escape(name)} (n {group["n"]}{median})</text>')
    out.append("</svg><figcaption>Nearest-training distances of the cohort, of held-out real patients and of training images "
               "(each against other patients'), as shares of each group; the dashed line is the audit's threshold.</figcaption></figure>")
    return "".join(out)


def embedding_figure(embedding: Mapping[str, Any] | None) -> str:
    """An evaluation's t-SNE map of real and synthetic features with how to read it (both reports show it)."""
    if not embedding:
        return "<p>(no in-domain features to map)</p>"
    return (scatter_svg({"real": embedding["real"], "synthetic": embedding["synthetic"]})
            + f"<p>{html.escape(embedding['method'])}. Near points have similar features; a region with only one colour is "
            "data the generator misses (grey) or invents (red). Distances between clusters mean little.</p>")


def _kv_table(row: Mapping[str, Any]) -> str:
    """One record as a two-column table (name, value): a row of many fields would not fit the page."""
    if not row:
        return "<p>(none)</p>"
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v if not isinstance(v, (list, dict)) else json.dumps(v))}</td></tr>"
                   for k, v in row.items())
    return f"<table class='kv'>{body}</table>"


#: What each number means, its direction and what to read it against (shown on every report).
EXPLAINED = (
    ("FID / KID", "distance between the features of real and synthetic images (extractor named): 0 for identical "
                  "distributions, lower is better. Read each against its real-versus-real baseline at the same counts: "
                  "held-out patients' images against the training images, the score a perfect generator of new patients "
                  "would get with this much data. Only scores through the same reference extractor (same SHA-256) compare."),
    ("Precision / recall / density / coverage", "in the same feature space: the share of synthetic images that look real "
     "(precision), of real variety the cohort covers (recall, coverage), and crowding (density, about 1 when matched). Higher "
     "is better for precision, recall and coverage (at most 1)."),
    ("Diversity", "how different the synthetic images are from each other, against the real ones (ratio about 1 is "
                  "healthy; below 0.5 suggests mode collapse)."),
    ("Dice / HD95", "a segmenter trained on real, synthetic or mixed data, tested on held-out real patients: Dice is "
                    "mask overlap (0 to 1, higher is better), HD95 the 95th-percentile boundary distance (lower is better)."),
    ("Relative Dice", "synthetic-only Dice over real-only Dice: 1.0 means the cohort served as well as the real data. "
                      "With fully trained GANs (Skandarani et al., Table 2: a U-Net on 10,000 synthetic images, three "
                      "datasets) it ran from 0.19 to 0.99 by family and dataset: SPADE and StyleGAN 0.50-0.99, DCGAN, "
                      "LSGAN, WGAN and hinge 0.19-0.87."),
    ("Memorization", "the share of synthetic images the audit flags as near-copies of a training image (lower is safer); "
                     "the release gate withheld such draws before the cohort was written."),
)
SMALL_STEPS, SMALL_SAMPLES = 2000, 500


def _caveats(results: Mapping[str, Any]) -> list[str]:
    out = []
    generator = results.get("generator") or {}
    if (generator.get("steps_done") or 0) < SMALL_STEPS:
        out.append(f"the generator trained for {_fmt(generator.get('steps_done'))} steps (far from converged below about {SMALL_STEPS}).")
    used = (results.get("samples") or {}).get("synthetic_used") or 0
    if used < SMALL_SAMPLES:
        out.append(f"{used} synthetic images were scored (FID and KID are biased on small samples).")
    for row in results.get("utility", []):
        steps = row.get("steps")
        if steps is not None and steps < SMALL_STEPS:
            out.append(f"the {row['source']} segmenter trained for {steps} steps.")
    return out


def _ci(summary: Mapping[str, Any] | None) -> str:
    """``mean [ci_low, ci_high] (n=…)`` of a bootstrap summary."""
    if not summary or summary.get("mean") is None:
        return "–"
    return f"{_fmt(summary['mean'])} [{_fmt(summary.get('ci_low'))}, {_fmt(summary.get('ci_high'))}] (n={_fmt(summary.get('n'))})"


def _baseline_cells(r: Mapping[str, Any]) -> dict[str, Any]:
    """A fidelity row's baseline columns: held-out patients against training images at n a side (now),
    two halves of the training images (reports written before), or why there is none."""
    if "baseline_n" in r:
        return {"real vs real (held-out vs training)": r["real_baseline"],
                "synthetic vs training, same n": r.get("value_at_baseline_counts"),
                "n a side / training": f"{r['baseline_n']} / {r['baseline_n_train']} (held-out available {r['baseline_n_heldout_available']})"}
    if "baseline_n_a" in r:  # a report from before held-out baselines: two halves of the training images
        return {"real vs real (held-out vs training)": f"{_fmt(r.get('real_baseline'))} (training half A vs half B: no held-out patients)",
                "synthetic vs training, same n": r.get("value_at_baseline_counts"),
                "n a side / training": f"A {r['baseline_n_a']} / B {r['baseline_n_b']} ({r.get('baseline_split', '')})"}
    return {"real vs real (held-out vs training)": r.get("baseline_missing") or r.get("baseline_split") or "–",
            "synthetic vs training, same n": None, "n a side / training": "–"}


def _fidelity_section(rows: Sequence[Mapping[str, Any]], results: Mapping[str, Any] | None = None) -> str:
    results = results or {}
    table = _table([{
        "metric": r["metric"].upper(), "extractor": r["extractor"],
        "synthetic vs real": r["value"], "n real / synthetic": f"{r['n_real']} / {r['n_fake']}",
        **_baseline_cells(r),
    } for r in rows])  # fmt: skip
    preprocessing = sorted({(r["extractor"], r["preprocessing"]) for r in rows})
    notes = "".join(f"<li>{html.escape(e)}: preprocessing {html.escape(p)}</li>" for e, p in preprocessing)
    plan = results.get("real_baseline")
    if isinstance(plan, Mapping):
        held = (f"<p>Held-out images: {html.escape(str(plan['heldout']))}.</p>" if plan.get("heldout") else "") + (
            f"<p class='caveat'>{html.escape(plan['missing'])}.</p>" if plan.get("missing") else "")
        text = ("<p>The baseline scores real images of patients neither the generator nor the extractor saw (the view's "
                "validation and test patients) against the training images, through the same extractor: what a perfect "
                "generator of new patients would score. FID and KID depend on the sample counts, so it is computed at n = "
                "min(synthetic used, held-out available) images a side, and the synthetic images are scored at that same n "
                "against the same training images: compare those two numbers, not the baseline with the score on all "
                "images.</p>" + held)
    else:  # reports from before held-out baselines
        text = ("<p>The baseline scores two disjoint halves A and B of the real training images (by patient where known) "
                "through the same extractor. An in-domain extractor was trained on those images, so this baseline is lower "
                "than a generator of new patients could reach; compare the synthetic score at the same counts with it.</p>")
    return f"{table}{text}<ul>{notes}</ul>{_extractor_section(results)}{_inception_section(results.get('inception_score'))}"


def _extractor_section(results: Mapping[str, Any]) -> str:
    """The yardstick: the reference extractor's recipe and hash (reports from before: not recorded)."""
    if "reference_extractor" not in results:
        return ""
    ref = results["reference_extractor"]
    if not ref:
        return "<h3>Reference extractor</h3><p>No in-domain reference extractor (no real-only segmentation run was given).</p>"
    fields = ("run_id", "chosen", "dataset", "view_id", "model", "seed", "steps", "stopped_step", "best_step", "stop_reason",
              "augment", "batch_size", "dim", "layer", "sha256")
    return ("<h3>Reference extractor</h3><p>FID, KID, precision/recall, the diversity check's feature space and the t-SNE map "
            "are measured through this encoder; only scores from the same extractor (the same SHA-256) compare.</p>"
            + _kv_table({k: ref.get(k) for k in fields if k in ref}))


def _inception_section(score: Mapping[str, Any] | None) -> str:
    if not score:
        return ""
    if score.get("value") is None:
        return f"<h3>Inception Score</h3><p>Not computed: {html.escape(str(score.get('not_computed', '')))}.</p>"
    return (f"<h3>Inception Score</h3><p>IS = <b>{_fmt(score['value'])}</b> ± {_fmt(score.get('std'))} (mean ± std over "
            f"{score['splits']} splits of {score['n']} synthetic images; {html.escape(score['extractor'])}). "
            f"{html.escape(score.get('reading', ''))}.</p>")


def _manifold_section(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p>Too few images on one side for k-nearest-neighbour manifolds.</p>"
    table = _table([{"metric": r["metric"], "value": r["value"], "k": r["k"], "extractor": r["extractor"],
                     "n real / synthetic": f"{r['n_real']} / {r['n_fake']}"} for r in rows])
    return (f"{table}<p>Each image's neighbourhood reaches its k-th nearest neighbour in the same set. <b>Precision</b>: the "
            "share of synthetic images inside the real images' neighbourhoods (realism; 1 is best). <b>Recall</b>: the share "
            "of real images inside the synthetic ones' (variety covered; 1 is best). <b>Density</b>: how many real "
            "neighbourhoods hold a synthetic image, over k (about 1 when both come from one distribution). "
            "<b>Coverage</b>: the share of real neighbourhoods holding at least one synthetic image (1 is best). "
            "Kynkäänniemi et al. 2019; Naeem et al. 2020.</p>")


def _samples_used(samples: Mapping[str, Any] | None) -> str:
    if not samples:
        return ""
    return (f"<p>Images used: real {_fmt(samples['real_used'])} of {_fmt(samples['real_available'])} (training split), "
            f"synthetic {_fmt(samples['synthetic_used'])} of {_fmt(samples['synthetic_available'])} "
            f"({_fmt(samples.get('selection', ''))}).</p>")


def _diversity_section(div: Mapping[str, Any] | None) -> str:
    if not div:
        return "<p>(not computed)</p>"
    rows = []
    for space in ("pixel", "feature"):
        d = div.get(space)
        if d:
            rows.append({"space": space, "distance": d["distance"] + (f" ({d['extractor']})" if d.get("extractor") else ""),
                         "synthetic": d["synthetic"], "real": d["real"], "ratio synthetic / real": d["ratio"],
                         "real half A / half B": d.get("real_baseline_ratio"),
                         "n synthetic / real": f"{d['n_synthetic']} / {d['n_real']}"})  # fmt: skip
    warning = f"<p class='warn'>{html.escape(div['warning'])}</p>" if div.get("warning") else "<p>no mode-collapse warning.</p>"
    return (f"{warning}{_table(rows)}<p>Mean distance over all pairs of images within each set. Rule: "
            f"{html.escape(str(div.get('rule', '')))} (a collapsed cohort's images are far more alike than real images; "
            "two halves of the real data score about 1).</p>")


def _utility_section(rows: Sequence[Mapping[str, Any]], relative: Any) -> str:
    classes = sorted({c for r in rows for c in r.get("dice_per_class", {})}, key=int)
    units = sorted({r.get("hd95_unit", "px") for r in rows})
    unit = units[0] if len(units) == 1 else "/".join(units)
    table = _table([{
        "source": r["source"], "mean Dice [95% CI]": f"{_fmt(r['mean_dice'])} [{_fmt(r['dice_ci_low'])}, {_fmt(r['dice_ci_high'])}]",
        **{f"Dice class {c}": (r.get("dice_per_class", {}).get(c) or {}).get("mean") for c in classes},
        f"mean HD95 ({unit})": r["mean_hd95"],
        **{f"HD95 class {c} ({unit})": (r.get("hd95_per_class", {}).get(c) or {}).get("mean") for c in classes},
        "n cases": r["n_cases"],
        "best val Dice (step)": f"{_fmt(r.get('best_val_dice'))} ({_fmt(r.get('best_step'))})",
    } for r in rows])  # fmt: skip
    per_class = _table([{
        "source": r["source"], "class": c, "Dice mean [95% CI]": _ci(r["dice_per_class"][c]),
        f"HD95 mean [95% CI] ({r.get('hd95_unit', 'px')})": _ci(r.get("hd95_per_class", {}).get(c)),
    } for r in rows for c in sorted(r.get("dice_per_class", {}), key=int)])  # fmt: skip
    note = ("HD95 in view pixels (px): the physical spacing of these test images was not known."
            if "px" in units else "HD95 in millimetres, from each test slice's source-scan spacing scaled by the view's resize.")
    return (f"{table}<p>relative Dice (synthetic-only / real-only): <b>{_fmt(relative)}</b>. {html.escape(note)}</p>"
            f"<h3>Dice and HD95 per class</h3>{per_class}")


def _validation_curves(curves: Mapping[str, Mapping[str, Any]] | None) -> str:
    if not curves:
        return "<p>(no segmentation runs)</p>"
    series = {source: list(zip(c.get("val_step", []), c.get("val_dice", []))) for source, c in curves.items()}
    best = ", ".join(f"{html.escape(s)}: best {_fmt(c.get('best_val_dice'))} at step {_fmt(c.get('best_step'))}" for s, c in curves.items())
    return (curve_svg(series, y_range=(0.0, 1.0), markers=True, x_label="step", y_label="val Dice")
            + f"<p>Pooled mean foreground Dice on the real validation patients during training; the weights of the best "
            f"step are kept ({best}).</p>")


def _release_section(release: Mapping[str, Any] | None) -> str:
    """What the cohort's release gate did: policy, draws, flagged and withheld, thresholds and how set."""
    if not release:
        return "<p>This cohort was written before the release gate: it was not audited at sampling.</p>"
    row = {k: release.get(k) for k in ("policy", "draws", "released", "flagged", "flagged_by_image", "flagged_by_mask",
                                         "fraction_flagged", "released_flagged") if k in release}  # fmt: skip
    row |= {"withheld": len(release.get("withheld", []))}
    row |= {f"{space} threshold": value for space, value in release["thresholds"].items() if space != "how"}
    if "audits" in release:  # the search for copies in disguise: what it searched and how
        spaces = "; ".join(f"{name}: {a['preparation']}" for name, a in release["audits"].items() if "preparation" in a)
        search = next(iter(release["audits"].values())).get("search", "")
        how = f"Compared as {spaces}. Searched: {search}."
    else:  # manifests from before: pixel and low-pass spaces, flips only
        how = f"Spaces: {'; '.join(release['spaces'].values())}."
    return (_kv_table(row) + f"<p>Rule: {html.escape(release['rule'])}; thresholds: {html.escape(release['thresholds']['how'])}. "
            f"{html.escape(how)}</p>")


def render_html(results: Mapping[str, Any], figures: Mapping[str, bytes], curves: Mapping[str, Sequence[tuple[float, float]]]) -> str:
    """The report page. ``results`` is the JSON report; ``figures`` PNGs by name (``synthetic``,
    ``real``, ``memorization``, ``release``); ``curves`` the generator's named (step, value) series."""
    title = f"medsynth evaluation {results.get('evaluation_id', '')}"
    diversity = results.get("diversity") or {}
    caveats = _caveats(results)
    withheld = results.get("training_data_withheld")
    if withheld:
        figures = {k: v for k, v in figures.items() if k not in TRAINING_FIGURES}
    note = f"<p class='caveat'>{html.escape(withheld)}</p>" if withheld else ""
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        note,
        f"<p class='warn'>{html.escape(diversity['warning'])}</p>" if diversity.get("warning") else "",
        f"<p>cohort <b>{_fmt(results.get('cohort_id'))}</b> from generator <b>{_fmt(results.get('generator_id'))}</b>, "
        f"dataset <b>{_fmt(results.get('dataset'))}</b> v{_fmt(results.get('dataset_version'))}: how faithful the synthetic "
        "images are, how useful for training a segmenter, and whether they copy training images.</p>",
        (f"<p class='caveat'><b>Too small for conclusions:</b> {html.escape(' '.join(caveats))} Read the numbers as a check "
         "of the pipeline.</p>" if caveats else ""),
        "<h2>What the numbers mean</h2><dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in EXPLAINED) + "</dl>",
        "<h2>Generator</h2>",
        _generator_section(results.get("generator") or {}),
        "<h2>Samples</h2><div class='pair'>",
        f"<figure>{_img(figures['synthetic'], 'synthetic samples')}<figcaption>synthetic</figcaption></figure>" if "synthetic" in figures else "",
        f"<figure>{_img(figures['real'], 'real samples')}<figcaption>real (training split)</figcaption></figure>" if "real" in figures else "",
        "</div>",
        note,
        "<h2>Fidelity</h2>",
        _samples_used(results.get("samples")),
        _fidelity_section(results.get("fidelity", []), results),
        "<h3>Precision, recall, density, coverage</h3>",
        _manifold_section(results.get("manifold", [])),
        "<h3>Real and synthetic features in 2D</h3>",
        embedding_figure(results.get("embedding")),
        "<h2>Diversity</h2>",
        _diversity_section(diversity),
        "<h2>Utility (segmentation on held-out real patients)</h2>",
        _utility_section(results.get("utility", []), results.get("relative_dice", float("nan"))),
        "<h2>Segmenter validation curves</h2>",
        _validation_curves(results.get("segmentation_curves")),
        "<h2>Memorization audit</h2>",
        _kv_table({k: v for k, v in results.get("memorization", {}).items() if not isinstance(v, (list, dict))}),
        nn_histogram_svg(results.get("memorization", {}).get("nn_distances")),
        f"<figure>{_img(figures['memorization'], 'closest pairs')}<figcaption>closest synthetic (left) / training (right) pairs</figcaption></figure>"
        if "memorization" in figures else note,
        "<h2>Release gate (memorization audit at sampling)</h2>",
        _release_section(results.get("release")),
        f"<figure>{_img(figures['release'], 'closest pairs at release')}<figcaption>the draws closest to a training image: "
        "synthetic (left) beside its nearest training image, flipped as it matched (right); where the mask matched closer, the two masks</figcaption></figure>"
        if "release" in figures else note,
        "<h2>Training curves</h2>",
        curve_svg(curves),
        "<h2>Raw numbers</h2>",
        f"<details><summary>every number of this report as JSON (also report.json)</summary>"
        f"<pre>{html.escape(json.dumps(results, indent=2, default=str))}</pre></details>",
    ]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}table{border-collapse:collapse}"
             ".caveat{background:#fff4e0;border-left:4px solid #e0a000;padding:.5em 1em}table.kv th{text-align:left;background:#f4f4f4}"
             "dl dt{font-weight:bold;margin-top:.4em}img{max-width:100%}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}.pair{display:flex;gap:1em}"
             ".warn{background:#fdecea;border:1px solid #c0392b;padding:.5em 1em;font-weight:bold}"
             "pre{font-size:11px;background:#f6f6f6;padding:1em;overflow:auto}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>{''.join(sections)}</body></html>"
