"""docs/data.md's streamed-ingestion walkthrough runs as written (the `test` preset, a few
steps): generated shards with bad records, a BPE trained on their text, an image tokenizer,
`mmar pretokenize` as two processes through `mmar launch local`, training on the mixture
from the shards, sampling, export, and transformers' AutoTokenizer from the export encoding
a caption to mmar's ids; and the two processes' shards are byte for byte those of one
process."""
import json
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
    assert [c[:2] for c in cmds] == [
        ["python", "-m"], ["mmar", "text-tokenizer-train"], ["mmar", "tokenizer-train"],
        ["mmar", "launch"], ["mmar", "train"], ["mmar", "sample"], ["mmar", "export"],
        ["python", "-c"]]
    env = dict(os.environ, MMAR_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT),
               TF_CPP_MIN_LOG_LEVEL="2")
    # The documented commands as written, plus a few steps per stage.
    extra = {"tokenizer-train": ["--config.image_tokenizer.train.steps=2"],
             "train": ["--config.train.steps=2", "--config.checkpoint.every_steps=2"],
             "sample": ["--config.eval.num_examples=2"]}

    def run(cmd, ok=True):
        args = [a.replace("configs/", f"{ROOT}/configs/") if a.startswith("--config=") else a
                for a in cmd]
        if args[0] == "python":
            args[0] = sys.executable
        else:
            stage = args[3] if args[1] == "launch" and "--" in args else args[1]
            args = [sys.executable, "-m", "mmar", *args[1:], *extra.get(stage, [])]
        proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)
        assert (proc.returncode == 0) == ok, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    outs = [run(cmd) for cmd in cmds]
    text_train, pre, train, auto_ids = outs[1], outs[3], outs[4], outs[7]
    # The BPE learned from the shards' captions and stories (not the built-in data).
    assert "[text-tokenizer] webdataset:runs/raw/webdataset/*.tar: 2 file(s)" in text_train
    summary = json.loads((tmp_path / "runs/ingest/text_tokenizer/summary.json").read_text())
    assert summary["kind"] == "bpe" and summary["vocab_size"] == 300
    assert summary["bytes_per_token"] > 1.5
    for i in (0, 1):
        assert f"[{i}] [pretokenize] done" in pre
        assert (f"[{i}] [ingest] webdataset-webdataset-0ab2ee1d/train process {i}/2: 32 of 36 "
                "records kept; skipped by kind: bad_utf8: 1, missing_caption: 1, "
                "unreadable_image: 1, wrong_type: 1") in pre
    assert f"skipped runs/raw/parquet/train-00001.parquet:row 1: column 'text' is " in pre
    assert "obelics:runs/raw/obelics/*.parquet (16 documents)" in train
    assert "[decoder] step 2/2" in train and "[tokenize]" not in train
    assert (tmp_path / "runs/ingest/samples/t2i_test.png").is_file()

    # The export's AutoTokenizer encodes a caption to exactly mmar's ids, <bos> first.
    from mmar import config as config_lib
    from mmar import rundir
    cfg = config_lib.validate(config_lib.load(f"{ROOT}/configs/t2i_shapes.py:test"))
    text = rundir.load_text_tokenizer(cfg, tmp_path / "runs/ingest")
    vocab = config_lib.make_vocab(cfg)
    caption = cmds[7][2].split("('")[2].split("')")[0]
    assert caption == "a red circle left of a blue square"
    want = [vocab.bos, *text.encode(caption)]
    printed = [line for line in auto_ids.splitlines() if line.startswith("[")]
    assert json.loads(printed[-1]) == want
    assert len(want) < len(caption.encode()) + 1            # BPE: fewer ids than bytes

    # One process writes the same shards as the two did.
    one = tmp_path / "runs" / "one"
    for stage in ("text_tokenizer", "tokenizer"):
        shutil.copytree(tmp_path / "runs/ingest" / stage, one / stage)
    single = cmds[3][cmds[3].index("--") + 1:]
    run(["mmar", *[f"--workdir={one}" if a.startswith("--workdir=") else a for a in single]])
    two = shard_bytes(tmp_path / "runs/ingest")
    assert shard_bytes(one) == two and len(two) == 3 * (1 + 2 * 2)

    # Past max_bad_fraction: one line naming the worst file, exit status 1.
    for stage in ("text_tokenizer", "tokenizer"):
        shutil.copytree(tmp_path / "runs/ingest" / stage, tmp_path / "strict" / stage)
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
