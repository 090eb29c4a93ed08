"""Faults in the checkpoints a run resumes from or loads: an unreadable newest checkpoint is
moved aside and the run goes on past it with the losses of a run never disturbed; when none
reads back, one error says what was found and nothing is moved or overwritten; a save that
fails for the file system (full, read-only) is one error naming the newest good checkpoint,
and the rerun resumes from it exactly."""
import errno
import json

import ml_collections
import numpy as np
import pytest

from mmar import config as config_lib
from mmar.data import pipeline
from mmar.errors import CheckpointError, UserError, WorkdirError
from mmar.parallel import mesh as mesh_lib
from mmar.train import checkpoint as checkpoint_lib
from mmar.train import trainer
from mmar.train.decoder import decoder_task
from tests.helpers import text_tokenizers

pytestmark = pytest.mark.faults


def _setup(test_config, steps):
    cfg = ml_collections.ConfigDict(test_config.to_dict())
    cfg.train.steps, cfg.train.log_every = steps, 1
    vocab = config_lib.make_vocab(cfg)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, vocab.num_image_codes, (40, 16))
    source = pipeline.CaptionCodeSource([f"caption {i}" for i in range(40)], codes)
    return cfg, pipeline.decoder_batches(source, vocab, cfg.data, global_batch=8, seed=1,
                                         text=text_tokenizers.load(test_config))


def _train(test_config, workdir, steps, log=lambda m: None):
    cfg, batches = _setup(test_config, steps)
    return trainer.train(decoder_task(cfg), cfg=cfg.train, mesh=mesh_lib.make_mesh(cfg.mesh),
                         data_iter=batches, workdir=workdir, config=cfg, checkpoint_every=2,
                         max_to_keep=3, log=log)


def _garble(step_dir):
    for f in (step_dir / "params").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\0garbage")


def _losses(workdir):
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}   # a step run twice: the later line wins


@pytest.mark.slow
def test_unreadable_newest_checkpoint_is_moved_aside_and_the_run_goes_past_it(
        test_config, tmp_path):
    straight = tmp_path / "straight"
    _train(test_config, straight, 6)
    run = tmp_path / "run"
    _train(test_config, run, 4)
    _garble(run / "checkpoints" / "4")
    garbled = sorted(p.read_bytes() for p in (run / "checkpoints/4").rglob("*") if p.is_file())
    messages = []
    # Before the fix the save of step 4 failed with StepAlreadyExistsError and the run died.
    result = _train(test_config, run, 6, log=messages.append)
    assert result.start_step == 2 and result.step == 6
    assert any("moved unreadable checkpoint step 4" in m for m in messages)
    aside = run / "checkpoints.unreadable" / "4"
    assert sorted(p.read_bytes() for p in aside.rglob("*") if p.is_file()) == garbled
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir()
                  if p.name.isdigit()) == [2, 4, 6]
    assert [_losses(run)[s] for s in range(1, 7)] == [_losses(straight)[s] for s in range(1, 7)]


@pytest.mark.slow
def test_no_readable_checkpoint_is_one_error_and_moves_nothing(test_config, tmp_path):
    _train(test_config, tmp_path, 4)
    for step in (2, 4):
        _garble(tmp_path / "checkpoints" / str(step))
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(CheckpointError) as e:
        _train(test_config, tmp_path, 6)
    message = str(e.value)
    assert isinstance(e.value, UserError) and "\n" not in message
    assert "none of the 2 checkpoints" in message and "steps 4, 2" in message
    assert "move the directory aside" in message
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


@pytest.mark.slow
def test_a_full_disk_at_a_save_is_one_error_and_the_rerun_resumes_exactly(
        test_config, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    _train(test_config, straight, 6)
    run = tmp_path / "run"
    real_save = checkpoint_lib.Checkpointer.save

    def full_at_4(self, step, **kw):
        if step == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, step, **kw)
    monkeypatch.setattr(checkpoint_lib.Checkpointer, "save", full_at_4)
    with pytest.raises(WorkdirError) as e:
        _train(test_config, run, 6)
    assert "cannot write checkpoint step 4" in str(e.value)
    assert "No space left on device" in str(e.value) and "step 2" in str(e.value)
    monkeypatch.setattr(checkpoint_lib.Checkpointer, "save", real_save)
    result = _train(test_config, run, 6)
    assert result.start_step == 2 and result.step == 6
    assert [_losses(run)[s] for s in range(1, 7)] == [_losses(straight)[s] for s in range(1, 7)]
