"""`mmar launch local`: process lines, output prefixes, and stopping the rest on a failure.
(The 2-process training job through this launcher is tests/test_cli.py.)"""
import io
import shlex
import sys
import time

from mmar.launch import common, local

SPEC = common.RunSpec("configs/t2i_shapes.py:test", "/tmp/a run")


def test_dry_run_lines():
    text = local.render(SPEC, local.Options(num_processes=3, devices_per_process=2,
                                            python="python"), port=4321)
    lines = [shlex.split(l) for l in text.strip().splitlines()]
    assert len(lines) == 3
    for i, argv in enumerate(lines):
        assert argv[0] == "XLA_FLAGS=--xla_force_host_platform_device_count=2"
        assert argv[1] == "JAX_PLATFORMS=cpu"
        assert argv[2:] == ["python", "-m", "mmar", "train", "--config=configs/t2i_shapes.py:test",
                            "--workdir=/tmp/a run", "--coordinator_address=127.0.0.1:4321",
                            "--num_processes=3", f"--process_id={i}"]


def test_supervise_prefixes_lines_and_waits():
    out = io.StringIO()
    code = "import sys; print('hello', sys.argv[1])"
    status = local.supervise([[sys.executable, "-c", code, str(i)] for i in range(2)], out=out)
    assert status == 0
    assert sorted(out.getvalue().splitlines()) == ["[0] hello 0", "[1] hello 1"]


def test_a_failure_stops_the_others():
    out = io.StringIO()
    t0 = time.monotonic()
    status = local.supervise([[sys.executable, "-c", "import time; time.sleep(60)"],
                              [sys.executable, "-c", "import sys; sys.exit(3)"]], out=out)
    assert status == 3 and time.monotonic() - t0 < 20
    assert "[launch] stopping process 0" in out.getvalue()
