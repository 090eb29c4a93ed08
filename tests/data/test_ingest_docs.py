"""docs/data.md's streamed-ingestion walkthrough runs as written (the `test` preset, a few
steps): generated shards with bad records, a tokenizer, `mmar pretokenize` as two processes
through `mmar launch local`, training on the mixture from the shards; and the two
processes' shards are byte for byte those of one process."""
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def doc_commands():
    text = (ROOT / "docs/data.md").read_text()
    block = text.split("tests/data/test_ingest_docs.py runs this block")[1].split("```bash")[1]
    return [shlex.split(line) for line in block.split("```")[0].strip().splitlines()]


def shard_bytes(workdir):
    root = workdir / "tokens"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".tmp" not in p.name}


@pytest.mark.e2e
@pytest.mark.slow
def test_streamed_ingestion_walkthrough(tmp_path, data_dir):
    cmds = doc_commands()
    assert [c[:2] for c in cmds] == [["python", "-m"], ["mmar", "tokenizer-train"],
                                     ["mmar", "launch"], ["mmar", "train"]]
    env = dict(os.environ, MMAR_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT),
               TF_CPP_MIN_LOG_LEVEL="2")
    # The test preset, bytes for text (its own BPE needs `mmar text-tokenizer-train`,
    # which this walkthrough is not about), a few steps.
    extra = {"tokenizer-train": ["--config.image_tokenizer.train.steps=2"],
             "train": ["--config.train.steps=2", "--config.checkpoint.every_steps=2"]}
    common = ["--config.vocab.text_tokenizer=bytes", "--config.model.vocab_size=0"]

    def run(cmd, ok=True):
        args = [a.replace(":tiny", ":test").replace("configs/", f"{ROOT}/configs/")
                if a.startswith("--config=") else a for a in cmd]
        if args[0] == "python":
            args[0] = sys.executable
        else:
            stage = args[3] if args[1] == "launch" and "--" in args else args[1]
            args = [sys.executable, "-m", "mmar", *args[1:], *common, *extra.get(stage, [])]
        proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)
        assert (proc.returncode == 0) == ok, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    outs = [run(cmd) for cmd in cmds]
    pre, train = outs[2], outs[3]
    for i in (0, 1):
        assert f"[{i}] [pretokenize] done" in pre
        assert (f"[{i}] [ingest] webdataset-webdataset-0ab2ee1d/train process {i}/2: 32 of 36 "
                "records kept; skipped by kind: bad_utf8: 1, missing_caption: 1, "
                "unreadable_image: 1, wrong_type: 1") in pre
    assert f"skipped runs/raw/parquet/train-00001.parquet:row 1: column 'text' is " in pre
    assert "obelics:runs/raw/obelics/*.parquet (16 documents)" in train
    assert "[decoder] step 2/2" in train and "[tokenize]" not in train

    # One process writes the same shards as the two did.
    one = tmp_path / "runs" / "one"
    shutil.copytree(tmp_path / "runs/ingest/tokenizer", one / "tokenizer")
    single = cmds[2][cmds[2].index("--") + 1:]
    run(["mmar", *[f"--workdir={one}" if a.startswith("--workdir=") else a for a in single]])
    two = shard_bytes(tmp_path / "runs/ingest")
    assert shard_bytes(one) == two and len(two) == 3 * (1 + 2 * 2)

    # Past max_bad_fraction: one line naming the worst file, exit status 1.
    shutil.copytree(tmp_path / "runs/ingest/tokenizer", tmp_path / "strict" / "tokenizer")
    err = run(["mmar", *[a for a in single if "max_bad_fraction" not in a and
                         not a.startswith("--workdir=")], f"--workdir={tmp_path / 'strict'}"],
              ok=False)
    last = err.strip().splitlines()[-1]
    assert ("error: webdataset:runs/raw/webdataset/*.tar: 8 of 72 records bad, more than "
            "data.max_bad_fraction=0.01 (64 of 72 records kept; skipped by kind: bad_utf8: 2, "
            "missing_caption: 2, unreadable_image: 2, wrong_type: 2); worst file: "
            "runs/raw/webdataset/shard-00000.tar (4 of 36 bad: bad_utf8: 1, missing_caption: "
            "1, unreadable_image: 1, wrong_type: 1; first: runs/raw/webdataset/shard-00000.tar"
            ":000009990: no .txt or .json member)") in last, last
    assert "Traceback" not in err
