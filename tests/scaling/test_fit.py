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


@pytest.mark.parametrize("slope", [1.0, -1.0, 1e-3, -2.5])
@pytest.mark.parametrize("sizes", [[1, 2, 4], [1e6, 3e6, 1e7, 3e7], [7e5, 1.4e6, 2.8e6]])
def test_losses_on_a_line_have_no_minimum(sizes, slope):
    """Points exactly on a line in log N: the quadratic fit's curvature is rounding noise of
    either sign, which must not become an optimum far outside the grid."""
    y = 3.0 + slope * np.log(sizes)
    assert fit.isoflop_minimum(sizes, sizes[::-1], y) is None


def test_a_shallow_real_parabola_still_has_its_minimum():
    n = np.array([1e6, 2e6, 4e6, 8e6, 1.6e7])
    y = 2.0 + 1e-4 * (np.log(n) - np.log(4e6)) ** 2
    m = fit.isoflop_minimum(n, n[::-1], y)
    assert m is not None and m["n_opt"] == pytest.approx(4e6, rel=1e-4)
    assert fit.fit_law([1, 2], [1, 2], [1, 2])["law"] is None
