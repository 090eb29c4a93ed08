"""Shared fixtures. `make test` sets XLA_FLAGS for 8 fake CPU devices before JAX starts."""
import os
import pathlib

import pytest

# A persistent XLA compilation cache shared by every test and every `mmar` subprocess the
# tests start: the same train steps are compiled by several tests.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.environ.get("TMPDIR", "/tmp"), "mmar-test-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# Reference tests compare float32 against numpy; on GPUs the default matmul precision is TF32
# (seen on an H100: 12 reference tests off by more than 1e-4), so the tests ask for full f32.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One TFDS data dir for the whole session, so each data set is prepared once."""
    path = tmp_path_factory.mktemp("datasets")
    os.environ["MMAR_DATA_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def test_config(data_dir):
    """The `test` preset of configs/t2i_shapes.py, validated, data in the session data dir."""
    from mmar import config as config_lib
    cfg = config_lib.load(str(ROOT / "configs/t2i_shapes.py") + ":test")
    with cfg.unlocked():
        cfg.data.data_dir = str(data_dir)
    return config_lib.validate(cfg)


@pytest.fixture(scope="session")
def test_text_tokenizer(test_config, tmp_path_factory):
    """The `test` preset's text tokenizer (a tiny BPE), trained once on its data as
    `mmar text-tokenizer-train` trains it."""
    from mmar import rundir
    from tests.helpers import text_tokenizers
    workdir = tmp_path_factory.mktemp("text_tokenizer")
    text_tokenizers.install(workdir, test_config)
    return rundir.load_text_tokenizer(test_config, workdir)
