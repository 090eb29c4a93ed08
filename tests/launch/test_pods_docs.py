"""docs/pods.md: every command of its marked blocks runs with --dry-run added and prints a
well-formed script or manifest for that engine; the sweep example runs as written."""
import contextlib
import io
import pathlib
import shlex
import subprocess

import yaml

from mmar.jobs import launch as launch_job

ROOT = pathlib.Path(__file__).resolve().parents[2]
MARK = "<!-- tests/launch/test_pods_docs.py runs this block -->"


def doc_commands() -> list[list[str]]:
    text = (ROOT / "docs/pods.md").read_text()
    commands = []
    for part in text.split(MARK)[1:]:
        block = part.split("```bash", 1)[1].split("```", 1)[0]
        commands += [shlex.split(line) for line in block.strip().splitlines()]
    return commands


def dry_run(argv: list[str]) -> str:
    assert argv[:2] == ["mmar", "launch"], argv
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = launch_job.main([argv[2], "--dry-run", *argv[3:]])
    assert status == 0, argv
    return out.getvalue()


def _bash_parses(script: str) -> None:
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_every_engine_is_shown():
    engines = [c[2] for c in doc_commands()]
    assert set(engines) == {"tpu", "gke", "slurm", "local"}
    assert engines.count("tpu") == 6 and engines.count("gke") == 2


def test_documented_commands_print_what_the_doc_says():
    for argv in doc_commands():
        out = dry_run(argv)
        workdir = next(a.split("=", 1)[1] for a in argv if a.startswith("--workdir="))
        engine = argv[2]
        assert workdir in out
        if engine == "tpu":
            _bash_parses(out)
            steps = next((a.split("=", 1)[1] for a in argv if a.startswith("--steps=")),
                         "create,copy,install,run")
            assert [l[2:] for l in out.splitlines() if l[2:] in
                    ("create", "copy", "install", "run", "logs", "stop", "delete")] == \
                steps.split(",")
            if "--num_slices=4" in argv:
                assert "--node-count=4" in out and "--config.mesh.dcn_data=4" in out
            if "run" in steps:
                assert "--worker=all" in out and "--distributed" in out
                assert f"--workdir={workdir}" in out
        elif engine == "gke":
            doc = yaml.safe_load(out)
            assert doc["kind"] == "JobSet"
            pod = doc["spec"]["replicatedJobs"][0]["template"]["spec"]
            if "--accelerator=tpu" in argv:
                assert pod["parallelism"] == 64                       # 4x8x8 / 4 chips
                assert doc["spec"]["replicatedJobs"][0]["replicas"] == 2
            else:
                assert pod["parallelism"] == 4 and "JAX_COORDINATOR_ADDRESS" in out
        elif engine == "slurm":
            _bash_parses(out)
            assert "#SBATCH --requeue" in out and "#SBATCH --nodes=4" in out
            assert "srun " in out and "cd /shared/mmar" in out
        else:
            lines = out.strip().splitlines()
            assert len(lines) == 2 and all("--num_processes=2" in l for l in lines)


def test_sweep_example_runs(capsys):
    text = (ROOT / "docs/pods.md").read_text()
    code = text.split("## 5. Sweeps")[1].split("```python")[1].split("```")[0]
    scope = {}
    exec(code, scope)
    assert len(scope["texts"]) == 3 and all("#SBATCH" in t for t in scope["texts"])
    assert capsys.readouterr().out.count("kind: JobSet") == 3
