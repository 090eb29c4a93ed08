"""docs/training.md's dry-run block runs as written and prints what the doc says it does."""
import os
import pathlib
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _block() -> list[list[str]]:
    text = (ROOT / "docs/training.md").read_text()
    block = text.split("tests/train/test_training_docs.py runs this block")[1]
    block = block.split("```bash")[1].split("```")[0]
    return [shlex.split(line) for line in block.strip().splitlines()]


@pytest.mark.e2e
@pytest.mark.slow
def test_dry_run_commands_in_the_doc_run():
    commands = _block()
    assert len(commands) == 3 and all(c[:3] == ["mmar", "train", "--config=configs/pretrain.py:1b"]
                                      or c[2].startswith("--config=configs/pretrain.py:7b")
                                      for c in commands)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    for command in commands:
        out = subprocess.run([sys.executable, "-m", "mmar", *command[1:]], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "(256 devices)" in out.stdout and "per device: arguments" in out.stdout
        assert "blocks/attn/q" in out.stdout              # the parameter table
