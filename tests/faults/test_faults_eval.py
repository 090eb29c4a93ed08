"""`mmar eval` killed (`kill -9`) part-way, then rerun: the same report as a run never
stopped, and no half-written report.json in between (the report is written whole or not at
all: mmar/rundir.py `write_json`)."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import ml_collections
import pytest

from mmar import config as config_lib
from mmar import rundir
from mmar.jobs import text_tokenizer_train, tokenizer_train
from mmar.jobs import train as train_job

pytestmark = pytest.mark.faults
ROOT = pathlib.Path(__file__).resolve().parents[2]
FAST = ["--config.image_tokenizer.train.steps=4", "--config.train.steps=4",
        "--config.checkpoint.every_steps=4", "--config.eval.num_examples=4"]


@pytest.fixture(scope="module")
def trained(test_config, tmp_path_factory):
    cfg = ml_collections.ConfigDict(test_config.to_dict())
    cfg.image_tokenizer.train.steps, cfg.train.steps = 4, 4
    cfg.checkpoint.every_steps, cfg.eval.num_examples = 4, 4
    cfg = config_lib.validate(cfg)
    workdir = tmp_path_factory.mktemp("trained")
    for job in (text_tokenizer_train, tokenizer_train, train_job):
        job.run(cfg, workdir, log=lambda _: None)
    return workdir


def _eval(workdir, data_dir):
    return subprocess.Popen(
        [sys.executable, "-m", "mmar", "eval", f"--config={ROOT}/configs/t2i_shapes.py:test",
         f"--workdir={workdir}", *FAST], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, MMAR_DATA_DIR=str(data_dir), TF_CPP_MIN_LOG_LEVEL="2"))


@pytest.mark.e2e
@pytest.mark.slow
def test_eval_killed_then_rerun_gives_the_same_report(trained, data_dir, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for d in (whole, killed):
        shutil.copytree(trained, d)
    proc = _eval(whole, data_dir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    want = json.loads((whole / rundir.REPORT).read_text())

    proc = _eval(killed, data_dir)
    deadline = time.time() + 600
    for line in proc.stdout:   # killed once the samplers run: after load, compile, judging
        if "[eval] tokenizer reconstruction accuracy" in line or time.time() > deadline:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / rundir.REPORT).exists()
    proc = _eval(killed, data_dir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert json.loads((killed / rundir.REPORT).read_text()) == want
    for name in ("t2i_test.jsonl", "i2t_test.jsonl"):
        assert (killed / "samples" / name).read_text() == (whole / "samples" / name).read_text()
