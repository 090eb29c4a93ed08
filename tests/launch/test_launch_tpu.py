"""`mmar launch tpu`: the gcloud script is well formed, quoted, and multi-slice aware."""
import shlex
import subprocess

import pytest

from mmar.launch import common, tpu

SPEC = common.RunSpec("configs/pretrain.py:1b", "gs://my bucket/runs/1b run",
                      ("train.steps=10",))


def _lines(script):
    return [l for l in script.splitlines() if l and not l.startswith("#")]


def _remote(line):
    """The command a `tpu-vm ssh` line runs on the workers, split as the remote shell will."""
    argv = shlex.split(line)
    command = next(a for a in argv if a.startswith("--command="))
    return argv, command.split("=", 1)[1]


def test_single_slice_script():
    script = tpu.render(SPEC, tpu.Options(project="p", zone="us-east5-a",
                                          accelerator_type="v5p-32"))
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)   # it parses
    lines = _lines(script)
    assert lines[0] == "set -euo pipefail"
    assert shlex.split(lines[1]) == [
        "gcloud", "compute", "tpus", "tpu-vm", "create", "mmar-1b-run", "--project=p",
        "--zone=us-east5-a", "--accelerator-type=v5p-32", "--version=v2-alpha-tpuv5"]
    train = [l for l in lines if "mmar train" in l]
    assert len(train) == 1
    argv, remote = _remote(train[0])
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mmar-1b-run"]
    assert "--worker=all" in argv
    # The workdir with spaces survives both shells as one argument.
    inner = shlex.split(remote.split("(nohup ", 1)[1].split(" > ")[0])
    assert inner == [".venv/bin/python", "-m", "mmar", "train",
                     "--config=configs/pretrain.py:1b", "--workdir=gs://my bucket/runs/1b run",
                     "--config.train.steps=10", "--distributed"]
    install = [l for l in lines if "pip install" in l][0]
    assert "jax[tpu]==" + common.pinned_jax() in _remote(install)[1]


def test_multi_slice_uses_a_queued_resource_and_every_slice():
    opts = tpu.Options(name="big", zone="z", accelerator_type="v5p-256", num_slices=4,
                       spot=True)
    script = tpu.render(SPEC, opts)
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    create = shlex.split(_lines(script)[1])
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "big"]
    assert {"--node-count=4", "--node-prefix=big", "--spot",
            "--accelerator-type=v5p-256"} <= set(create)
    assert "until [" in script and "= ACTIVE ]" in script
    train = [l for l in _lines(script) if "mmar train" in l]
    assert [shlex.split(l)[5] for l in train] == ["big-0", "big-1", "big-2", "big-3"]
    assert all("--config.mesh.dcn_data=4" in _remote(l)[1] for l in train)


def test_stop_and_delete_steps():
    opts = tpu.Options(name="big", num_slices=2, steps=("stop", "delete"))
    lines = _lines(tpu.render(SPEC, opts))
    assert len(lines) == 4 and "create" not in " ".join(lines)
    assert all('kill -TERM "$(cat mmar/mmar.pid)"' in _remote(l)[1] for l in lines[1:3])
    assert shlex.split(lines[3]) == ["gcloud", "compute", "tpus", "queued-resources", "delete",
                                     "big", "--force", "--quiet"]


def test_refusals():
    with pytest.raises(ValueError, match="gs://"):
        tpu.render(common.RunSpec("c.py:x", "/home/me/run"), tpu.Options())
    with pytest.raises(ValueError, match="unknown step"):
        tpu.Options(steps=("create", "launch"))
    with pytest.raises(ValueError, match="runtime"):
        tpu.render(SPEC, tpu.Options(accelerator_type="v9x-8"))
