"""`mmar pretokenize` straight from streamed sources: one token shard per input file, the
same bytes with one process or two, after an interruption or a kill -9; read back by
`tokens.open_split` into the same training batches as codes kept in memory."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mmar import config as config_lib
from mmar import derived, rundir
from mmar.data import sources, tokens
from mmar.data.ingest import example, records, shards, stream
from mmar.data.packing import BadDataError

ROOT = pathlib.Path(__file__).resolve().parents[2]
OPTS = records.Options(image_size=32)


def fake_encode(images):
    """Stands in for the image tokenizer: a deterministic code per (image, position)."""
    assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
    cells = images.reshape(len(images), 4, 8, 4, 8, 3).mean(axis=(2, 4, 5))
    return (cells.reshape(len(images), 16) // 2).astype(np.int32) % 125


def fake_tokenizer(workdir):
    params = pathlib.Path(workdir) / "tokenizer" / "checkpoints" / "20" / "params"
    params.mkdir(parents=True, exist_ok=True)
    (params / "0.0").write_bytes(b"weights")
    return pathlib.Path(workdir)


def write(name, cfg, workdir, **kw):
    kw.setdefault("log", lambda m: None)
    return shards.write_source(
        name, fake_encode, os.path.join(rundir.tokens_dir(workdir), tokens.source_key(name)),
        opts=OPTS, identity=rundir.tokenizer_identity(cfg, workdir),
        settings=tokens.source_settings(name, cfg.data), batch_size=8, **kw)


def files(workdir, name):
    root = pathlib.Path(rundir.tokens_dir(workdir)) / tokens.source_key(name)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def cfg(test_config):
    """The `test` preset with the byte text tokenizer: these tests need no trained one."""
    c = test_config.copy_and_resolve_references()
    with c.unlocked():
        c.vocab.text_tokenizer = "bytes"
        c.model.vocab_size = 0
    return config_lib.validate(c)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    example.write_all(root, records=12, files=3, bad=True)
    return root


def test_mixture_names_and_source_keys(raw, cfg):
    name = f"webdataset:{raw}/webdataset/*.tar"
    assert derived.parse_mixture(f"{name}:0.5,parquet:{raw}/parquet/*.parquet") == [
        (name, 0.5), (f"parquet:{raw}/parquet/*.parquet", 1.0)]
    assert derived.parse_mixture("obelics:gs://bucket/docs-*.parquet:2") == [
        ("obelics:gs://bucket/docs-*.parquet", 2.0)]   # gs:// is checked when read
    with pytest.raises(ValueError, match="no file matches"):
        derived.parse_mixture(f"parquet:{raw}/none/*.parquet")
    bad = cfg.copy_and_resolve_references()
    with bad.unlocked():
        bad.data.mixture = "tar:x/*.tar"
    with pytest.raises(config_lib.ConfigError, match="webdataset:GLOB"):
        config_lib.validate(bad)
    key = tokens.source_key(name)
    assert key.startswith("webdataset-webdataset-") and "/" not in key and "*" not in key
    assert tokens.source_key(f"webdataset:{raw}/other/*.tar") != key


def test_shards_read_back_as_the_same_batches_as_codes_in_memory(raw, cfg, tmp_path):
    names = [f"webdataset:{raw}/webdataset/*.tar", f"parquet:{raw}/parquet/*.parquet",
             f"obelics:{raw}/obelics/*.parquet"]
    cfg = cfg.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.data.update(mixture=",".join(f"{n}:1" for n in names), seq_len=256,
                        max_bad_fraction=0.4, pretokenized=True)
        cfg.data.ingest.batch_size = 8
    cfg = config_lib.validate(cfg)
    workdir = fake_tokenizer(tmp_path)
    logs = []
    stats = [write(n, cfg, workdir, max_bad_fraction=0.4, log=logs.append) for n in names]
    assert [s["records"] for s in stats] == [36, 36, 9]
    assert stats[0]["tally"]["bad"] == {k: 3 for k in example.BAD["webdataset"]}
    assert any("skipped " in m and ":000009991: unreadable image 0" in m for m in logs)
    opened = rundir.open_tokens(cfg, workdir)
    src = opened[names[0]]
    assert len(src) == 36
    first = next(x for x in stream.READERS["webdataset"](f"{raw}/webdataset/shard-00000.tar",
                                                         OPTS) if isinstance(x, records.Item))
    rec = src[0]
    assert rec["index"] == 0 and rec["segments"] == first.segments
    np.testing.assert_array_equal(
        rec["codes"], fake_encode(records.decode_image(first.images[0], 32)[None]))
    assert src[12]["index"] == 0 and src[35]["index"] == 11   # shard 1 starts at 12
    vocab = config_lib.make_vocab(cfg)
    memory = sources.mixture_batches(cfg.data, fake_encode, vocab, global_batch=4, seed=1,
                                     log=lambda m: None)
    disk = sources.mixture_batches(cfg.data, None, vocab, global_batch=4, seed=1,
                                   documents=opened, log=lambda m: None)
    for _ in range(3):
        a, b = next(memory), next(disk)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_two_processes_write_what_one_writes(raw, cfg, tmp_path):
    name = f"webdataset:{raw}/webdataset/*.tar"
    one, two = fake_tokenizer(tmp_path / "one"), fake_tokenizer(tmp_path / "two")
    write(name, cfg, one, max_bad_fraction=0.5)
    logs = []
    counts = [write(name, cfg, two, process_index=i, process_count=2,
                    max_bad_fraction=0.5, log=logs.append,
                    progress_every_s=0)["shards_written"] for i in range(2)]
    assert counts == [2, 1]   # input files 0, 2 and 1
    assert files(one, name) == files(two, name) and len(files(one, name)) == 7
    assert any("process 1/2: file 1/1" in m and "records/s, ETA " in m for m in logs)
    done = json.loads(files(one, name)["train/input_00001.array_record.done"])
    assert done["input"] == f"{raw}/webdataset/shard-00001.tar" and done["seen"] == 16
    assert done["bad"] == {k: 1 for k in example.BAD["webdataset"]}


def test_interrupted_run_resumes_to_identical_shards(raw, cfg, tmp_path):
    name = f"parquet:{raw}/parquet/*.parquet"
    whole, cut = fake_tokenizer(tmp_path / "whole"), fake_tokenizer(tmp_path / "cut")
    write(name, cfg, whole, max_bad_fraction=0.5)

    def interrupt(file, j):
        if file == "input_00001.array_record" and j == 5:
            raise KeyboardInterrupt   # what a kill mid-shard leaves: a partial .tmp
    with pytest.raises(KeyboardInterrupt):
        write(name, cfg, cut, max_bad_fraction=0.5, on_record=interrupt)
    left = files(cut, name)
    assert "train/input_00000.array_record.done" in left
    assert "train/input_00001.array_record.tmp" in left
    with pytest.raises(tokens.TokensError, match="2 of 3 shards unfinished"):
        tokens.open_split(rundir.tokens_dir(cut), name, "train")
    stats = write(name, cfg, cut, max_bad_fraction=0.5)
    assert (stats["shards_skipped"], stats["shards_written"]) == (1, 2)
    assert files(cut, name) == files(whole, name)
    # The bad-record verdict is read back from the .done files, nothing is encoded again.
    with pytest.raises(BadDataError, match="6 of 42 records bad.*worst file: "):
        shards.write_source(name, None, os.path.join(rundir.tokens_dir(cut),
                                                      tokens.source_key(name)),
                            opts=OPTS, identity=rundir.tokenizer_identity(cfg, cut),
                            settings=tokens.source_settings(name, cfg.data),
                            max_bad_fraction=0.01, log=lambda m: None)


def test_other_input_files_are_refused(raw, cfg, tmp_path):
    workdir = fake_tokenizer(tmp_path)
    write(f"webdataset:{raw}/webdataset/*.tar", cfg, workdir, max_bad_fraction=0.5)
    key = tokens.source_key(f"webdataset:{raw}/webdataset/*.tar")
    meta = pathlib.Path(rundir.tokens_dir(workdir)) / key / "metadata.json"
    data = json.loads(meta.read_text())
    data["splits"]["train"]["inputs"] = data["splits"]["train"]["inputs"][:2]
    meta.write_text(json.dumps(data))
    with pytest.raises(tokens.TokensError, match="written from 2 input files"):
        write(f"webdataset:{raw}/webdataset/*.tar", cfg, workdir,
              max_bad_fraction=0.5)


KILL_SCRIPT = """
import sys, time, numpy as np
from mmar import config as config_lib, rundir
from mmar.data import tokens
from mmar.data.ingest import records, shards
cfg = config_lib.load(sys.argv[1])
cfg.vocab.text_tokenizer, cfg.model.vocab_size = "bytes", 0
cfg = config_lib.validate(cfg)
workdir, name, slow = sys.argv[2], sys.argv[3], float(sys.argv[4])
def encode(images):
    time.sleep(slow)
    cells = images.reshape(len(images), 4, 8, 4, 8, 3).mean(axis=(2, 4, 5))
    return (cells.reshape(len(images), 16) // 2).astype(np.int32) % 125
shards.write_source(name, encode, f"{rundir.tokens_dir(workdir)}/{tokens.source_key(name)}",
                    opts=records.Options(image_size=32),
                    identity=rundir.tokenizer_identity(cfg, workdir),
                    settings=tokens.source_settings(name, cfg.data), batch_size=4,
                    max_bad_fraction=0.5)
"""


@pytest.mark.e2e
@pytest.mark.slow
def test_kill_9_mid_shard_then_rerun_gives_identical_shards(raw, tmp_path):
    name = f"webdataset:{raw}/webdataset/*.tar"
    config = f"{ROOT}/configs/t2i_shapes.py:test"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2",
               JAX_PLATFORMS="cpu")
    whole, killed = fake_tokenizer(tmp_path / "whole"), fake_tokenizer(tmp_path / "killed")

    def run(workdir, slow):
        return subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, config, str(workdir),
                                 name, str(slow)], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    split = pathlib.Path(rundir.tokens_dir(killed)) / tokens.source_key(name) / "train"
    proc = run(killed, 0.3)
    deadline = time.time() + 240
    while not (split / "input_00001.array_record.tmp").exists() and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    time.sleep(0.4)   # a batch or two into the second shard
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = sorted(p.name for p in split.iterdir())
    assert "input_00000.array_record.done" in left and "input_00001.array_record.tmp" in left
    assert "input_00001.array_record.done" not in left
    for workdir in (killed, whole):
        p = run(workdir, 0.0)
        assert p.wait(timeout=240) == 0, p.stdout.read()
    assert files(killed, name) == files(whole, name)
