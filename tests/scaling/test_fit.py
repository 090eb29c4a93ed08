"""The fits recover known exponents from points made by a known law plus noise.

Points: Chinchilla's fitted law (E 1.69, A 406.4, B 410.7, alpha 0.34, beta 0.28) on an
IsoFLOP grid, 6 budgets x 7 sizes (C = 6 N D), times log-normal noise of 1%.
Tolerances: exponents within 0.05 absolute (alpha, beta; the IsoFLOP a, b within 0.03 of
beta/(alpha+beta) = 0.452 and alpha/(alpha+beta) = 0.548), E within 5%.
"""
import numpy as np
import pytest

from mmar.scaling import fit

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def grid(noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    points = []
    for c in np.logspace(18, 21, 6):
        n_opt = 0.1 * c ** 0.452   # around the true optimum, a decade each side
        for n in n_opt * np.logspace(-1, 1, 7):
            d = c / (6 * n)
            y = fit.predict(TRUE, n, d) * np.exp(noise * rng.standard_normal())
            points.append({"budget": c, "n": n, "d": d, "y": float(y)})
    return points


@pytest.fixture(scope="module")
def points():
    return grid()


def test_isoflop_recovers_compute_optimal_exponents(points):
    out = fit.fit_isoflop(points, bootstrap=50)
    assert len(out["minima"]) == 6
    s = TRUE["alpha"] + TRUE["beta"]
    assert abs(out["law"]["a"] - TRUE["beta"] / s) < 0.03
    assert abs(out["law"]["b"] - TRUE["alpha"] / s) < 0.03
    lo, hi = out["intervals"]["a"]
    assert lo <= out["law"]["a"] <= hi and hi - lo < 0.2


def test_parametric_law_recovers_exponents(points):
    n, d, y = (np.array([p[k] for p in points]) for k in ("n", "d", "y"))
    out = fit.fit_law(n, d, y, bootstrap=50)
    law = out["law"]
    assert abs(law["alpha"] - TRUE["alpha"]) < 0.05, law
    assert abs(law["beta"] - TRUE["beta"]) < 0.05, law
    assert abs(law["E"] / TRUE["E"] - 1) < 0.05, law
    assert out["rmse_log"] < 0.02
    assert out["bootstrap_fits"] >= 40
    lo, hi = out["intervals"]["alpha"]
    assert lo < hi
    allocation = fit.optimal_allocation(law)
    assert abs(allocation["a"] - 0.452) < 0.05


def test_huber_resists_an_outlier(points):
    spoiled = [dict(p) for p in points]
    spoiled[5]["y"] *= 1.5          # one diverged run
    n, d, y = (np.array([p[k] for p in spoiled]) for k in ("n", "d", "y"))
    law = fit.fit_law(n, d, y, bootstrap=0)["law"]
    assert abs(law["alpha"] - TRUE["alpha"]) < 0.05 and abs(law["beta"] - TRUE["beta"]) < 0.05


def test_too_few_points_say_so():
    assert fit.isoflop_minimum([1, 2], [2, 1], [1.0, 1.0]) is None
    assert fit.isoflop_minimum([1, 2, 4], [4, 2, 1], [1.0, 2.0, 3.0]) is None  # no minimum
    assert fit.fit_law([1, 2], [1, 2], [1, 2])["law"] is None
