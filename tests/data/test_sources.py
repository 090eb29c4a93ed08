"""data.mixture: built-in and a user's folder mixed by config alone, into packed batches."""
import collections

import numpy as np
import pytest

from mmar import config as config_lib
from mmar.data import packing, sources, user_example


def test_parse_mixture(tmp_path):
    assert sources.parse_mixture("shapes:0.6, stories:0.3,digits") == [
        ("shapes", 0.6), ("stories", 0.3), ("digits", 1.0)]
    assert sources.parse_mixture(f"{tmp_path}:2") == [(str(tmp_path), 2.0)]
    for bad in ("shapes:0", "nothing_here:1", "shapes:-1"):
        with pytest.raises(ValueError):
            sources.parse_mixture(bad)


def test_bad_mixture_names_the_field(test_config):
    cfg = test_config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.data.mixture = "shapes:1,no_such_folder:1"
    with pytest.raises(config_lib.ConfigError, match="data.mixture='shapes:1,no_such_folder:1'"):
        config_lib.validate(cfg)


def test_mixture_of_built_in_and_user_data_by_config(test_config, tmp_path):
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
                                 log=logs.append)
    batches = [next(it) for _ in range(10)]
    assert all(b["tokens"].shape == (8, 128) for b in batches)
    assert np.mean([packing.efficiency(b) for b in batches]) > 0.8
    text = [bytes(int(t) for t in row if t < 256) for b in batches for row in b["tokens"]]
    kinds = collections.Counter()
    for row in text:
        kinds["digits"] += row.count(b"the digit ")
        kinds["stories"] += row.count(b" turns ") + row.count(b" moves ") + row.count(b"appears")
    assert kinds["digits"] > 0 and kinds["stories"] > 0
    assert any("mixture: " + str(folder) in m for m in logs)
    assert any("skipped captions.jsonl:5" in m for m in logs)  # the folder's bad lines
