"""The tokenizer check (mmar/tokenizers/image/check.py): a tokenizer that collapses (forced
here with an FSQ of 4 codes for the shapes data's 16 cell contents) is caught at the end of
`mmar tokenizer-train`, which stops before any decoder trains on it (mode 'stop') or goes on
with a warning ('warn'); what it measured is in WORKDIR/tokenizer/check.json."""
import json

import numpy as np
import pytest

from mmar.jobs import tokenizer_train
from mmar.tokenizers.image import check
from tests.helpers import overrides

COLLAPSED = {"image_tokenizer.fsq.levels": (2, 2), "data.num_train": 64,
             "image_tokenizer.train.steps": 4}


def test_collisions_name_the_contents_a_code_holds():
    codes = np.array([[3, 3], [5, 7]])
    contents = np.array([["empty", "empty"], ["red circle", "blue square"]], dtype=object)
    assert check.collisions(codes, contents) == {}
    contents[0, 1] = "green triangle"
    assert check.collisions(codes, contents) == {3: ["empty", "green triangle"]}


@pytest.mark.slow
def test_a_collapsed_tokenizer_stops_the_job(test_config, tmp_path):
    cfg = overrides.with_fields(test_config, {**COLLAPSED, "image_tokenizer.check.mode": "stop"})
    logs = []
    with pytest.raises(check.TokenizerCheckError, match=r"code \d+ stands for .+ and "):
        tokenizer_train.run(cfg, tmp_path, log=logs.append)
    figures = json.loads((tmp_path / "tokenizer" / tokenizer_train.CHECK_FILE).read_text())
    assert figures["applies"] and not figures["passed"]
    assert figures["distinct_codes"] <= 4 < figures["distinct_contents"]
    assert figures["collisions"]
    assert any("[tokenizer-check]" in m and "cell contents" in m for m in logs)


@pytest.mark.slow
def test_warn_mode_goes_on_and_off_does_not_measure(test_config, tmp_path):
    cfg = overrides.with_fields(test_config, {**COLLAPSED, "image_tokenizer.check.mode": "warn"})
    logs = []
    tokenizer_train.run(cfg, tmp_path / "warn", log=logs.append)
    assert any("[tokenizer-check] warning: the trained image tokenizer fails" in m
               for m in logs)
    off = overrides.with_fields(cfg, {"image_tokenizer.check.mode": "off"})
    tokenizer_train.run(off, tmp_path / "off", log=lambda _: None)
    assert not (tmp_path / "off" / "tokenizer" / tokenizer_train.CHECK_FILE).exists()
