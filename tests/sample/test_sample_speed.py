"""The benchmark command of docs/performance.md runs (on the `test` preset, tiny sizes): one
row per (shape, batch, codes) cell with both samplers' rates, their ratio and the load; and
the profile command prints its table of source lines."""
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENV = {"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}


def _run(tmp_path, script, *args):
    proc = subprocess.run([sys.executable, f"benchmarks/{script}",
                           f"--config={ROOT / 'configs/t2i_shapes.py'}:test", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(ENV, HOME=str(tmp_path)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.e2e
@pytest.mark.slow
def test_documented_benchmark_runs(tmp_path):
    doc = (ROOT / "docs/performance.md").read_text()
    assert "PYTHONPATH=. python benchmarks/sample_speed.py\n" in doc
    out = _run(tmp_path, "sample_speed.py", "--shapes=tiny", "--batches=1,2", "--codes=4",
               "--repeats=2", "--check")
    lines = out.splitlines()
    header = [i for i, line in enumerate(lines) if line.startswith("| model | batch | codes |")]
    assert len(header) == 1, out                 # the table comes last, after the cells
    table = [line for line in lines[header[0]:] if line.startswith("| ")]
    cells = [[c.strip() for c in row.split("|")[1:-1]] for row in table[2:]]
    assert [(c[1], c[2]) for c in cells] == [("1", "4"), ("2", "4")]
    for c in cells:
        assert c[5].startswith("**") and c[5].endswith("]") and "x**" in c[5]
    assert "threads: torch intra-op" in out and out.count("greedy check") == 2


@pytest.mark.e2e
@pytest.mark.slow
def test_profile_names_mmar_source_lines(tmp_path):
    doc = (ROOT / "docs/performance.md").read_text()
    assert "PYTHONPATH=. python benchmarks/decode_profile.py" in doc
    out = _run(tmp_path, "decode_profile.py", "--shape=tiny", "--batch=2", "--codes=4",
               "--repeats=1")
    rows = [line for line in out.splitlines() if line.startswith("| mmar/")]
    assert rows, out
    # Every source line is a file of this repository with a line number.
    for row in rows:
        where = row.split("|")[1].split()[0]
        path, line = where.rsplit(":", 1)
        assert (ROOT / path).is_file() and int(line) > 0, row
    assert "us per token" in out and "summed op time" in out
