"""The study report: one HTML page that opens with no server, written for a hospital data team.

Each number is explained once (what it measures, which way is better, what to read it against), the
study's settings are shown, and a caveat says when they are too small for conclusions. Figures are
inline SVG: Dice against the synthetic share of training batches and against the number of
synthetic patients added, with intervals, and the critical-difference diagram of the families.
"""

from __future__ import annotations

import base64
from html import escape
from typing import Any

import numpy as np

from medsynth.metrics.report import SMALL_SAMPLES, SMALL_STEPS, TRAINING_FIGURES, embedding_figure
from medsynth.metrics.statistics import cd_diagram_svg

#: Below these (and the evaluation report's step and sample counts), the report says the numbers
#: check the pipeline rather than answer the question.
SMALL = {"seeds": 3, "segmentation_steps": SMALL_STEPS, "cohort_size": SMALL_SAMPLES}

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:.92em;width:100%}
th,td{border-bottom:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f4f4f4} td.n{text-align:right;font-variant-numeric:tabular-nums}
.caveat{background:#fff4e0;border-left:4px solid #e0a000;padding:.6em 1em}
.failed{background:#fde8e8;border-left:4px solid #c33;padding:.6em 1em}
dl dt{font-weight:600;margin-top:.5em} dl dd{margin-left:1.2em}
figure{margin:1em 0} figcaption{font-size:.9em;color:#555}
"""

EXPLAINED = [
    ("Dice", "overlap between the segmenter's prediction and the expert mask on held-out real patients, averaged over the "
             "foreground classes: 0 is no overlap, 1 perfect. Higher is better. Read it against the real-data-only arm."),
    ("HD95", "the 95th percentile of the distance between predicted and true mask boundaries (in mm when the scans' "
             "spacing is known, else pixels). Lower is better."),
    ("Relative Dice", "an arm's Dice divided by the Dice of real data only with the same segmenter and augmentation: "
                      "1.0 means the synthetic data served as well as the real data. Synthetic only, with fully trained "
                      "GANs, it ran from 0.19 to 0.99 by family and dataset (Skandarani et al., Table 2: SPADE and "
                      "StyleGAN 0.50-0.99, DCGAN, LSGAN, WGAN and hinge 0.19-0.87); added to real data, synthetic images "
                      "rarely helped (Vu et al.: significant gains on two of six datasets)."),
    ("95% interval", "a two-level bootstrap: seeds resampled, then test patients, so the interval holds both the "
                     "randomness of training and the choice of test patients."),
    ("Paired test", "each arm against real data only with the same segmenter and augmentation, on the same test patients. "
                    "Per seed: Wilcoxon signed-rank over the patients of that training run (exact p). Pooled, and deciding: "
                    "a two-level test over seeds × patients (Dorfman–Berbaum–Metz with Hillis's degrees of freedom) that counts "
                    "the spread between training runs as well as between patients, so a difference one run happened to "
                    "produce is not taken as evidence many times over; with one seed, that seed's Wilcoxon decides. The "
                    "deciding p-values are Holm-corrected for the number of arms compared. Small p: the difference is "
                    "unlikely to be chance."),
    ("Friedman / Nemenyi", "the families ranked within each seed × segmenter × augmentation block by synthetic-only Dice "
                           "(rank 1 best). The p that decides is exact (every within-block ranking enumerated) where that is "
                           "possible, a permutation p for other small numbers of blocks, else Iman–Davenport's F; Friedman's "
                           "χ² approximation is shown beside it (it is too conservative with few blocks). Families whose "
                           "average ranks differ by less than the critical difference (CD) cannot be told apart at α = 0.05; "
                           "the diagram joins them with a bar."),
    ("Missing p-values", "a test asked to decide on too few cases gives no p-value and says why (for example, with 3 "
                         "generators the smallest p Spearman's exact test can reach is 1/3, so no correlation over 3 can be "
                         "significant). A warning marks results that rest on fewer than 5 seeds."),
    ("FID", "Fréchet distance between the features of real and synthetic images (extractor named): 0 for identical "
            "distributions, lower is better; read the FID at the baseline's n against the real-versus-real baseline "
            "(held-out patients' images against the training images at the same n: what a perfect generator of new "
            "patients would score). Only FIDs through one extractor compare: the line below the table names it. FID and "
            "Dice need not agree (seed 000): the rank correlation says whether they did here."),
    ("Precision / recall / density / coverage", "in the same feature space as FID: precision is the share of synthetic "
     "images that fall among real ones (realism), recall the share of real images that fall among synthetic ones "
     "(variety); coverage the share of real neighbourhoods holding a synthetic image; density about 1 when the two "
     "match. Higher is better for precision, recall and coverage (at most 1)."),
    ("Memorized", "the fraction of synthetic samples the audit flagged as near-copies of a training image. Lower is safer."),
]


def _num(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _p(value: Any) -> str:
    """A p-value as text: four decimals, small ones in scientific notation (never a bare 0.0000)."""
    if value is None:
        return "–"
    return f"{value:.4f}" if value >= 1e-3 else f"{value:.1e}"


def _why(result: dict[str, Any] | None) -> str:
    """The reason a result has no p-value, as a sentence fragment (empty when it has one)."""
    if not result:
        return ""
    return result.get("refused") or result.get("skipped") or ""


def _warnings(items: list[str]) -> str:
    unique = list(dict.fromkeys(w for w in items if w))
    return "".join(f"<div class=caveat><strong>Warning:</strong> {escape(w)}</div>" for w in unique)


def _interval(summary: dict[str, Any] | None, digits: int = 3) -> str:
    if not summary or summary.get("mean") is None:
        return "–"
    return f"{summary['mean']:.{digits}f} [{_num(summary.get('ci_low'), digits)}, {_num(summary.get('ci_high'), digits)}]"


def _caveats(spec: dict[str, Any]) -> list[str]:
    out = []
    if len(spec["seeds"]) < SMALL["seeds"]:
        out.append(f"{len(spec['seeds'])} seed(s): intervals over seeds need at least {SMALL['seeds']}.")
    if spec["segmentation"]["steps"] < SMALL["segmentation_steps"]:
        capped = "capped at" if spec["segmentation"].get("early_stopping") else "trained for"
        out.append(f"segmenters {capped} {spec['segmentation']['steps']} steps (far from converged below about "
                   f"{SMALL['segmentation_steps']}).")
    if spec["cohort_size"] < SMALL["cohort_size"]:
        out.append(f"cohorts of {spec['cohort_size']} samples (FID is biased upwards on small samples).")
    steps = {f.get("label") or f["generator"]["family"]: f["training"].get("steps") for f in spec["families"]}
    out += [f"generator {name} trained for {n} steps only." for name, n in steps.items() if n is not None and n < SMALL_STEPS]
    return out


def _training_rule(seg: dict[str, Any]) -> str:
    """How every segmenter trained (studies before early stopping have no ``early_stopping``: fixed steps)."""
    if not seg.get("early_stopping"):
        return f"{seg['steps']} steps each"
    patience = seg.get("patience") or 5  # medsynth.segmentation.config.DEFAULT_PATIENCE
    every = f"every {seg['val_every']} steps" if seg.get("val_every") else "at the default interval"
    return (f"every arm early-stopped at its validation plateau ({patience} checks without gain, checked {every}), "
            f"at most {seg['steps']} steps, best-validation weights tested")


def _settings(spec: dict[str, Any]) -> str:
    families = ", ".join(escape(f.get("label") or f["generator"]["family"]) for f in spec["families"])
    rows = [("Dataset / view", f"{escape(spec['dataset'])} / {escape(spec['view_id'])}"), ("Families", families),
            ("Seeds", ", ".join(map(str, spec["seeds"]))),
            ("Segmenters", ", ".join(spec["segmentation"]["models"]) + f"; {_training_rule(spec['segmentation'])}, batch "
             f"{spec['segmentation']['batch_size']}"),
            ("Arms", "real only" + (", synthetic only" if spec["arms"]["synthetic"] else "")
             + "".join(f", real + synthetic at {r:g}" for r in spec["arms"]["ratios"])
             + "".join(f", real + {n} synthetic patients" for n in spec["arms"].get("synthetic_patients", []))
             + "; augmentation " + " and ".join("on" if a else "off" for a in spec["arms"]["augmentation"])),
            ("Cohort size", str(spec["cohort_size"]))]
    return "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _arms_table(arms: list[dict[str, Any]]) -> str:
    head = ("<tr><th>Arm</th><th>Dice [95% CI]</th><th>HD95 [95% CI]</th><th>Relative Dice</th>"
            "<th>Seeds</th><th>Test patients</th></tr>")
    rows = []
    for a in arms:
        failed = len(a.get("seeds_failed", []))
        seeds = f"{a['seeds_succeeded']}" + (f" ({failed} failed)" if failed else "")
        unit = f" {a['hd95_unit']}" if a.get("hd95_unit") else ""
        rows.append(f"<tr><td>{escape(a['arm_id'])}</td><td class=n>{_interval(a.get('dice'))}</td>"
                    f"<td class=n>{_interval(a.get('hd95'), 2)}{escape(unit)}</td><td class=n>{_num(a.get('relative_dice'))}</td>"
                    f"<td class=n>{seeds}</td><td class=n>{(a.get('dice') or {}).get('n_patients', '–')}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _per_seed(row: dict[str, Any]) -> str:
    tests = row.get("per_seed")
    if tests is None:
        return "–"
    return "<br>".join(f"seed {escape(str(t['seed']))}: " + (_p(t["p"]) if t.get("p") is not None else f"– ({escape(_why(t))})")
                       for t in tests) or "–"


def _pooled(row: dict[str, Any]) -> str:
    pooled = row.get("pooled")
    if pooled is None:
        return "–"
    if pooled.get("p") is None:
        return f"– ({escape(_why(pooled))})"
    return f"{_p(pooled['p'])} (t = {pooled['statistic']:.2f}, {pooled['df']:.1f} df)"


def _comparisons_table(groups: list[dict[str, Any]]) -> str:
    parts = []
    for g in groups:
        title = f"{escape(g['model'])}, augmentation {'on' if g['augment'] else 'off'}"
        if "skipped" in g:
            parts.append(f"<p>{title}: {escape(g['skipped'])}.</p>")
            continue
        rows, warnings = [], []
        for r in g["rows"]:
            decided = r.get("decided_by") or "Wilcoxon on seed-averaged Dice"  # results written before per-seed tests
            note = escape(decided) + (f"; no p-value: {escape(_why(r))}" if r.get("p") is None and _why(r) else "")
            seeds = r.get("n_seeds")
            rows.append(f"<tr><td>{escape(r['a'])}</td><td class=n>{'–' if seeds is None else seeds}</td><td class=n>{r.get('n', '–')}</td>"
                        f"<td class=n>{_num(r.get('median_difference'))}</td><td class=n>{_per_seed(r)}</td><td class=n>{_pooled(r)}</td>"
                        f"<td class=n>{_p(r.get('p'))}</td><td class=n>{_p(r.get('p_holm'))}</td><td>{note}</td></tr>")
            warnings += r.get("warnings") or []
        parts.append(f"<h3>{title}: against {escape(g['against'])}</h3><table><tr><th>Arm</th><th>Seeds</th><th>Patients</th>"
                     "<th>Median Dice difference</th><th>Wilcoxon p per seed</th><th>Pooled p (seeds × patients)</th>"
                     f"<th>p (deciding)</th><th>p (Holm)</th><th>Decided by</th></tr>{''.join(rows)}</table>{_warnings(warnings)}")
    return "".join(parts)


def _friedman_section(friedman: dict[str, Any]) -> str:
    if "skipped" in friedman:
        return f"<p>{escape(friedman['skipped'])}.</p>"
    chi2_p = friedman.get("p_chi2", friedman.get("p") if "decided_by" not in friedman else None)  # older results: p was χ²'s
    rows = [("Friedman χ² (approximation)", f"χ² = {_num(friedman.get('statistic'), 2)}", _p(chi2_p), friedman.get("decided_by") is None and "p_chi2" not in friedman)]
    if "iman_davenport_f" in friedman:
        df = friedman.get("iman_davenport_df") or ["?", "?"]
        if friedman.get("p_iman_davenport") is not None:
            id_p = _p(friedman["p_iman_davenport"])
        elif friedman.get("iman_davenport_f") is None and friedman.get("statistic") is not None and friedman.get("n_blocks", 0) > 1:
            id_p = "– (F unbounded: every block ranks the families alike)"
        else:
            id_p = "–"
        rows.append((f"Iman–Davenport F ({df[0]}, {df[1]} df)", f"F = {_num(friedman.get('iman_davenport_f'), 2)}", id_p,
                     friedman.get("decided_by") == "iman-davenport"))
    if friedman.get("p_exact") is not None or friedman.get("decided_by") == "exact":
        rows.append(("exact permutation", "", _p(friedman.get("p_exact")), friedman.get("decided_by") == "exact"))
    if friedman.get("p_permutation") is not None:
        rows.append((f"Monte Carlo permutation ({friedman.get('n_resamples')} resamples)", "", _p(friedman["p_permutation"]),
                     friedman.get("decided_by") == "permutation"))
    verdict = "cannot decide: see below" if friedman.get("refused") else "decides"
    body = "".join(f"<tr><td>{escape(name)}</td><td class=n>{escape(stat)}</td><td class=n>{escape(p)}</td><td>{verdict if decides else ''}</td></tr>"
                   for name, stat, p, decides in rows)
    out = [f"<p>{friedman['n_blocks']} blocks, {friedman.get('n_methods', len(friedman['average_ranks']))} families; "
           f"Nemenyi CD = {friedman['critical_difference']:.2f}.</p>",
           f"<table><tr><th>Test</th><th>Statistic</th><th>p</th><th></th></tr>{body}</table>"]
    if friedman.get("refused"):
        out.append(f"<p><strong>No p-value decides:</strong> {escape(friedman['refused'])}.</p>")
    out.append(_warnings(friedman.get("warnings") or []))
    out.append(f"<figure>{cd_diagram_svg(friedman)}<figcaption>Average rank of each family by synthetic-only Dice (1 = best); a bar "
               "joins families that do not differ significantly.</figcaption></figure>")
    return "".join(out)


def _correlation(corr: dict[str, Any]) -> str:
    if "skipped" in corr:
        return escape(corr["skipped"])
    rho = "ρ undefined" if corr.get("rho") is None else f"Spearman ρ = {corr['rho']:.2f}"
    if corr.get("p") is None:
        p = f"no p-value: {escape(_why(corr) or 'not computed')}"
    else:
        p = f"p = {_p(corr['p'])}" + (f", {escape(corr['p_method'])}" if corr.get("p_method") else "")
    return f"{rho} ({p}; n = {corr['n']}); {escape(corr['reading'])}"


def _share(arm: dict[str, Any]) -> float | None:
    """The synthetic share of training batches: 0 real only, r for mixed r, 1 synthetic only."""
    if arm["arm"] == "real":
        return 0.0
    return 1.0 if arm["arm"] == "synthetic" else arm.get("ratio")


def _patients(arm: dict[str, Any]) -> float | None:
    return 0.0 if arm["arm"] == "real" else arm.get("synthetic_patients")


def _dice_plot(arms: list[dict[str, Any]], x_of, x_label: str, width: int = 640, height: int = 320) -> str:
    """Mean Dice against ``x_of(arm)``, one line per family and segmenter (each starting from real data
    only at x = 0), every point with its 95% interval; empty when no arm has an x."""
    series: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    reals = {(a["model"], a["augment"]): a for a in arms if a["arm"] == "real" and a.get("dice")}
    for a in arms:
        x = x_of(a)
        if a["arm"] == "real" or x is None or not a.get("dice") or a["dice"].get("mean") is None:
            continue
        name = f"{a['family']} · {a['model']} · aug {'on' if a['augment'] else 'off'}"
        points = series.setdefault(name, [])
        real = reals.get((a["model"], a["augment"]))
        if real is not None and not any(p[0] == 0.0 for p in points):
            points.append((0.0, real["dice"]))
        points.append((float(x), a["dice"]))
    if not series:
        return ""
    x_max = max(x for points in series.values() for x, _ in points) or 1.0
    left, right, top, bottom = 50, 200, 15, 40
    px = lambda x: left + x / x_max * (width - left - right)  # noqa: E731
    py = lambda y: top + (1 - y) * (height - top - bottom)  # noqa: E731
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
           f'<line x1="{left}" y1="{py(0)}" x2="{px(x_max)}" y2="{py(0)}" stroke="black"/>'
           f'<line x1="{left}" y1="{py(0)}" x2="{left}" y2="{py(1)}" stroke="black"/>']
    ticks = sorted({x for points in series.values() for x, _ in points})
    for t in ticks:
        out.append(f'<text x="{px(t)}" y="{py(0) + 14}" text-anchor="middle">{t:g}</text>')
    for t in (0, 0.25, 0.5, 0.75, 1):
        out.append(f'<text x="{left - 6}" y="{py(t) + 4}" text-anchor="end">{t:g}</text>')
    out.append(f'<text x="{(left + px(x_max)) / 2}" y="{height - 6}" text-anchor="middle">{escape(x_label)}</text>')
    for i, (name, points) in enumerate(sorted(series.items())):
        colour = colours[i % len(colours)]
        points.sort(key=lambda p: p[0])
        path = " ".join(f"{px(x)},{py(d['mean'])}" for x, d in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        for x, d in points:
            lo, hi = d.get("ci_low"), d.get("ci_high")
            if lo is not None and hi is not None:
                out.append(f'<line x1="{px(x)}" y1="{py(lo)}" x2="{px(x)}" y2="{py(hi)}" stroke="{colour}"/>')
            out.append(f'<circle cx="{px(x)}" cy="{py(d["mean"])}" r="3" fill="{colour}"/>')
        out.append(f'<text x="{px(x_max) + 10}" y="{top + 14 * i + 10}" fill="{colour}">{escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def _generators_table(generators: list[dict[str, Any]]) -> str:
    if not generators:
        return "<p>No cohort was evaluated.</p>"
    rows = "".join(
        f"<tr><td>{escape(g['family'])}</td><td class=n>{g['seed']}</td><td class=n>{_num(g['fid'])}</td>"
        f"<td class=n>{_num(g.get('fid_at_baseline_n'))}</td>"
        f"<td class=n>{_num(g['fid_real_baseline'])}{'' if g.get('baseline_n') is None else ' (n ' + str(g['baseline_n']) + ')'}</td>"
        f"<td class=n>{_num(g['kid'], 4)}</td>"
        + "".join(f"<td class=n>{_num(g.get(m))}</td>" for m in ("precision", "recall", "density", "coverage")) +
        f"<td class=n>{_diversity_cell(g)}</td>"
        f"<td class=n>{_num(None if g['memorized_fraction'] is None else 100 * g['memorized_fraction'], 1)} %</td>"
        f"<td>{escape(str(g['extractor']))}; {g['n_real']} real / {g['n_fake']} synthetic</td></tr>" for g in generators)
    warnings = [f"{g['family']} seed {g['seed']}: {g['diversity_warning']}" for g in generators if g.get("diversity_warning")]
    return ("<table><tr><th>Family</th><th>Seed</th><th>FID</th><th>FID at baseline n</th><th>FID real vs real</th><th>KID</th><th>Precision</th>"
            "<th>Recall</th><th>Density</th><th>Coverage</th><th>Diversity (real halves)</th><th>Memorized</th>"
            f"<th>Extractor, samples</th></tr>{rows}</table>" + _warnings(warnings))


def _diversity_cell(g: dict[str, Any]) -> str:
    """The mode-collapse check: synthetic/real diversity ratio (about 1 healthy, below 0.5 collapse), the
    real data's own half/half ratio in brackets, and a flag when the check warned."""
    if g.get("diversity_ratio") is None:
        return "–"
    real = "" if g.get("diversity_real_ratio") is None else f" ({_num(g['diversity_real_ratio'], 2)})"
    return f"{_num(g['diversity_ratio'], 2)}{real}{' collapse?' if g.get('mode_collapse') else ''}"


def _fid_dice_plot(points: list[dict[str, Any]], width: int = 640, height: int = 320) -> str:
    """Synthetic-only Dice against FID, one dot per family and seed (colour by family); empty without points."""
    points = [p for p in points if p.get("fid") is not None and p.get("dice") is not None]
    if not points:
        return ""
    left, right, top, bottom = 50, 200, 15, 40
    x_max = max(p["fid"] for p in points) * 1.05 or 1.0
    px = lambda x: left + x / x_max * (width - left - right)  # noqa: E731
    py = lambda y: top + (1 - y) * (height - top - bottom)  # noqa: E731
    families = sorted({p["family"] for p in points})
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11" '
           f'role="img" aria-label="synthetic-only Dice against FID per family and seed">',
           f'<line x1="{left}" y1="{py(0)}" x2="{px(x_max)}" y2="{py(0)}" stroke="black"/>'
           f'<line x1="{left}" y1="{py(0)}" x2="{left}" y2="{py(1)}" stroke="black"/>']
    for t in (0, 0.25, 0.5, 0.75, 1):
        out.append(f'<text x="{left - 6}" y="{py(t) + 4}" text-anchor="end">{t:g}</text>')
    for t in np.linspace(0, x_max, 5):
        out.append(f'<text x="{px(t)}" y="{py(0) + 14}" text-anchor="middle">{t:.3g}</text>')
    out.append(f'<text x="{(left + px(x_max)) / 2}" y="{height - 6}" text-anchor="middle">FID (lower is better)</text>')
    for i, family in enumerate(families):
        colour = colours[i % len(colours)]
        for p in points:
            if p["family"] == family:
                out.append(f'<circle cx="{px(p["fid"])}" cy="{py(p["dice"])}" r="4" fill="{colour}">'
                           f'<title>{escape(family)} seed {escape(str(p["seed"]))}: FID {p["fid"]:.3g}, Dice {p["dice"]:.3f}</title></circle>')
        out.append(f'<text x="{px(x_max) + 10}" y="{top + 14 * i + 10}" fill="{colour}">{escape(family)}</text>')
    out.append("</svg>")
    return "".join(out)


def _extractor_line(extractor: dict[str, Any] | None) -> str:
    """One line: the encoder every FID of the study went through (run, SHA-256), or that they differ."""
    if not extractor or not extractor.get("extractors"):
        return ""
    named = "; ".join(f"real-only run {escape(str(e['run_id']))} (SHA-256 {escape(str(e['sha256'] or 'not recorded'))})"
                      for e in extractor["extractors"])
    if extractor.get("comparable"):
        return f"<p>Extractor of every FID, KID and precision/recall above: the encoder of {named}.</p>"
    why = ("this study was recorded before one extractor per study: each seed was measured with its own real-only run"
           if extractor.get("rule") == "per-seed" else "the evaluations did not all record the same extractor")
    return f"<p class=caveat>Extractors differ ({escape(why)}), so FIDs compare only within one extractor: {named}.</p>"


def _rate(rate: dict[str, Any]) -> str:
    if rate.get("value") is None:
        return "–"
    return f"{rate['value']:.2f} [{rate['ci_low']:.2f}, {rate['ci_high']:.2f}] ({rate['successes']}/{rate['n']})"


def _reader_section(studies: list[dict[str, Any]]) -> str:
    if not studies:
        return ""
    parts = ["<h2>Visual Turing test</h2><p>Readers saw real and synthetic images one at a time, in an order of their own, "
             "and said which each was. <b>Accuracy</b> near 0.5 with an interval holding 0.5 means they could not tell; "
             "<b>sensitivity</b> is the share of synthetic images called synthetic, <b>specificity</b> the share of real images "
             "called real (exact binomial 95% intervals).</p>"]
    for rs in studies:
        rows = [(name, r) for name, r in sorted(rs["readers"].items())] + [("all readers", {**rs["pooled"], "answered": rs["pooled"]["answers"], "total": None})]
        body = "".join(f"<tr><td>{escape(name)}</td><td class=n>{r['answered']}{'' if r.get('total') is None else ' / ' + str(r['total'])}</td>"
                       f"<td class=n>{_rate(r['accuracy'])}</td><td class=n>{_rate(r['sensitivity'])}</td><td class=n>{_rate(r['specificity'])}</td></tr>"
                       for name, r in rows)
        parts.append(f"<h3>Cohort {escape(rs['cohort_id'])}: {rs['n_synthetic']} synthetic and {rs['n_real']} real images "
                     f"({escape(rs['real_source'])})</h3><table><tr><th>Reader</th><th>Answered</th><th>Accuracy</th>"
                     f"<th>Sensitivity</th><th>Specificity</th></tr>{body}</table>")
    return "".join(parts)


def _family_figures(results: dict[str, Any], figures: dict[str, dict[str, bytes]]) -> str:
    if not figures:
        return ""
    withheld = results.get("training_data_withheld")
    if withheld:
        parts = [f"<h2>Samples per family</h2><p>The first seed's cohort of each family: samples with their masks overlaid. "
                 f"{escape(withheld)}</p>"]
        figures = {family: {k: v for k, v in figs.items() if k not in TRAINING_FIGURES} for family, figs in figures.items()}
    else:
        parts = ["<h2>Samples and closest pairs per family</h2><p>The first seed's cohort of each family: samples with their "
                 "masks overlaid, and the synthetic images closest to a training image, each beside it (the cases are named "
                 "below each figure; a near-zero distance would be a copy).</p>"]
    first = {}
    for g in results.get("generators", []):
        first.setdefault(g["family"], g)
    for family, figs in figures.items():
        g = first.get(family, {})
        pairs = "; ".join(f"synthetic #{p['synthetic_sample']} ↔ training patient {escape(str(p['train_patient']))} "
                          f"(distance {_num(p['distance'])})" for p in g.get("closest_pairs", []))
        parts.append(f"<h3>{escape(family)} (seed {g.get('seed', '–')})</h3>")
        if g.get("embedding"):
            parts.append(embedding_figure(g["embedding"]))
        for name, caption in (("synthetic", "samples with masks"), ("memorization", "closest pairs: synthetic (left), training (right)")):
            if name in figs:
                data = base64.b64encode(figs[name]).decode()
                parts.append(f'<figure><img alt="{escape(family)} {caption}" style="max-width:100%" src="data:image/png;base64,{data}">'
                             f"<figcaption>{caption}{': ' + pairs if name == 'memorization' and pairs else ''}</figcaption></figure>")
    return "".join(parts)


def render_study_report(results: dict[str, Any], figures: dict[str, dict[str, bytes]] | None = None) -> str:
    spec = results["spec"]
    title = escape(results.get("name") or results["study_id"])
    caveats = _caveats(spec)
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>medsynth study {title}</title>"
             f"<style>{STYLE}</style></head><body><h1>Study {title}</h1>",
             f"<p>Which generator to trust for this data, how much its synthetic data helps a segmenter, and whether it "
             f"copies training images. Study <code>{escape(results['study_id'])}</code>, computed {escape(results['computed_at'])}.</p>"]
    if results.get("training_data_withheld"):
        parts.append(f"<div class=caveat>{escape(results['training_data_withheld'])}</div>")
    if caveats:
        parts.append("<div class=caveat><strong>Too small for conclusions:</strong> " + " ".join(map(escape, caveats))
                     + " Read the numbers as a check of the pipeline.</div>")
    if results["failed_arms"]:
        parts.append("<div class=failed><strong>Arms with no result:</strong> " + "; ".join(
            f"{escape(f['arm_id'])} ({escape(str(f['failures'][0]['error'] or f['failures'][0]['state']))})"
            for f in results["failed_arms"]) + ". The other arms are reported.</div>")
    parts += ["<h2>Settings</h2>", _settings(spec),
              "<h2>What the numbers mean</h2><dl>" + "".join(f"<dt>{k}</dt><dd>{escape(v)}</dd>" for k, v in EXPLAINED) + "</dl>",
              "<h2>Arms</h2>", _arms_table(results["arms"])]
    for plot, caption in (
        (_dice_plot(results["arms"], _share, "synthetic share of training batches (0: real only, 1: synthetic only)"),
         "Mean Dice on held-out real patients against the synthetic share of training batches, with 95% intervals."),
        (_dice_plot(results["arms"], _patients, "synthetic patients added to the real training data"),
         "Mean Dice on held-out real patients against the number of synthetic patients added to all the real data "
         "(seed 001's Figure 5), with 95% intervals."),
    ):
        if plot:
            parts.append(f"<figure>{plot}<figcaption>{caption}</figcaption></figure>")
    parts += ["<h2>Paired tests against real data only</h2>", _comparisons_table(results["comparisons"]), "<h2>Families compared</h2>"]
    parts.append(_friedman_section(results["friedman"]))
    parts += ["<h2>Generators: fidelity and memorization</h2>", _generators_table(results["generators"]),
              _extractor_line(results.get("fid_extractor"))]
    parts.append(_family_figures(results, figures or {}))
    corr = results["fid_vs_dice"]
    if plot := _fid_dice_plot(corr.get("points") or []):
        parts.append(f"<figure>{plot}<figcaption>Synthetic-only Dice on held-out real patients against FID, one dot per "
                     "family and seed: seed 000's question, whether a lower FID made a more useful cohort.</figcaption></figure>")
    parts.append("<p>FID against synthetic-only Dice across generators: " + _correlation(corr) + ".</p>"
                 + _warnings(corr.get("warnings") or []))
    parts.append(_reader_section(results.get("reader_studies") or []))
    parts.append("<p>Every number is also in <code>results.json</code> and, per arm and seed, <code>results.csv</code>.</p></body></html>")
    return "".join(parts)
