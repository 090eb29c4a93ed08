"""The run spec every launcher takes, and the command line that builds it."""
import io
import contextlib

import pytest

from mmar import launch
from mmar.jobs import launch as launch_job
from mmar.launch import common


def test_run_spec_from_args_round_trips():
    args = ["train", "--config=configs/pretrain.py:1b", "--workdir=gs://b/my run",
            "--config.train.lr=0.001", "--verbosity=1"]
    spec = common.RunSpec.from_args(args)
    assert spec.overrides == ("train.lr=0.001",) and spec.flags == ("--verbosity=1",)
    assert spec.args() == args


@pytest.mark.parametrize("args, message", [
    ([], "after `--` comes the mmar command"),
    (["export", "--config=c.py:x", "--workdir=w"], "launchers run one of"),
    (["train", "--workdir=w"], "needs --config"),
    (["train", "--config", "c.py:x", "--workdir=w"], "write --config=VALUE"),
    (["train", "--config=c.py:x", "--workdir=w", "--distributed"], "sets the process-group"),
    (["train", "--config=c.py:x", "--workdir=w", "--process_id=1"], "sets the process-group"),
])
def test_bad_run_specs_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        common.RunSpec.from_args(args)


def test_multi_slice_adds_dcn_data_unless_the_run_sets_it():
    spec = common.RunSpec("c.py:x", "gs://b/r")
    assert common.across(spec, 4).overrides == ("mesh.dcn_data=4",)
    assert common.across(spec, 1) == spec
    own = spec.with_overrides("mesh.dcn_fsdp=2")
    assert common.across(own, 4) == own


def test_names_come_from_the_workdir_and_are_checked():
    assert common.job_name(common.RunSpec("c.py:x", "gs://b/sweep/LR 3e-4/"), None) == "lr-3e-4"
    assert common.job_name(common.RunSpec("c.py:x", "gs://b/1b"), None) == "mmar-1b"
    with pytest.raises(ValueError, match="lower-case"):
        common.job_name(common.RunSpec("c.py:x", "gs://b/x"), "My_Run")


def test_sweep_api_renders_one_text_per_run():
    runs = [("configs/pretrain.py:100m", f"gs://b/sweep/lr{i}", {"train.lr": lr})
            for i, lr in enumerate((1e-4, 3e-4))]
    texts = launch.launch_commands("slurm", runs, nodes=1, gpus_per_node=4)
    assert len(texts) == 2
    assert "#SBATCH --job-name=lr0" in texts[0] and "--config.train.lr=0.0003" in texts[1]
    assert launch.render("gke", runs[0], image="img") .count("kind: JobSet") == 1
    with pytest.raises(ValueError, match="unknown launcher"):
        launch.render("aws", runs[0])


def test_cli_reports_bad_input_without_a_traceback():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = launch_job.main(["tpu", "--dry-run", "--", "train", "--config=configs/pretrain.py:1b",
                           "--workdir=/local/dir"])
    assert status == 2 and "use a gs://BUCKET/... workdir" in err.getvalue()
