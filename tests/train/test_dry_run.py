"""`mmar train --dry-run` compiles the real step for a mesh it does not have and reports the
per-device bytes that the sharding implies."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from mmar import config as config_lib
from mmar.model import flops

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.e2e
@pytest.mark.slow
def test_dry_run_of_the_100m_config_on_8_fake_devices(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}   # it sets its own
    out = subprocess.run(
        [sys.executable, "-m", "mmar", "train", "--config=configs/pretrain.py:100m",
         "--dry-run", "--dry_run_devices=8", f"--workdir={tmp_path}",
         "--config.train.batch_size=16"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads((tmp_path / "dry_run.json").read_text())
    cfg = config_lib.validate(config_lib.load(str(ROOT / "configs/pretrain.py") + ":100m"))
    n = flops.param_count(cfg.model)
    assert figures["parameters"] == n and figures["devices"] == 8
    assert figures["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    # FSDP over 8 devices: each holds 1/8 of the f32 params and of Adam's two moments, and
    # 1/8 of the batch (5 arrays of 4-byte values).
    expected = (3 * 4 * n + 16 * cfg.data.seq_len * 5 * 4) / 8
    assert 0.97 < figures["argument_bytes"] / expected < 1.03
    assert figures["temp_bytes"] > 0
    assert "blocks/mlp/up" in out.stdout and "'fsdp'" in out.stdout   # the parameter table
