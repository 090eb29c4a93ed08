"""The sweep's report: fits per metric, PNG plots and a Markdown page with the numbers.

Metrics: held-out `loss` (both modalities), `loss_text`, `loss_image`, and the sample scores
named by `sweep.sample_metrics` (report.json's `t2i_accuracy`, the shape judge on generated
images: a small GenEval; `i2t_accuracy`, generated captions judged against the scene), each
fitted as its error, 1 - score, so that lower is better everywhere.
Validation loss and sample quality need not scale alike (Fluid, Fan et al. 2024), which is
why both are fitted. Writes OUT/fit.json, OUT/isoflop.png, OUT/frontier.png, OUT/law.png and
OUT/report.md.
"""
from __future__ import annotations

import json
import pathlib

from mmar.scaling import fit, plot

LOSSES = ("loss", "loss_text", "loss_image")
ERROR_FLOOR = 1e-3   # an error of 0 has no logarithm; a perfect score is read as 0.1%


def points_by_metric(results: list[dict], params: str, sample_metrics=()) -> dict:
    """{metric: [{budget, n, d, y}, ...]} from the runs that have that metric."""
    n_key = "params" if params == "total" else "non_embedding_params"
    out = {}
    names = list(LOSSES) + list(sample_metrics)
    for name in names:
        label = name if name in LOSSES else f"{name.replace('_accuracy', '')}_error"
        pts = []
        for r in results:
            if r.get(name) is None:
                continue
            y = r[name] if name in LOSSES else max(1.0 - r[name], ERROR_FLOOR)
            pts.append({"budget": r["budget"], "n": r[n_key], "d": r["tokens"], "y": float(y),
                        "run": r["name"]})
        if pts:
            out[label] = pts
    return out


def fit_all(points: dict, bootstrap: int) -> dict:
    fits = {}
    for name, pts in points.items():
        keys = ("n", "d", "y")
        n, d, y = ([p[k] for p in pts] for k in keys)
        law = fit.fit_law(n, d, y, bootstrap=bootstrap)
        fits[name] = {"isoflop": fit.fit_isoflop(pts, bootstrap=bootstrap), "law": law,
                      "allocation_from_law": fit.optimal_allocation(law["law"])}
    return fits


def _interval(f, key):
    iv = f["intervals"].get(key)
    return f" [{iv[0]:.3g}, {iv[1]:.3g}]" if iv else ""


def markdown(cfg, results: list[dict], fits: dict, n_label: str) -> str:
    s = cfg.sweep
    lines = [f"# Scaling sweep: `{cfg.preset}`", "",
             f"Budgets {', '.join(f'{c:.2g}' for c in s.budgets)} FLOPs; widths "
             f"{', '.join(map(str, s.widths))}; N = {n_label}; {len(results)} runs. "
             "Intervals: bootstrap 5-95% over resampled runs.", "",
             "## Runs", "",
             "| run | N total | N non-emb. | D tokens | steps | C | loss | loss_text | "
             "loss_image | " + "".join(f"{m} | " for m in s.sample_metrics) + "train s |",
             "| --- " + "| ---: " * (9 + len(s.sample_metrics)) + "|"]
    for r in results:
        def num(key, fmt="{:.3f}"):
            return fmt.format(r[key]) if r.get(key) is not None else "-"
        lines.append(f"| {r['name']} | {r['params']:,} | {r['non_embedding_params']:,} | "
                     f"{r['tokens']:,} | {r['steps']} | {r['flops']:.3g} | {num('loss')} | "
                     f"{num('loss_text')} | {num('loss_image')} | "
                     + "".join(f"{num(m)} | " for m in s.sample_metrics)
                     + f"{num('decoder_seconds', '{:.0f}')} |")
    lines += ["", "## Compute-optimal frontier (IsoFLOP minima)", "",
              "N_opt = k_N C^a, D_opt = k_D C^b; `edge` marks a minimum outside the sizes "
              "of its budget (extrapolated).", "",
              "| metric | minima (C: N_opt, D_opt, value) | a | b |",
              "| --- | --- | --- | --- |"]
    for name, f in fits.items():
        iso = f["isoflop"]
        minima = "; ".join(f"{m['budget']:.2g}: {m['n_opt']:.3g}, {m['d_opt']:.3g}, "
                           f"{m['value_opt']:.3f}{' edge' if m['at_edge'] else ''}"
                           for m in iso["minima"]) or "none (no convex profile)"
        law = iso["law"]
        a = f"{law['a']:.2f}{_interval(iso, 'a')}" if law else "-"
        b = f"{law['b']:.2f}{_interval(iso, 'b')}" if law else "-"
        lines.append(f"| {name} | {minima} | {a} | {b} |")
    lines += ["", "## Parametric law L(N, D) = E + A / N^alpha + B / D^beta", "",
              "Huber loss (delta 1e-3) on log residuals, L-BFGS-B from several starts. "
              "a = beta/(alpha+beta) and b = alpha/(alpha+beta) are the compute-optimal "
              "exponents the law implies for C proportional to N D.", "",
              "| metric | E | A | alpha | B | beta | a (law) | RMS log resid. | resamples |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, f in fits.items():
        lf, law = f["law"], f["law"]["law"]
        if not law:
            lines.append(f"| {name} | {lf.get('note', 'not fitted')} | | | | | | | |")
            continue
        alloc = f["allocation_from_law"]
        lines.append(
            f"| {name} | {law['E']:.3f}{_interval(lf, 'E')} | {law['A']:.3g} | "
            f"{law['alpha']:.2f}{_interval(lf, 'alpha')} | {law['B']:.3g} | "
            f"{law['beta']:.2f}{_interval(lf, 'beta')} | {alloc['a']:.2f} | "
            f"{lf['rmse_log']:.3f} | {lf['bootstrap_fits']} |")
    lines += ["", "![IsoFLOP profiles](isoflop.png)", "", "![Frontier](frontier.png)", "",
              "![Law against points](law.png)", ""]
    return "\n".join(lines)


def write(cfg, results: list[dict], out_dir, log=print) -> dict:
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_label = ("total parameters" if cfg.sweep.params == "total"
               else "non-embedding parameters")
    points = points_by_metric(results, cfg.sweep.params, cfg.sweep.sample_metrics)
    fits = fit_all(points, cfg.sweep.bootstrap)
    (out_dir / "fit.json").write_text(json.dumps({"fits": fits, "points": points}, indent=1))
    if points:
        plot.isoflop(fits, points, out_dir / "isoflop.png", n_label)
        plot.frontier(fits, out_dir / "frontier.png")
        plot.law_vs_points(fits, points, out_dir / "law.png")
    (out_dir / "report.md").write_text(markdown(cfg, results, fits, n_label))
    for name, f in fits.items():
        law, iso = f["law"]["law"], f["isoflop"]["law"]
        log(f"[sweep] {name}: " + (f"N_opt ~ C^{iso['a']:.2f}, D_opt ~ C^{iso['b']:.2f}; "
                                   if iso else "no IsoFLOP frontier; ") +
            (f"law E={law['E']:.3f} alpha={law['alpha']:.2f} beta={law['beta']:.2f}"
             if law else "no law fitted"))
    log(f"[sweep] report in {out_dir / 'report.md'}")
    return fits
