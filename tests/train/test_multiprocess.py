"""Runs in separate processes (tests/train/worker.py): two processes with 4 devices each
(started by the local launcher's supervisor) train exactly like one process with 8; a run
killed with SIGKILL (three times: as the first step compiles, between checkpoints, right
as a checkpoint is being written) and resumed gives bit for bit the losses of a run never
stopped."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("worker.py")
STEPS = 20


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)     # the worker sets its own device count
    return env


def _start(workdir, *args):
    return subprocess.Popen([sys.executable, str(WORKER), str(workdir), f"--steps={STEPS}",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=_env())


def _finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _losses(workdir) -> dict[int, float]:
    """Per-step loss; for steps run twice (after a kill) the later line wins."""
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One process, 8 devices, never stopped."""
    workdir = tmp_path_factory.mktemp("straight")
    _finish(_start(workdir))
    losses = _losses(workdir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


@pytest.mark.e2e
@pytest.mark.slow
def test_two_processes_train_like_one(straight, tmp_path):
    """Started and watched by the local launcher's supervisor (mmar/launch/local.py)."""
    import io
    from mmar.launch import local
    port = _free_port()
    out = io.StringIO()
    status = local.supervise(
        [[sys.executable, str(WORKER), str(tmp_path), f"--steps={STEPS}", "--devices=4",
          f"--process_id={i}", "--num_processes=2", f"--port={port}"] for i in range(2)],
        env=_env(), out=out)
    assert status == 0, out.getvalue()[-3000:]
    lines = out.getvalue().splitlines()
    assert any(line.startswith("[1] ") for line in lines)
    assert any(line.startswith("[0] ") and "'data': 2, 'fsdp': 2, 'tensor': 2" in line
               for line in lines)
    losses = _losses(tmp_path)             # written by process 0 only
    np.testing.assert_allclose([losses[s] for s in range(1, STEPS + 1)],
                               [straight[s] for s in range(1, STEPS + 1)], rtol=1e-6)
    # Both processes wrote their part of each checkpoint, and the data iterator of each.
    data_states = (tmp_path / "checkpoints" / "20" / "data").glob("process_*.json")
    assert sorted(p.name for p in data_states) == ["process_0-of-2.json",
                                                   "process_1-of-2.json"]


def _kill_when(proc, marker: str) -> None:
    for line in proc.stdout:
        if marker in line:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
    raise AssertionError(f"the run ended before printing {marker!r}")


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.faults
def test_kill_9_and_resume_is_bit_exact(straight, tmp_path):
    # Killed as the first step compiles (the line printed just before it): nothing saved
    # yet, the rerun starts from the beginning.
    _kill_when(_start(tmp_path), " parameters (table in ")
    assert not (tmp_path / "checkpoints").exists() or not any(
        p.name.isdigit() for p in (tmp_path / "checkpoints").iterdir())
    # Killed between checkpoints (every 5 steps): resumes at 10, redoes 11-13.
    _kill_when(_start(tmp_path), "step 13/")
    # Killed as soon as step 15 is logged, while its (async) checkpoint is being written.
    _kill_when(_start(tmp_path), "step 15/")
    out = _finish(_start(tmp_path))
    assert "resumed from step" in out and f"finished at step {STEPS}" in out
    resumed = _losses(tmp_path)
    assert [resumed[s] for s in range(1, STEPS + 1)] == [straight[s]
                                                         for s in range(1, STEPS + 1)]
