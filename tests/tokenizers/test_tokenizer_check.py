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
    assert check.collisions(codes, contents) == {"3": ["empty", "green triangle"]}


def test_sub_codes_are_one_code_per_cell_and_say_what_they_name():
    """Factorised codes [N, g, g, 2]: a cell's pair is its code; `factors` says which
    sub-code alone tells the shape and which the colour (empty cells ignored)."""
    contents = np.array([[["red circle", "red square"], ["blue circle", "empty"]]], dtype=object)
    where = {"circle": 0, "square": 1}
    what = {"red": 10, "blue": 11}
    codes = np.zeros((1, 2, 2, 2), np.int32)
    for (r, c), name in np.ndenumerate(contents[0]):
        codes[0, r, c] = ((where[name.split()[1]], what[name.split()[0]]) if name != "empty"
                          else (1, 11))       # an empty cell may share sub-codes with objects
    assert check.collisions(codes, contents) == {}
    assert check.factors(codes, contents) == [{"shape": True, "colour": False},
                                              {"shape": False, "colour": True}]
    codes[0, 1, 0] = (0, 10)                  # blue circle drawn as red circle: one code
    assert check.collisions(codes, contents) == {"0+10": ["blue circle", "red circle"]}
    assert check.factors(codes, contents)[1] == {"shape": False, "colour": False}


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
