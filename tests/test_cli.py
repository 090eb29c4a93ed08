"""The command line on the `test` preset: each stage produces its files, errors name fields."""
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = f"--config={ROOT / 'configs/t2i_shapes.py'}:test"
REPORT_KEYS = ("tokenizer_reconstruction_accuracy", "t2i_accuracy", "i2t_accuracy",
               "t2i_accuracy_unseen_combos", "loss_text", "loss_image", "train_seconds")


def doc_commands() -> dict[str, list[str]]:
    """The stage commands shown in docs/first_run.md, by command name."""
    text = (ROOT / "docs/first_run.md").read_text()
    block = text.split("tests/test_cli.py runs this block")[1].split("```bash")[1]
    block = block.split("```")[0]
    lines = [line.split() for line in block.strip().splitlines()]
    assert all(line[0] == "mmar" for line in lines)
    return {line[1]: line[2:] for line in lines}


def doc_args(command, run_dir):
    """A documented command with the `test` preset and a temporary workdir."""
    args = []
    for arg in doc_commands()[command]:
        if arg.startswith("--config="):
            arg = f"--config={ROOT}/" + arg.split("=", 1)[1].replace(":tiny", ":test")
        elif arg.startswith("--workdir="):
            arg = f"--workdir={run_dir}"
        args.append(arg)
    return [command, *args]


def mmar(*args, data_dir, check=True):
    env = dict(os.environ, MMAR_DATA_DIR=str(data_dir))
    proc = subprocess.run([sys.executable, "-m", "mmar", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode:
        raise AssertionError(f"mmar {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
    return tmp_path_factory.mktemp("run")


def test_docs_show_every_stage():
    assert list(doc_commands()) == ["tokenizer-train", "train", "sample", "eval"]


@pytest.mark.e2e
def test_help_lists_commands(data_dir):
    out = mmar("--help", data_dir=data_dir).stdout
    for command in ("tokenizer-train", "train", "sample", "eval", "demo"):
        assert command in out


@pytest.mark.e2e
def test_bad_config_field_is_named(data_dir, tmp_path):
    proc = mmar("train", CONFIG, f"--workdir={tmp_path}", "--config.train.steps=-3",
                data_dir=data_dir, check=False)
    assert proc.returncode != 0
    assert "train.steps=-3" in proc.stderr


def _has_events(path):
    return any(p.name.startswith("events.out.tfevents") for p in path.iterdir())


@pytest.mark.e2e
@pytest.mark.slow
def test_missing_text_tokenizer_names_its_command(data_dir, tmp_path):
    proc = mmar("train", CONFIG, f"--workdir={tmp_path}", data_dir=data_dir, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"mmar train: error: vocab.text_tokenizer='bpe': no trained text tokenizer in "
        f"{tmp_path}/text_tokenizer: run `mmar text-tokenizer-train` with the same --config "
        "and --workdir first")


@pytest.mark.e2e
@pytest.mark.slow
def test_text_tokenizer_train(run_dir, data_dir):
    """The `test` preset's text tokenizer is a tiny BPE (the demo's is bytes): its stage
    comes first, and a rerun keeps it."""
    out = mmar("text-tokenizer-train", CONFIG, f"--workdir={run_dir}", data_dir=data_dir).stdout
    tok = run_dir / "text_tokenizer"
    summary = json.loads((tok / "summary.json").read_text())
    assert summary["kind"] == "bpe" and summary["vocab_size"] == 300
    assert summary["filler_ids"] == 0 and summary["bytes_per_token"] > 2.0
    assert "bytes per token" in out and (tok / "tokenizer.json").is_file()
    before = (tok / "tokenizer.json").read_bytes()
    again = mmar("text-tokenizer-train", CONFIG, f"--workdir={run_dir}", data_dir=data_dir)
    assert "already trained" in again.stdout
    assert (tok / "tokenizer.json").read_bytes() == before


@pytest.mark.e2e
@pytest.mark.slow
def test_tokenizer_train(run_dir, data_dir):
    out = mmar(*doc_args("tokenizer-train", run_dir), data_dir=data_dir).stdout
    assert "[tokenizer] step 20/20" in out
    tok = run_dir / "tokenizer"
    assert (tok / "checkpoints" / "20").is_dir()
    rows = [json.loads(line) for line in (tok / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20] and all("psnr" in r for r in rows)
    assert _has_events(tok)


@pytest.mark.e2e
@pytest.mark.slow
def test_train(run_dir, data_dir):
    out = mmar(*doc_args("train", run_dir), data_dir=data_dir).stdout
    assert "[decoder] step 12/12" in out and "tok/s" in out and "MFU" in out
    dec = run_dir / "decoder"
    assert sorted(p.name for p in (dec / "checkpoints").iterdir() if p.name.isdigit()) == \
        ["12", "6"]
    rows = [json.loads(line) for line in (dec / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 12]
    assert {"loss_text", "loss_image", "accuracy_text", "accuracy_image"} <= set(rows[-1])
    assert _has_events(dec)
    saved = json.loads((dec / "checkpoints" / "12" / "config" / "metadata").read_text())
    assert saved["train"]["steps"] == 12 and saved["preset"] == "test"


@pytest.mark.e2e
@pytest.mark.slow
def test_train_again_keeps_the_finished_run(run_dir, data_dir):
    summary = run_dir / "decoder" / "summary.json"
    before = summary.read_text()
    out = mmar(*doc_args("train", run_dir), data_dir=data_dir).stdout
    assert "resumed from step 12" in out and "already trained to step 12" in out
    assert summary.read_text() == before


@pytest.mark.e2e
@pytest.mark.slow
def test_sample(run_dir, data_dir):
    mmar(*doc_args("sample", run_dir), data_dir=data_dir)
    samples = run_dir / "samples"
    from PIL import Image
    grid = Image.open(samples / "t2i_test.png")
    assert grid.size[0] > 32 and grid.size[1] > 32
    t2i = [json.loads(x) for x in (samples / "t2i_test.jsonl").read_text().splitlines()]
    i2t = [json.loads(x) for x in (samples / "i2t_test.jsonl").read_text().splitlines()]
    assert len(t2i) == len(i2t) == 8
    assert all(isinstance(r["generated"], str) for r in i2t)
    stories = [json.loads(x) for x in (samples / "interleaved_test.jsonl").read_text().splitlines()]
    digits = [json.loads(x) for x in (samples / "digits_test.jsonl").read_text().splitlines()]
    assert len(stories) == len(digits) == 8
    assert stories[0]["generated"][0] == {"image": 0}   # the next image comes first
    for rec in t2i + i2t + stories + digits:   # every sample says how to re-draw it
        assert rec["settings"]["cfg_scale_image"] == 2.0 and rec["seed"] >= 0
    assert [r["row"] for r in t2i] == list(range(8)) and {r["batch"] for r in t2i} == {0}
    assert (samples / "interleaved_test.png").exists() and (samples / "digits_test.png").exists()


@pytest.mark.e2e
@pytest.mark.slow
def test_eval_writes_report(run_dir, data_dir):
    mmar(*doc_args("eval", run_dir), data_dir=data_dir)
    report = json.loads((run_dir / "report.json").read_text())
    for key in REPORT_KEYS:
        assert key in report, key
    for key in REPORT_KEYS[:4]:
        assert 0.0 <= report[key] <= 1.0
    assert report["train_seconds"] > 0 and report["decoder_step"] == 12
    new_keys = ("perplexity_text", "perplexity_image", "tokenizer_psnr", "codebook_perplexity",
                "geneval_overall", "geneval_unseen_overall", "next_image_accuracy",
                "digits_accuracy", "digits_classifier_accuracy", "frechet_builtin")
    for key in new_keys:
        assert key in report, key
    assert report["digits_classifier_accuracy"] >= 0.9 and report["frechet_builtin"] > 0
    assert abs(report["perplexity_image"] - math.exp(report["loss_image"])) < 1e-3


@pytest.mark.e2e
def test_distributed_flags_go_together(data_dir, tmp_path):
    proc = mmar("train", CONFIG, f"--workdir={tmp_path}", "--num_processes=2",
                data_dir=data_dir, check=False)
    assert proc.returncode != 0 and "--coordinator_address, --num_processes and " \
        "--process_id go together" in proc.stderr


@pytest.mark.e2e
@pytest.mark.slow
def test_train_on_two_processes(run_dir, data_dir, tmp_path):
    """`mmar train` as two processes of 4 CPU devices each, started by `mmar launch local`
    (docs/pods.md, docs/training.md): each process's lines come prefixed with its index."""
    import shutil
    for stage in ("text_tokenizer", "tokenizer"):
        shutil.copytree(run_dir / stage, tmp_path / stage)
    out = mmar("launch", "local", "--num_processes=2", "--devices_per_process=4", "--",
               "train", CONFIG, f"--workdir={tmp_path}", data_dir=data_dir).stdout
    lines = out.splitlines()
    first = "\n".join(line[4:] for line in lines if line.startswith("[0] "))
    assert "'data': 8" in first and "[decoder] step 12/12" in first
    assert any(line.startswith("[1] ") for line in lines)
    states = (tmp_path / "decoder" / "checkpoints" / "12" / "data").glob("process_*.json")
    assert sorted(p.name for p in states) == ["process_0-of-2.json", "process_1-of-2.json"]
