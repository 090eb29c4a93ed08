"""Scaling-law fits: IsoFLOP minima -> compute-optimal power laws, and L(N, D) = E + A/N^a + B/D^b.

Two of Chinchilla's three approaches (Hoffmann et al. 2022), on any metric where lower is
better (losses; a sample score enters as its error, 1 - accuracy):

- IsoFLOP profiles (approach 2): at each budget C, a parabola of the metric in log N; its
  minimum is N_opt(C), and D_opt(C) is the data the run at N_opt would get (interpolated in
  log-log between that budget's runs, since D = C / FLOPs-per-token(N)). Power laws
  N_opt = k_N C^a and D_opt = k_D C^b are straight lines in log-log.
- The parametric law (approach 3): E + A/N^alpha + B/D^beta, fitted as Chinchilla did: the
  Huber loss (delta 1e-3) of log-space residuals, log L_hat = LSE(a - alpha log N,
  b - beta log D, e), minimised with L-BFGS-B from a grid of starts (the objective has
  many local minima), so that a few off runs do not pull the exponents.

Intervals are bootstrap percentiles (5%, 95%) over resampled runs: rough with a dozen runs,
which is what a small sweep has; the report says how many resamples gave a fit.
"""
from __future__ import annotations

import functools
import itertools

import numpy as np
import threadpoolctl
from scipy import optimize

HUBER_DELTA = 1e-3
CURVATURE_RTOL = 1e-9    # isoflop_minimum: curvature below this x |metric| is a line
_GRID = dict(e=(0.0,), a=(0.0, 5.0), b=(0.0, 5.0), alpha=(0.3,), beta=(0.3,))
_BOUNDS = [(-5.0, 50.0), (-5.0, 50.0), (-10.0, 5.0), (0.0, 3.0), (0.0, 3.0)]  # a b e al be


def _one_blas_thread(fn):
    """Thousands of tiny BLAS calls: OpenBLAS's threads only contend (seen: 8 ms instead of
    0.1 ms per L-BFGS-B iteration on a loaded 2-core machine), so the fits use one."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with threadpoolctl.threadpool_limits(1, user_api="blas"):
            return fn(*args, **kwargs)
    return wrapped


# ---- IsoFLOP profiles -------------------------------------------------------------------

def isoflop_minimum(n, d, y) -> dict | None:
    """Parabola of y in log N for one budget -> its minimum, or None if there is none.

    `at_edge` is True when the minimum lies outside the budget's sizes (an extrapolation:
    widen the grid there)."""
    n, d, y = (np.asarray(v, float) for v in (n, d, y))
    if len(np.unique(n)) < 3:
        return None
    x = np.log(n)
    c2, c1, c0 = np.polyfit(x, y, 2)
    # A curvature whose effect across the sizes is below rounding noise (points on a line
    # give c2 ~ 1e-16, either sign) is no minimum: its "vertex" lies anywhere, at any value.
    # float64 least squares on a few well-scaled points leaves ~1e-13 relative error; 1e-9
    # of the metric's magnitude is far above that and far below any real curvature.
    if c2 * np.ptp(x) ** 2 <= CURVATURE_RTOL * np.abs(y).max():
        return None                   # flat, a line, or opens downwards: no minimum
    x_opt = -c1 / (2 * c2)
    slope, icept = np.polyfit(x, np.log(d), 1)   # log D is linear in log N at fixed C
    return {"n_opt": float(np.exp(x_opt)), "d_opt": float(np.exp(icept + slope * x_opt)),
            "value_opt": float(c0 + c1 * x_opt + c2 * x_opt ** 2),
            "at_edge": bool(x_opt < x.min() or x_opt > x.max()),
            "parabola": [float(c2), float(c1), float(c0)]}


def power_law(x, y) -> tuple[float, float]:
    """y = k x^p by least squares in log-log -> (k, p)."""
    p, log_k = np.polyfit(np.log(x), np.log(y), 1)
    return float(np.exp(log_k)), float(p)


def _frontier(points) -> tuple[list, dict | None]:
    minima = []
    for c in sorted({p["budget"] for p in points}):
        at_c = [p for p in points if p["budget"] == c]
        m = isoflop_minimum([p["n"] for p in at_c], [p["d"] for p in at_c],
                            [p["y"] for p in at_c])
        if m:
            minima.append({"budget": c, **m})
    if len(minima) < 2:
        return minima, None
    c = [m["budget"] for m in minima]
    k_n, a = power_law(c, [m["n_opt"] for m in minima])
    k_d, b = power_law(c, [m["d_opt"] for m in minima])
    return minima, {"k_n": k_n, "a": a, "k_d": k_d, "b": b}


def _interval(samples):
    if len(samples) < 2:
        return None
    return [float(np.percentile(samples, 5)), float(np.percentile(samples, 95))]


@_one_blas_thread
def fit_isoflop(points, bootstrap: int = 100, seed: int = 0) -> dict:
    """points: dicts with budget, n, d, y. -> minima per budget, N_opt/D_opt power laws
    (exponents a, b) with bootstrap intervals (runs resampled within each budget)."""
    minima, law = _frontier(points)
    out = {"minima": minima, "law": law, "intervals": {}, "bootstrap_fits": 0}
    if law is None or bootstrap == 0:
        return out
    rng = np.random.default_rng(seed)
    by_c = {}
    for p in points:
        by_c.setdefault(p["budget"], []).append(p)
    samples = {"a": [], "b": []}
    for _ in range(bootstrap):
        resampled = [group[i] for group in by_c.values()
                     for i in rng.integers(0, len(group), len(group))]
        _, boot = _frontier(resampled)
        if boot is not None:
            samples["a"].append(boot["a"])
            samples["b"].append(boot["b"])
    out["intervals"] = {k: _interval(v) for k, v in samples.items()}
    out["bootstrap_fits"] = len(samples["a"])
    return out


# ---- the parametric law -------------------------------------------------------------------

def _objective(theta, log_n, log_d, log_y, delta):
    a, b, e, alpha, beta = theta
    u = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = u.max(axis=0)
    w = np.exp(u - top)
    lse = top + np.log(w.sum(axis=0))
    w /= w.sum(axis=0)
    r = lse - log_y
    small = np.abs(r) <= delta
    # Divided by delta: the same minimiser, gradients of order one for L-BFGS-B's tolerances.
    loss = np.where(small, 0.5 * r ** 2 / delta, np.abs(r) - 0.5 * delta).sum()
    g = np.where(small, r / delta, np.sign(r))
    grad = np.array([(g * w[0]).sum(), (g * w[1]).sum(), (g * w[2]).sum(),
                     -(g * w[0] * log_n).sum(), -(g * w[1] * log_d).sum()])
    return loss, grad


def _starts(n, d, y, keep: int = 6):
    """Starting points: for fixed (alpha, beta) the law is linear in (E, A, B), so a grid of
    exponents with non-negative least squares (relative residuals) ranks the basins cheaply;
    the best `keep` of them, plus a coarse grid of Chinchilla-style starts, go to L-BFGS-B."""
    ranked = []
    for alpha, beta in itertools.product(np.linspace(0.05, 2.0, 40), repeat=2):
        basis = np.stack([np.ones_like(y), n ** -alpha, d ** -beta], axis=1) / y[:, None]
        coef, _ = optimize.nnls(basis, np.ones_like(y))
        pred = np.maximum(basis @ coef, 1e-12)
        ranked.append((float(np.sum(np.log(pred) ** 2)), alpha, beta, coef))
    ranked.sort(key=lambda t: t[0])
    floor = np.exp(-5.0)
    starts = [np.array([np.log(max(c[1], floor)), np.log(max(c[2], floor)),
                        np.log(max(c[0], floor)), al, be]) for _, al, be, c in ranked[:keep]]
    return starts + [np.array([a, b, e, al, be]) for e, a, b, al, be in itertools.product(
        _GRID["e"], _GRID["a"], _GRID["b"], _GRID["alpha"], _GRID["beta"])]


def _minimise(starts, log_n, log_d, log_y, delta):
    best = []
    for x0 in starts:
        res = optimize.minimize(_objective, x0, args=(log_n, log_d, log_y, delta), jac=True,
                                method="L-BFGS-B", bounds=_BOUNDS,
                                options={"maxiter": 500})
        best.append((float(res.fun), res.x))
    best.sort(key=lambda t: t[0])
    return best


def _params(theta) -> dict:
    a, b, e, alpha, beta = (float(v) for v in theta)
    return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)),
            "alpha": alpha, "beta": beta}


def predict(law: dict, n, d):
    n, d = np.asarray(n, float), np.asarray(d, float)
    return law["E"] + law["A"] / n ** law["alpha"] + law["B"] / d ** law["beta"]


@_one_blas_thread
def fit_law(n, d, y, bootstrap: int = 100, seed: int = 0, delta: float = HUBER_DELTA) -> dict:
    """Fits E + A/N^alpha + B/D^beta -> {"law": {E, A, B, alpha, beta}, "intervals": ...,
    "rmse_log": residual RMS in log space}; needs at least 5 points (5 parameters)."""
    n, d, y = (np.asarray(v, float) for v in (n, d, y))
    if len(y) < 5:
        return {"law": None, "intervals": {}, "bootstrap_fits": 0,
                "note": f"{len(y)} points: the law has 5 parameters"}
    log_n, log_d, log_y = np.log(n), np.log(d), np.log(y)
    ranked = _minimise(_starts(n, d, y), log_n, log_d, log_y, delta)
    law = _params(ranked[0][1])
    resid = np.log(predict(law, n, d)) - log_y
    out = {"law": law, "rmse_log": float(np.sqrt(np.mean(resid ** 2))), "intervals": {},
           "bootstrap_fits": 0}
    if bootstrap:
        rng = np.random.default_rng(seed)
        seeds = [x for _, x in ranked[:3]]   # the best solutions of the full fit
        samples = {k: [] for k in law}
        for _ in range(bootstrap):
            i = rng.integers(0, len(y), len(y))
            if len(np.unique(i)) < 5:
                continue
            boot = _params(_minimise(seeds, log_n[i], log_d[i], log_y[i], delta)[0][1])
            for k, v in boot.items():
                samples[k].append(v)
        out["intervals"] = {k: _interval(v) for k, v in samples.items()}
        out["bootstrap_fits"] = len(samples["E"])
    return out


def optimal_allocation(law: dict) -> dict | None:
    """For C = F * N * D with F constant (about 6), minimising the law at fixed C gives
    N_opt ~ C^(beta/(alpha+beta)) and D_opt ~ C^(alpha/(alpha+beta))."""
    if not law or law["alpha"] + law["beta"] <= 0:
        return None
    s = law["alpha"] + law["beta"]
    return {"a": law["beta"] / s, "b": law["alpha"] / s}
