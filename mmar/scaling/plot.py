"""Matplotlib PNGs of a sweep: IsoFLOP curves, the compute-optimal frontier, law vs points.

Agg backend (files only, no display), small figures (they are committed under docs/).
Every function takes the fit outputs of report.py, so plots and the Markdown numbers come
from one computation.
"""
from __future__ import annotations

import pathlib

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

from mmar.scaling import fit  # noqa: E402

DPI = 80


def _save(fig, path: pathlib.Path) -> pathlib.Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _colors(budgets):
    cmap = plt.get_cmap("viridis")
    return {c: cmap(i / max(1, len(budgets) - 1)) for i, c in enumerate(sorted(budgets))}


def isoflop(fits: dict, points: dict, path, n_label: str) -> pathlib.Path:
    """One panel per metric: the metric against N for each budget, its parabola, minimum."""
    names = list(fits)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), squeeze=False)
    for ax, name in zip(axes[0], names):
        pts = points[name]
        colors = _colors({p["budget"] for p in pts})
        minima = {m["budget"]: m for m in fits[name]["isoflop"]["minima"]}
        for c, color in colors.items():
            at_c = sorted((p for p in pts if p["budget"] == c), key=lambda p: p["n"])
            n = np.array([p["n"] for p in at_c])
            ax.plot(n, [p["y"] for p in at_c], "o", color=color, label=f"C={c:.1e}")
            if c in minima:
                c2, c1, c0 = minima[c]["parabola"]
                x = np.linspace(np.log(n.min()) - 0.3, np.log(n.max()) + 0.3, 50)
                ax.plot(np.exp(x), c2 * x ** 2 + c1 * x + c0, "-", color=color, lw=1)
                ax.plot(minima[c]["n_opt"], minima[c]["value_opt"], "*", color=color, ms=12,
                        mec="k")
        ax.set_xscale("log")
        ax.set_xlabel(n_label)
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out value")
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def frontier(fits: dict, path) -> pathlib.Path:
    """N_opt(C) and D_opt(C) from the IsoFLOP minima, with their power laws, per metric."""
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.4))
    for i, (name, f) in enumerate(fits.items()):
        minima, law = f["isoflop"]["minima"], f["isoflop"]["law"]
        if not minima:
            continue
        c = np.array([m["budget"] for m in minima])
        marker = "osD^v"[i % 5]
        for ax, key, k, p in ((axes[0], "n_opt", "k_n", "a"), (axes[1], "d_opt", "k_d", "b")):
            line, = ax.plot(c, [m[key] for m in minima], marker,
                            label=None if law else name)
            if law:
                cc = np.logspace(np.log10(c.min()) - 0.2, np.log10(c.max()) + 0.2, 20)
                ax.plot(cc, law[k] * cc ** law[p], "-", color=line.get_color(), lw=1,
                        label=f"{name}: {p}={law[p]:.2f}")
    for ax, label in zip(axes, ("N_opt", "D_opt (tokens)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("C (training FLOPs)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    return _save(fig, path)


def law_vs_points(fits: dict, points: dict, path) -> pathlib.Path:
    """Each metric against D, one line per model size, with the fitted law's curves."""
    names = [n for n in fits if fits[n]["law"]["law"]]
    if not names:
        names = list(fits)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), squeeze=False)
    for ax, name in zip(axes[0], names):
        pts, law = points[name], fits[name]["law"]["law"]
        sizes = sorted({p["n"] for p in pts})
        cmap = plt.get_cmap("plasma")
        for j, n in enumerate(sizes):
            color = cmap(j / max(1, len(sizes)))
            at_n = sorted((p for p in pts if p["n"] == n), key=lambda p: p["d"])
            d = np.array([p["d"] for p in at_n])
            ax.plot(d, [p["y"] for p in at_n], "o", color=color, label=f"N={n:.2g}")
            if law:
                dd = np.logspace(np.log10(d.min()) - 0.3, np.log10(d.max()) + 0.3, 30)
                ax.plot(dd, fit.predict(law, n, dd), "-", color=color, lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("D (tokens)")
        ax.set_title(name + ("" if law else " (no law fitted)"), fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)
