"""data.mixture: built-in and a user's folder mixed by config alone, into packed batches."""
import collections

import numpy as np
import pytest

from mmar import config as config_lib
from mmar import derived
from mmar.data import packing, sources, user_example


def test_parse_mixture(tmp_path):
    assert derived.parse_mixture("shapes:0.6, stories:0.3,digits") == [
        ("shapes", 0.6), ("stories", 0.3), ("digits", 1.0)]
    assert derived.parse_mixture(f"{tmp_path}:2") == [(str(tmp_path), 2.0)]
    for bad in ("shapes:0", "nothing_here:1", "shapes:-1"):
        with pytest.raises(ValueError):
            derived.parse_mixture(bad)


def test_bad_mixture_names_the_field(test_config):
    cfg = test_config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.data.mixture = "shapes:1,no_such_folder:1"
    with pytest.raises(config_lib.ConfigError, match="data.mixture='shapes:1,no_such_folder:1'"):
        config_lib.validate(cfg)


def test_mixture_of_built_in_and_user_data_by_config(test_config, test_text_tokenizer,
                                                     tmp_path):
    folder = user_example.write(tmp_path / "my_data")
    cfg = test_config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.data.update(mixture=f"shapes:0.4,stories:0.2,digits:0.2,{folder}:0.2",
                        seq_len=128, max_bad_fraction=0.5)
    config_lib.validate(cfg)
    vocab = config_lib.make_vocab(cfg)
    n_codes = (cfg.data.image_size // 8) ** 2

    def encode(images):  # stands in for the image tokenizer: a code per mean brightness
        assert images.shape[1:] == (32, 32, 3) and images.dtype == np.uint8
        return np.tile((images.mean(axis=(1, 2, 3)) // 2).astype(np.int32)[:, None] %
                       vocab.num_image_codes, (1, n_codes))

    logs = []
    it = sources.mixture_batches(cfg.data, encode, vocab, global_batch=8, seed=0,
                                 log=logs.append, text=test_text_tokenizer)
    batches = [next(it) for _ in range(10)]
    assert all(b["tokens"].shape == (8, 128) for b in batches)
    assert np.mean([packing.efficiency(b) for b in batches]) > 0.8
    text = [test_text_tokenizer.decode(row) for b in batches for row in b["tokens"]]
    kinds = collections.Counter()
    for row in text:
        kinds["digits"] += row.count("the digit ")
        kinds["stories"] += row.count(" turns ") + row.count(" moves ") + row.count("appears")
    assert kinds["digits"] > 0 and kinds["stories"] > 0
    assert any("mixture: " + str(folder) in m for m in logs)
    assert any("skipped captions.jsonl:5" in m for m in logs)  # the folder's bad lines


@pytest.mark.e2e
@pytest.mark.slow
def test_documented_mixture_command_trains(tmp_path, data_dir):
    """docs/data.md's `mmar train ... --config.data.mixture=...` runs end to end (test preset)."""
    import os
    import pathlib
    import subprocess
    import sys
    root = pathlib.Path(__file__).resolve().parents[2]
    text = (root / "docs/data.md").read_text()
    block = text.split("tests/data/test_sources.py runs this block")[1].split("```bash")[1]
    (cmd,) = [line.split() for line in block.split("```")[0].strip().splitlines()]
    assert cmd[:2] == ["mmar", "train"]
    args = [a.replace(":tiny", ":test").replace("configs/", f"{root}/configs/")
            if a.startswith("--config=") else f"--workdir={tmp_path}"
            if a.startswith("--workdir=") else a for a in cmd[2:]]
    env = dict(os.environ, MMAR_DATA_DIR=str(data_dir), PYTHONPATH=str(root),
               TF_CPP_MIN_LOG_LEVEL="2")

    def mmar(*a):
        proc = subprocess.run([sys.executable, "-m", "mmar", *a], cwd=root, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    from tests.helpers import text_tokenizers
    text_tokenizers.install(tmp_path)   # the test preset's BPE: `mmar text-tokenizer-train`
    mmar("tokenizer-train", args[0], f"--workdir={tmp_path}",
         "--config.image_tokenizer.train.steps=2")
    out = mmar("train", *args, "--config.train.steps=4", "--config.checkpoint.every_steps=4")
    assert "[data] mixture: stories" in out and "[data] mixture: digits" in out
    assert "[decoder] step 4/4" in out
