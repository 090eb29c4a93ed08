"""`mmar sweep` from the command line: the command shown in docs/scaling.md on the `micro`
preset (2 runs), killed with SIGKILL during the second run's training, rerun: the first run
is skipped, the second resumes from its checkpoint, and the report and plots appear."""
import json
import os
import re
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def doc_command(workdir, *extra) -> list[str]:
    """The sweep command of docs/scaling.md with the `micro` preset and `workdir`."""
    text = (ROOT / "docs/scaling.md").read_text()
    block = text.split("tests/scaling/test_sweep_cli.py runs this block")[1]
    line = block.split("```bash")[1].split("```")[0].strip()
    args = shlex.split(line)
    assert args[:2] == ["mmar", "sweep"], line
    out = [sys.executable, "-m", "mmar", "sweep"]
    for arg in args[2:]:
        if arg.startswith("--config="):
            arg = f"--config={ROOT}/" + arg.split("=", 1)[1].replace(":mini", ":micro")
        elif arg.startswith("--workdir="):
            arg = f"--workdir={workdir}"
        out.append(arg)
    return out + list(extra)


def _env(data_dir):
    return dict(os.environ, MMAR_DATA_DIR=str(data_dir))


def _checkpoints(run_dir: pathlib.Path):
    ckpt = run_dir / "decoder" / "checkpoints"
    return [p for p in ckpt.iterdir() if p.name.isdigit()] if ckpt.is_dir() else []


@pytest.mark.e2e
@pytest.mark.slow
def test_dry_run_prints_one_command_per_run(data_dir, tmp_path):
    text = (ROOT / "docs/scaling.md").read_text()
    shown = text.split("runs this block")[1].split("```bash")[1].split("```")[0].strip()
    assert f"{shown} --dry-run" in text       # the doc's pod command is this one + --dry-run
    proc = subprocess.run(doc_command(tmp_path, "--dry-run"), cwd=ROOT, env=_env(data_dir),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    # micro is on the `test` preset, whose text tokenizer is a BPE: it is trained first
    assert [shlex.split(x)[1] for x in lines] == ["text-tokenizer-train", "tokenizer-train",
                                                  "train", "train"]
    assert not (tmp_path / "tokenizer").exists()           # nothing trained
    for line in lines[2:]:
        run_dir = pathlib.Path(shlex.split(line)[3].split("=", 1)[1])
        assert (run_dir / "tokenizer").is_symlink() and (run_dir / "run.json").exists()
        assert (run_dir / "text_tokenizer").is_symlink()
    # An emitted line is an ordinary `mmar train`: compile it (dry run) and compare sizes.
    args = shlex.split(lines[2])
    plan = json.loads((pathlib.Path(args[3].split("=", 1)[1]) / "run.json").read_text())
    proc = subprocess.run([sys.executable, "-m", "mmar", *args[1:], "--dry-run",
                           "--dry_run_devices=1"], cwd=ROOT,
                          env=_env(data_dir), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"[dry-run] {plan['params']:,} parameters" in proc.stdout


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.faults
def test_micro_sweep_killed_resumes_and_reports(data_dir, tmp_path):
    workdir = tmp_path / "sweep"
    first, second = "C1e10_d32", "C1e10_d16"     # the longest run goes last
    proc = subprocess.Popen(doc_command(workdir), cwd=ROOT, env=_env(data_dir),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.time() + 300
    while not _checkpoints(workdir / second) and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint of the second run in 300 s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    out = proc.communicate()[0]
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    assert (workdir / first / "report.json").exists()
    assert not (workdir / second / "report.json").exists()

    again = subprocess.run(doc_command(workdir), cwd=ROOT, env=_env(data_dir),
                           capture_output=True, text=True, timeout=600)
    out = again.stdout
    assert again.returncode == 0, out[-3000:] + again.stderr[-3000:]
    assert "tokenizer already trained" in out
    assert re.search(rf"run 1/2 {first}: .*: done, skipped", out)
    assert "[decoder] resumed from step" in out
    results = json.loads((workdir / "results.json").read_text())
    assert [r["name"] for r in results] == [first, second]
    for r in results:
        assert r["decoder_step"] == r["steps"]
        for key in ("loss", "loss_text", "loss_image", "t2i_accuracy", "flops", "tokens"):
            assert key in r, key
    report = (workdir / "scaling" / "report.md").read_text()
    assert first in report and second in report and "2 points" in report
    for png in ("isoflop.png", "frontier.png", "law.png"):
        assert (workdir / "scaling" / png).stat().st_size > 1000


@pytest.mark.e2e
def test_help_lists_sweep(data_dir):
    out = subprocess.run([sys.executable, "-m", "mmar", "--help"], cwd=ROOT, env=_env(data_dir),
                         capture_output=True, text=True, timeout=120).stdout
    assert "sweep" in out and "IsoFLOP" in out


@pytest.mark.e2e
def test_sweep_without_its_section_is_refused(data_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mmar", "sweep",
                           f"--config={ROOT}/configs/t2i_shapes.py:test", f"--workdir={tmp_path}"],
                          cwd=ROOT, env=_env(data_dir), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0 and "sweep: section missing" in proc.stderr
