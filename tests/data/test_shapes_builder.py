"""Tests for the TFDS shapes builder and load_split."""

import os
import pickle

import numpy as np

from mmar.data.builders.shapes import ShapesSource, config_name, load_split
from mmar.data.synthetic import ShapesSpec, make_examples

SIZES = dict(num_train=40, num_test=10, num_unseen=10)


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[p] = os.stat(p).st_mtime_ns
    return out


def test_build_read_back_and_reuse(tmp_path, capsys):
    spec = ShapesSpec()
    data_dir = str(tmp_path / "tfds")
    for split, n in (("train", 40), ("test", 10), ("unseen", 10)):
        src = load_split(spec, split, data_dir=data_dir, **SIZES)
        assert isinstance(src, ShapesSource) and len(src) == n
        expected = list(make_examples(spec, split, n))
        for i in range(n):
            rec = src[i]
            assert rec["image"].dtype == np.uint8 and rec["image"].shape == (32, 32, 3)
            assert isinstance(rec["caption"], str) and isinstance(rec["objects"], str)
            np.testing.assert_array_equal(rec["image"], expected[i]["image"])
            assert rec["caption"] == expected[i]["caption"]
            assert rec["objects"] == expected[i]["objects"]
    assert capsys.readouterr().out.count("preparing shapes data set (60 examples)") == 1

    before = _files(data_dir)
    src = load_split(spec, "train", data_dir=data_dir, **SIZES)
    assert _files(data_dir) == before  # reused: no new files, nothing rewritten
    assert "preparing" not in capsys.readouterr().out

    # Picklable for Grain worker processes; reopens lazily.
    clone = pickle.loads(pickle.dumps(src))
    assert len(clone) == 40 and clone[3]["caption"] == src[3]["caption"]


def test_config_names_distinct_and_stable(tmp_path):
    a = config_name(ShapesSpec(), 40, 10, 10)
    assert a == config_name(ShapesSpec(), 40, 10, 10)
    assert a != config_name(ShapesSpec(seed=1), 40, 10, 10)
    assert a != config_name(ShapesSpec(), 41, 10, 10)
    data_dir = str(tmp_path / "tfds")
    spec = ShapesSpec(image_size=16, grid=2, seed=3)
    src = load_split(spec, "test", data_dir=data_dir, num_train=4, num_test=3, num_unseen=2)
    assert src[0]["image"].shape == (16, 16, 3)
    assert config_name(spec, 4, 3, 2) in src.builder_dir
