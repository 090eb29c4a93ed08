"""Faults in token shards (`mmar pretokenize`'s output): unreadable metadata, an unreadable
`.done` marker, a shard cut short, a shard overwritten with garbage of the same size. Each is
one TokensError (a UserError: one line at the command line) naming the file and what to do,
and where the message says a rerun of `mmar pretokenize` mends it, the rerun writes exactly
the bytes of the undamaged shards. Before: a JSONDecodeError or ValueError traceback from
inside the reader, naming no file; a shorter shard was read until its missing records."""
import pathlib

import pytest

from mmar import rundir
from mmar.data import pipeline, tokens
from tests.data.test_pretokenize import fake_tokenizer, shard_files, write

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def shapes(test_config):
    return pipeline.shapes_split(test_config.data, "train")


@pytest.fixture
def run(shapes, test_config, tmp_path):
    """A workdir with the test preset's shards (4 shards of 64 records), and their bytes."""
    workdir = fake_tokenizer(tmp_path)
    write(shapes, test_config, workdir)
    return workdir, shard_files(workdir)


def _open(test_config, workdir):
    return tokens.open_split(rundir.tokens_dir(workdir), "shapes", "train",
                             data_cfg=test_config.data,
                             identity=rundir.tokenizer_identity(test_config, workdir))


def _split(workdir) -> pathlib.Path:
    return pathlib.Path(rundir.tokens_dir(workdir)) / "shapes" / "train"


def test_unreadable_metadata_names_the_file(run, test_config):
    workdir, _ = run
    meta = pathlib.Path(rundir.tokens_dir(workdir)) / "shapes" / "metadata.json"
    for garbage in (b"\x00garbage", b"[1, 2]", b"\xff\xfe"):
        meta.write_bytes(garbage)
        with pytest.raises(tokens.TokensError) as e:
            _open(test_config, workdir)
        assert str(e.value).startswith(f"{meta}: unreadable (")
        assert "rerun `mmar pretokenize`" in str(e.value)


def test_unreadable_done_marker_is_named_and_a_rerun_mends_it(run, shapes, test_config):
    workdir, before = run
    done = sorted(_split(workdir).glob("*.done"))[1]
    done.write_text("{not json")
    with pytest.raises(tokens.TokensError) as e:
        _open(test_config, workdir)
    assert str(e.value).startswith(f"{done}: unreadable (")
    stats = write(shapes, test_config, workdir)
    assert stats["shards_written"] == 1
    assert shard_files(workdir) == before and len(_open(test_config, workdir)) == 256


def test_a_shard_cut_short_is_named_and_a_rerun_mends_it(run, shapes, test_config):
    workdir, before = run
    shard = sorted(p for p in _split(workdir).iterdir() if p.suffix == ".array_record")[2]
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2])
    with pytest.raises(tokens.TokensError) as e:
        _open(test_config, workdir)
    assert str(e.value).startswith(f"{shard}: {len(data) // 2:,} bytes, its .done marker says "
                                   f"{len(data):,}: damaged")
    shard.unlink()
    with pytest.raises(tokens.TokensError, match="missing, its .done marker says"):
        _open(test_config, workdir)
    assert write(shapes, test_config, workdir)["shards_written"] == 1
    assert shard_files(workdir) == before


def test_a_shard_of_garbage_is_named_when_read(run, test_config):
    workdir, _ = run
    shard = sorted(p for p in _split(workdir).iterdir() if p.suffix == ".array_record")[3]
    shard.write_bytes(b"\x5a" * shard.stat().st_size)        # same size: opens, reads badly
    source = _open(test_config, workdir)                        # sizes match: opens
    for i in (0, 255):          # the reader opens every shard: any record names the bad one
        with pytest.raises(tokens.TokensError) as e:
            source[i]
        assert str(e.value).startswith(f"{shard}: unreadable at record {i} (")
        assert "delete it and its .done" in str(e.value)
