"""`mmar pretokenize`: token shards that resume exactly, split per process, feed the same
batches as codes in memory, and refuse to train with another tokenizer."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from mmar import config as config_lib
from mmar import rundir, schema
from mmar.data import pipeline, pretokenize, sources, tokens
from tests.helpers import text_tokenizers

ROOT = pathlib.Path(__file__).resolve().parents[2]
N_CODES = 16  # (32 // 8) ** 2 positions, depth 1


def fake_encode(images):
    """Stands in for the image tokenizer: a deterministic code per (image, position)."""
    assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
    cells = images.reshape(len(images), 4, 8, 4, 8, 3).mean(axis=(2, 4, 5))
    return (cells.reshape(len(images), N_CODES) // 2).astype(np.int32) % 125


def fake_tokenizer(workdir, step=20, content=b"weights"):
    """A tokenizer checkpoint's param files, as tokenizer_identity hashes them."""
    params = workdir / "tokenizer" / "checkpoints" / str(step) / "params"
    (params / "d").mkdir(parents=True, exist_ok=True)
    (params / "d" / "0.0").write_bytes(content)
    (params / "_METADATA").write_bytes(b"{}")
    text_tokenizers.install(workdir)   # the test preset's text tokenizer (a BPE)
    return workdir


@pytest.fixture(scope="module")
def shapes(test_config):
    return pipeline.shapes_split(test_config.data, "train")


def write(source, cfg, workdir, log=lambda m: None, **kw):
    identity = rundir.tokenizer_identity(cfg, workdir)
    return pretokenize.write_split(
        source, fake_encode, os.path.join(rundir.tokens_dir(workdir), "shapes"),
        name="shapes", split="train", identity=identity,
        settings=tokens.source_settings("shapes", cfg.data), shard_records=64,
        batch_size=32, log=log, **kw)


def shard_files(workdir):
    split = pathlib.Path(rundir.tokens_dir(workdir)) / "shapes" / "train"
    return {p.name: p.read_bytes() for p in sorted(split.iterdir())}


def test_record_round_trip():
    codes = np.arange(32, dtype=np.int32).reshape(2, 16)
    segs = [{"text": "a red circle."}, {"image": 0}, {"text": "é"}, {"image": 1}]
    rec = tokens.decode_record(tokens.encode_record(7, "document", segs, codes))
    assert rec["index"] == 7 and rec["kind"] == "document" and rec["segments"] == segs
    np.testing.assert_array_equal(rec["codes"], codes)
    assert tokens.decode_record(tokens.encode_record(0, "document", [{"text": "x"}],
                                                     np.zeros((0, 0))))["codes"].shape == (0, 0)
    with pytest.raises(ValueError, match="not an mmar token record"):
        tokens.decode_record(b"\x80\x04pickle")


@pytest.mark.faults
def test_resume_after_interruption_gives_identical_shards(shapes, test_config, tmp_path):
    whole = fake_tokenizer(tmp_path / "whole")
    write(shapes, test_config, whole)

    killed = fake_tokenizer(tmp_path / "killed")

    def interrupt(file, j):
        if file.endswith("shard_2.array_record") and j == 40:
            raise KeyboardInterrupt  # what a kill mid-shard leaves: a partial .tmp
    with pytest.raises(KeyboardInterrupt):
        write(shapes, test_config, killed, on_record=interrupt)
    left = shard_files(killed)
    assert "process_0-of-1-shard_1.array_record.done" in left
    assert "process_0-of-1-shard_2.array_record.tmp" in left
    assert "process_0-of-1-shard_2.array_record.done" not in left
    with pytest.raises(tokens.TokensError, match="2 of 4 shards unfinished"):
        tokens.open_split(rundir.tokens_dir(killed), "shapes", "train")

    stats = write(shapes, test_config, killed)
    assert (stats["shards_skipped"], stats["shards_written"], stats["records"]) == (2, 2, 128)
    assert shard_files(killed) == shard_files(whole)   # byte-identical, no .tmp left over
    assert write(shapes, test_config, killed)["shards_written"] == 0   # all done: a no-op
    meta = [(d / "tokens/shapes/metadata.json").read_text() for d in (whole, killed)]
    assert meta[0] == meta[1]


def test_two_processes_write_disjoint_shards_that_cover_the_source(shapes, test_config,
                                                                   tmp_path):
    workdir = fake_tokenizer(tmp_path)
    logs = []
    counts = [write(shapes, test_config, workdir, process_index=i, process_count=2,
                    log=logs.append, progress_every_s=0)["records"] for i in range(2)]
    assert counts == [128, 128]
    assert "shapes/train process 1/2: 32/128 records" in "\n".join(logs)
    assert all("images/s" in m and "ETA" in m for m in logs if "/128 records" in m)
    files = [f for f in shard_files(workdir) if f.endswith(".array_record")]
    assert len(files) == 4 and sum(f.startswith("process_1-of-2") for f in files) == 2
    src = tokens.open_split(rundir.tokens_dir(workdir), "shapes", "train")
    assert len(src) == len(shapes) == 256
    for i in (0, 1, 2, 63, 64, 129, 255):  # record i sits at i, whichever process wrote it
        rec, want = src[i], shapes[i]
        assert rec["index"] == i and rec["segments"][0]["text"] == want["caption"]
        np.testing.assert_array_equal(rec["codes"], fake_encode(want["image"][None]))
    from array_record.python.array_record_module import ArrayRecordReader
    seen = []
    for f in files:
        reader = ArrayRecordReader(str(pathlib.Path(src.split_dir) / f))
        seen += [tokens.decode_record(r)["index"] for r in reader.read_all()]
        reader.close()
    assert sorted(seen) == list(range(256))   # disjoint and complete


def test_shards_give_the_same_batches_as_codes_in_memory(shapes, test_config, tmp_path):
    workdir = fake_tokenizer(tmp_path)
    write(shapes, test_config, workdir)
    cfg = test_config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.data.update(pretokenized=True, caption_dropout=0.3)
    vocab = config_lib.make_vocab(cfg)
    shards = rundir.open_tokens(cfg, workdir)
    text = rundir.load_text_tokenizer(cfg, workdir)

    captions = [shapes[i]["caption"] for i in range(len(shapes))]
    codes = fake_encode(np.stack([shapes[i]["image"] for i in range(len(shapes))]))
    memory = pipeline.decoder_batches(pipeline.CaptionCodeSource(captions, codes), vocab,
                                      cfg.data, global_batch=8, seed=3, text=text)
    disk = pipeline.decoder_batches(tokens.CaptionView(shards["shapes"]), vocab, cfg.data,
                                    global_batch=8, seed=3, text=text)
    for _ in range(3):
        a, b = next(memory), next(disk)
        assert set(a) == set(b)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    with cfg.unlocked():
        cfg.data.update(mixture="shapes", seq_len=128)
    memory = sources.mixture_batches(cfg.data, fake_encode, vocab, global_batch=4, seed=1,
                                     log=lambda m: None, text=text)
    disk = sources.mixture_batches(cfg.data, None, vocab, global_batch=4, seed=1,
                                   documents=shards, log=lambda m: None, text=text)
    a, b = next(memory), next(disk)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_another_tokenizer_is_a_clear_error(shapes, test_config, tmp_path):
    workdir = fake_tokenizer(tmp_path)
    write(shapes, test_config, workdir)
    meta_path = str(tmp_path / "tokens" / "shapes" / "metadata.json")
    root = rundir.tokens_dir(workdir)

    def open_with(cfg):
        return tokens.open_split(root, "shapes", "train", data_cfg=cfg.data,
                                 identity=rundir.tokenizer_identity(cfg, workdir))

    assert len(open_with(test_config)) == 256
    fake_tokenizer(workdir, step=400, content=b"retrained")   # a newer checkpoint
    with pytest.raises(tokens.TokensError) as e:
        open_with(test_config)
    msg = str(e.value)
    assert msg.startswith(meta_path + ": made by tokenizer checkpoint sha256 ")
    assert "(step 20), this run's tokenizer is" in msg and "(step 400)" in msg
    assert "rerun `mmar pretokenize`" in msg
    with pytest.raises(tokens.TokensError, match="sha256"):   # pretokenize will not mix them
        write(shapes, test_config, workdir)

    cfg = test_config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.image_tokenizer.fsq.levels = (8, 5, 5)
        cfg.model.vocab_size = 0
    cfg = config_lib.validate(cfg)
    with pytest.raises(tokens.TokensError, match=r"image_tokenizer.fsq.levels=\[5, 5, 5\], "
                                                 r"this run has image_tokenizer.fsq.levels="
                                                 r"\[8, 5, 5\]"):
        open_with(cfg)
    with cfg.unlocked():
        cfg.image_tokenizer.fsq.levels = (5, 5, 5)
        cfg.data.num_train = 512
    with pytest.raises(tokens.TokensError, match="data.num_train=256, this run has "
                                                 "data.num_train=512"):
        open_with(cfg)


def test_shards_recorded_with_flat_tokenizer_names(shapes, test_config, tmp_path):
    """Metadata written with the older flat names (image_tokenizer.levels, codebook_size,
    rq_depth, ...) is read by the schema's names: the same settings match, another names the
    field by its place now, and a config no schema reads is one clear error."""
    workdir = fake_tokenizer(tmp_path)
    write(shapes, test_config, workdir)
    meta_path = tmp_path / "tokens" / "shapes" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    tok = meta["tokenizer"]["config"]
    flat = {k: v for k, v in tok.items() if not isinstance(v, dict)}
    for old, new in schema.RENAMED.items():
        if old.startswith("image_tokenizer."):
            section, key = new[0].split(".")[1:]
            flat[old.split(".", 1)[1]] = tok[section][key]

    def open_with(config):
        meta["tokenizer"]["config"] = config
        meta_path.write_text(json.dumps(meta))
        return tokens.open_split(rundir.tokens_dir(workdir), "shapes", "train",
                                 data_cfg=test_config.data,
                                 identity=rundir.tokenizer_identity(test_config, workdir))

    assert "levels" in flat and "rq_depth" in flat
    assert len(open_with(flat)) == 256
    with pytest.raises(tokens.TokensError, match=r"made with image_tokenizer.fsq.levels="
                                                 r"\[8, 5, 5\], this run has "
                                                 r"image_tokenizer.fsq.levels=\[5, 5, 5\]"):
        open_with({**flat, "levels": [8, 5, 5]})
    with pytest.raises(tokens.TokensError, match=r"tokenizer config is not one this mmar "
                                                 r"reads .*image_tokenizer.wobble"):
        open_with({**flat, "wobble": 1})


@pytest.mark.e2e
@pytest.mark.slow
def test_documented_pretokenize_commands(tmp_path, data_dir):
    """docs/data.md's Pretokenize block runs (test preset), then a mismatched run stops."""
    text = (ROOT / "docs/data.md").read_text()
    block = text.split("tests/data/test_pretokenize.py runs this block")[1].split("```bash")[1]
    cmds = [line.split() for line in block.split("```")[0].strip().splitlines()]
    assert [c[:2] for c in cmds] == [["mmar", "tokenizer-train"], ["mmar", "pretokenize"],
                                     ["mmar", "train"]]
    env = dict(os.environ, MMAR_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT),
               TF_CPP_MIN_LOG_LEVEL="2")
    fast = {"tokenizer-train": ["--config.image_tokenizer.train.steps=2"],
            "train": ["--config.train.steps=2", "--config.checkpoint.every_steps=2"]}

    def mmar(cmd, *extra, ok=True):
        args = [a.replace(":tiny", ":test").replace("configs/", f"{ROOT}/configs/")
                if a.startswith("--config=") else f"--workdir={tmp_path}"
                if a.startswith("--workdir=") else a for a in cmd[1:]]
        proc = subprocess.run([sys.executable, "-m", "mmar", *args, *extra], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=600)
        assert (proc.returncode == 0) == ok, proc.stdout[-2000:] + proc.stderr[-3000:]
        return proc

    # the test preset's text tokenizer is a BPE, trained first (the doc's tiny is bytes)
    mmar(["mmar", "text-tokenizer-train",
          *[a for a in cmds[0][2:] if a.startswith(("--config=", "--workdir="))]])
    for cmd in cmds:
        out = mmar(cmd, *fast.get(cmd[1], [])).stdout
    assert "[data] token shards: shapes (256 documents)" in out
    assert "[tokenize]" not in out and "[decoder] step 2/2" in out
    assert len(list((tmp_path / "tokens/shapes/train").glob("*.done"))) == 4
    proc = mmar(cmds[2], "--config.image_tokenizer.fsq.levels=8,5,5", "--config.train.steps=4",
                ok=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"mmar {cmds[2][1]}: error: {tmp_path}/tokens/shapes/metadata.json: made with "
        "image_tokenizer.fsq.levels=")


def test_interleaved_documents_round_trip(test_config, tmp_path):
    """Stories (several images per document) come back as encode_documents makes them."""
    from mmar.data import mixture
    stories = sources.load("stories", test_config.data, "train", log=lambda m: None)
    workdir = fake_tokenizer(tmp_path)
    pretokenize.write_split(stories, fake_encode, str(tmp_path / "tokens" / "stories"),
                            name="stories", split="train",
                            identity=rundir.tokenizer_identity(test_config, workdir),
                            shard_records=100, log=lambda m: None)
    disk = tokens.open_split(tmp_path / "tokens", "stories", "train")
    memory = mixture.encode_documents(fake_encode, stories, log=lambda m: None)
    assert len(disk) == len(memory) == len(stories)
    for i in (0, 99, 100, len(stories) - 1):
        a, b = memory[i], disk[i]
        assert (a["kind"], a["segments"]) == (b["kind"], b["segments"])
        assert b["codes"].shape[0] == len(stories[i]["images"]) > 1
        np.testing.assert_array_equal(a["codes"], b["codes"])
