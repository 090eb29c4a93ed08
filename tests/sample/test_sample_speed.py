"""The benchmark command of docs/performance.md runs (on the `test` preset, tiny sizes) and
compares the three samplers it documents."""
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.e2e
@pytest.mark.slow
def test_documented_benchmark_runs(tmp_path):
    doc = (ROOT / "docs/performance.md").read_text()
    assert "PYTHONPATH=. python benchmarks/sample_speed.py\n" in doc
    proc = subprocess.run(
        [sys.executable, "benchmarks/sample_speed.py",
         f"--config={ROOT / 'configs/t2i_shapes.py'}:test", "--batch=2", "--codes=4",
         "--repeats=1"], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2",
             "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    names = [r.split("|")[1].strip() for r in rows[2:]]
    assert names == ["mmar KV cache", "mmar KV cache, CFG 2", "mmar no cache",
                     "transformers generate"]
    assert rows[2].split("|")[4].strip() == "1.00x"
