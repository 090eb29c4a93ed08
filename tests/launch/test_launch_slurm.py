"""`mmar launch slurm`: the sbatch script has the right directives, quotes, and requeues."""
import shlex
import subprocess

from mmar.launch import common, slurm

SPEC = common.RunSpec("configs/pretrain.py:1b", "/shared/runs/1b run")


def _directives(script):
    return [l.split(" ", 1)[1] for l in script.splitlines() if l.startswith("#SBATCH ")]


def _srun(script):
    line = next(l for l in script.splitlines() if l.startswith("srun "))
    assert line.endswith(" &")
    return shlex.split(line[:-2])


def test_one_process_per_gpu():
    script = slurm.render(SPEC, slurm.Options(nodes=4, gpus_per_node=8, partition="a100",
                                              time="48:00:00", chdir="/shared/my code"))
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    assert script.startswith("#!/bin/bash\n#SBATCH ")
    d = _directives(script)
    assert {"--nodes=4", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=a100",
            "--time=48:00:00", "--requeue", "--signal=B:USR1@300",
            "--open-mode=append", "--job-name=mmar-1b-run"} <= set(d)
    # directives come before the first command, or sbatch ignores them
    body = script.split("\n")
    assert max(i for i, l in enumerate(body) if l.startswith("#SBATCH")) < \
        min(i for i, l in enumerate(body) if l and not l.startswith("#"))
    assert "cd '/shared/my code'" in script
    assert _srun(script) == ["srun", "--kill-on-bad-exit=1", ".venv/bin/python", "-m", "mmar",
                             "train", "--config=configs/pretrain.py:1b",
                             "--workdir=/shared/runs/1b run", "--distributed"]
    assert "JAX_LOCAL_DEVICE_IDS" not in script      # JAX gives each task its GPU
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script and "trap on_time_limit USR1" in script


def test_one_process_per_node_sees_every_gpu():
    script = slurm.render(SPEC, slurm.Options(nodes=2, gpus_per_node=4, per="node",
                                              setup=("module load cuda/12",)))
    assert "--ntasks-per-node=1" in _directives(script)
    assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3" in script
    assert "module load cuda/12" in script
    assert "--config.mesh.dcn_data=2" in _srun(script)


def test_time_limit_checkpoints_then_requeues(tmp_path):
    """The script's USR1 handler, run under bash with fake srun/scontrol: the run gets
    SIGTERM (mmar saves then), the handler waits for it, then requeues the job."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        "#!/bin/bash\ntrap 'echo saved-checkpoint >> \"$LOG\"; exit 0' TERM\n"
        # (after a second: the script has then recorded srun's pid and is waiting)
        "sleep 1; echo started >> \"$LOG\"\nwhile true; do sleep 0.1; done\n")
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho \"scontrol $*\" >> \"$LOG\"\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    script = slurm.render(SPEC, slurm.Options(chdir=str(tmp_path)))
    log = tmp_path / "log"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LOG": str(log), "SLURM_JOB_ID": "42",
           "SLURM_JOB_NODELIST": "n1"}
    proc = subprocess.Popen(["bash", "-c", script], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    import time
    for _ in range(300):
        if log.exists() and "started" in log.read_text():
            break
        time.sleep(0.1)
    proc.send_signal(10)    # SIGUSR1, as `--signal=B:USR1@300` sends it
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert log.read_text().split("\n")[:3] == ["started", "saved-checkpoint",
                                              "scontrol requeue 42"]
