"""The sweep report from results alone: numbers in the Markdown match fit.json, PNGs exist.

Results are synthetic (the mini grid's runs with losses from a known law), so the test needs
no training and checks that the report carries the law the points were made from."""
import json
import pathlib

import numpy as np

from mmar import config as config_lib
from mmar.scaling import fit, report, sweep

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAW = {"E": 0.3, "A": 40.0, "B": 300.0, "alpha": 0.4, "beta": 0.35}


def fake_results(cfg):
    runs, _ = sweep.plan(cfg)
    rng = np.random.default_rng(0)
    out = []
    for r in runs:
        loss = float(fit.predict(LAW, r.non_embedding_params, r.tokens))
        noisy = lambda x: x * float(np.exp(0.002 * rng.standard_normal()))
        out.append({**r.record(), "loss": noisy(loss), "loss_text": noisy(0.5 * loss),
                    "loss_image": noisy(1.5 * loss), "t2i_accuracy": 1.0, "i2t_accuracy": 0.5,
                    "decoder_seconds": 1.0})
    return out


def test_report_writes_fits_plots_and_markdown(tmp_path):
    cfg = config_lib.load(f"{ROOT / 'configs/sweep_shapes.py'}:mini")
    with cfg.unlocked():
        cfg.sweep.bootstrap = 5
    results = fake_results(cfg)
    fits = report.write(cfg, results, tmp_path, log=lambda m: None)
    law = fits["loss"]["law"]["law"]
    assert abs(law["alpha"] - LAW["alpha"]) < 0.1 and abs(law["beta"] - LAW["beta"]) < 0.1
    assert len(fits["loss"]["isoflop"]["minima"]) >= 2
    saved = json.loads((tmp_path / "fit.json").read_text())
    assert saved["fits"]["loss"]["law"]["law"]["alpha"] == law["alpha"]
    text = (tmp_path / "report.md").read_text()
    assert f"{law['alpha']:.2f}" in text and "t2i_error" in text and "i2t_error" in text
    assert all(r["name"] in text for r in results)
    for png in ("isoflop.png", "frontier.png", "law.png"):
        from PIL import Image
        assert Image.open(tmp_path / png).size[0] > 200
