"""The `test` preset's text tokenizer (a tiny byte-level BPE, configs/t2i_shapes.py) in a run
directory, as `mmar text-tokenizer-train` writes it: trained once per test process and
config, then copied, so that tests which build run directories by hand (fake tokenizer
checkpoints, random-weight runs) have the stage that every later one needs."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import ml_collections

from mmar import config as config_lib
from mmar import rundir
from mmar import vocab as vocab_lib
from mmar.jobs import text_tokenizer_train

ROOT = pathlib.Path(__file__).resolve().parents[2]
_TRAINED: dict[str, pathlib.Path] = {}


def test_preset():
    """The `test` preset, validated (data in $MMAR_DATA_DIR: the session's data dir)."""
    return config_lib.validate(config_lib.load(str(ROOT / "configs/t2i_shapes.py") + ":test"))


def install(workdir, cfg=None) -> pathlib.Path | None:
    """WORKDIR/text_tokenizer for `cfg` (default: the `test` preset); None when its text
    tokenizer is not a trained one (bytes, a file)."""
    cfg = cfg or test_preset()
    if vocab_lib.text_kind(cfg.vocab) not in vocab_lib.TRAINED_KINDS:
        return None
    key = json.dumps([cfg.vocab.to_dict(), cfg.data.to_dict()], sort_keys=True, default=str)
    if key not in _TRAINED:
        scratch = pathlib.Path(tempfile.mkdtemp(prefix="mmar-text-tokenizer-"))
        if not cfg.data.data_dir and not os.environ.get("MMAR_DATA_DIR"):
            # a test without the session's data dir: its data goes to a temporary one,
            # never to the user's ~/.cache
            cfg = ml_collections.ConfigDict(cfg.to_dict())
            cfg.data.data_dir = os.path.join(tempfile.gettempdir(), "mmar-test-datasets")
        text_tokenizer_train.run(cfg, scratch, log=lambda _: None)
        _TRAINED[key] = scratch / rundir.TEXT_TOKENIZER
    target = pathlib.Path(workdir) / rundir.TEXT_TOKENIZER
    shutil.copytree(_TRAINED[key], target, dirs_exist_ok=True)
    return target


def load(cfg=None):
    """The text tokenizer of `cfg` (default: the `test` preset), trained as `install` does:
    the byte tokenizer for a byte config."""
    cfg = cfg or test_preset()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="mmar-run-"))
    install(workdir, cfg)
    return rundir.load_text_tokenizer(cfg, workdir)
