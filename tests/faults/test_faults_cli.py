"""Faults at the command line: a stage run before the one it needs, a mesh that does not fit
the devices, a run directory that cannot be written, unreadable checkpoints. Each ends with one
line on stderr (`mmar <command>: error: ...`) and exit status 1, a traceback only with
--verbose; an error mmar did not anticipate keeps its traceback."""
import os
import pathlib
import subprocess
import sys

import pytest

from mmar import errors, rundir
from mmar.jobs import eval as eval_job
from mmar.jobs import pretokenize as pretokenize_job
from mmar.jobs import sample as sample_job
from mmar.jobs import train as train_job
from tests.helpers import export_runs, text_tokenizers

pytestmark = pytest.mark.faults

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = f"--config={ROOT / 'configs/t2i_shapes.py'}:test"


def mmar(*args, data_dir, env=None):
    env = dict(os.environ, MMAR_DATA_DIR=str(data_dir), **(env or {}))
    return subprocess.run([sys.executable, "-m", "mmar", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def one_line(proc, command: str) -> str:
    """The error line of a failed command; asserts it is the only one and has no traceback."""
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [l for l in proc.stderr.splitlines() if f"mmar {command}: error:" in l]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.mark.e2e
def test_train_before_tokenizer_train_names_the_missing_stage(data_dir, tmp_path):
    # The test preset's text tokenizer is a BPE: the first stage of all.
    proc = mmar("train", CONFIG, f"--workdir={tmp_path}", data_dir=data_dir)
    line = one_line(proc, "train")
    assert "no trained text tokenizer" in line and "mmar text-tokenizer-train" in line
    text_tokenizers.install(tmp_path)
    proc = mmar("train", CONFIG, f"--workdir={tmp_path}", data_dir=data_dir)
    line = one_line(proc, "train")
    # Before: a FileNotFoundError traceback, then Orbax's "cannot schedule new futures".
    assert "no trained image tokenizer" in line and "mmar tokenizer-train" in line
    assert "cannot schedule new futures" not in proc.stderr


@pytest.mark.e2e
def test_verbose_adds_the_traceback(data_dir, tmp_path):
    proc = mmar("train", CONFIG, f"--workdir={tmp_path}", "--verbose", data_dir=data_dir)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "MissingStageError" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("mmar train: error: ")
    assert "no trained" in proc.stderr.rstrip().splitlines()[-1]


@pytest.mark.e2e
def test_an_unanticipated_error_keeps_its_traceback(data_dir, tmp_path):
    code = ("import sys; from mmar import cli\n"
            "def boom(*a, **k): raise ZeroDivisionError('a bug')\n"
            "cli._job = lambda command: boom\n"
            f"sys.exit(cli.main(['mmar', 'sample', {CONFIG!r}, '--workdir={tmp_path}']))")
    env = dict(os.environ, MMAR_DATA_DIR=str(data_dir))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ZeroDivisionError: a bug" in proc.stderr


@pytest.mark.e2e
def test_a_mesh_that_does_not_divide_the_devices_is_one_line(data_dir, tmp_path):
    # 8 fake devices (make test's XLA_FLAGS); tensor=3 cannot divide them.
    proc = mmar("tokenizer-train", CONFIG, f"--workdir={tmp_path}", "--config.mesh.tensor=3",
                data_dir=data_dir)
    line = one_line(proc, "tokenizer-train")   # before: the right message inside a traceback
    assert "mesh:" in line and "'tensor': 3" in line


@pytest.mark.e2e
def test_a_workdir_that_cannot_be_written_is_one_line(data_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    proc = mmar("train", CONFIG, f"--workdir={blocker / 'run'}", data_dir=data_dir)
    line = one_line(proc, "train")
    assert f"--workdir={blocker / 'run'} cannot be written" in line
    assert blocker.read_text() == "not a directory"


@pytest.mark.e2e
def test_unreadable_tokenizer_checkpoints_are_one_line(data_dir, tmp_path):
    cfg = export_runs.make_config()
    export_runs.write_run(tmp_path, cfg)
    params = tmp_path / "tokenizer/checkpoints/3/params"
    for f in params.rglob("*"):
        if f.is_file():
            f.write_bytes(b"\0garbage")
    proc = mmar("sample", CONFIG, f"--workdir={tmp_path}", data_dir=data_dir)
    line = one_line(proc, "sample")
    assert "none of the 1 checkpoints" in line and "tokenizer/checkpoints" in line
    assert (tmp_path / "tokenizer/checkpoints/3").is_dir()        # reading moves nothing


@pytest.mark.parametrize("job, needs", [(sample_job, "mmar train"), (eval_job, "mmar train"),
                                        (pretokenize_job, "mmar tokenizer-train"),
                                        (train_job, "mmar tokenizer-train")])
def test_each_stage_names_the_one_it_needs(test_config, tmp_path, job, needs):
    text_tokenizers.install(tmp_path, test_config)
    with pytest.raises(errors.MissingStageError) as e:
        job.run(test_config, tmp_path, log=lambda m: None)
    assert f"run `{needs}` with the same --config and --workdir first" in str(e.value)
    assert not (tmp_path / rundir.DECODER).exists()


@pytest.mark.parametrize("command, args, says", [
    ("export", ["--out", "OUT"], "no mmar decoder checkpoint"),
    ("import", ["--out", "OUT"], "config.json"),
])
def test_export_and_import_of_a_directory_without_a_model_are_one_line(
        tmp_path, capsys, command, args, says):
    from mmar import cli
    empty = tmp_path / "empty"
    empty.mkdir()
    status = cli.main(["mmar", command, str(empty),
                       *[str(tmp_path / a) if a == "OUT" else a for a in args]])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    lines = [l for l in err.splitlines() if l.startswith(f"mmar {command}: error:")]
    assert len(lines) == 1 and says in lines[0], err
    assert not (tmp_path / "OUT").exists()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random-weight run of the test preset and its transformers export."""
    from mmar.export import hf
    root = tmp_path_factory.mktemp("exported")
    export_runs.write_run(root / "run", export_runs.make_config())
    hf.export(root / "run", root / "hf", log=lambda _: None)
    return root


@pytest.mark.parametrize("damage, says", [
    ("truncate", "model.safetensors: truncated: tensor "),
    ("garbage", "model.safetensors: not a safetensors file"),
])
def test_import_of_a_damaged_export_is_one_line_naming_the_file(exported, tmp_path, capsys,
                                                                 damage, says):
    # Before (truncated): "mmar import: error: mmap length is greater than file size".
    import shutil

    from mmar import cli
    hf_dir = tmp_path / "hf"
    shutil.copytree(exported / "hf", hf_dir)
    weights = hf_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2] if damage == "truncate" else b"\0" * 100)
    status = cli.main(["mmar", "import", str(hf_dir), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("mmar import: error:")]
    assert status == 1 and "Traceback" not in err and len(lines) == 1, err
    assert f"{weights}: " in lines[0] and says in lines[0], lines[0]
    assert not (tmp_path / "out" / "decoder").exists()


def test_export_of_a_damaged_checkpoint_is_one_line(exported, tmp_path, capsys):
    import shutil

    from mmar import cli
    run = tmp_path / "run"
    shutil.copytree(exported / "run", run)
    for f in (run / "decoder" / "checkpoints").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    status = cli.main(["mmar", "export", str(run), "--format", "hf", "--out",
                       str(tmp_path / "hf")])
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("mmar export: error:")]
    assert status == 1 and "Traceback" not in err and len(lines) == 1, err
    assert str(run / "decoder" / "checkpoints") in lines[0]
    assert not (tmp_path / "hf" / "model.safetensors").exists()


def test_export_into_a_directory_that_is_not_an_export_is_refused(exported, tmp_path, capsys):
    """An export replaces weight files: over a downloaded model's directory it would have
    deleted that model's weights (before: silently). Over an earlier export it is fine."""
    from mmar import cli
    other = tmp_path / "someone_elses_model"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"their weights")
    (other / "config.json").write_text("{}")
    status = cli.main(["mmar", "export", str(exported / "run"), "--format", "hf", "--out",
                       str(other)])
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("mmar export: error:")]
    assert status == 1 and len(lines) == 1 and "not an mmar export" in lines[0], err
    assert (other / "model.safetensors").read_bytes() == b"their weights"
    again = tmp_path / "again"
    for _ in range(2):   # a new directory, then over that export: both fine
        assert cli.main(["mmar", "export", str(exported / "run"), "--format", "hf", "--out",
                         str(again)]) == 0
