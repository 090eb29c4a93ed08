"""The one loop: exact resume after SIGTERM (params, optimizer, data iterator) and a hard
stop on a non-finite loss."""
import json
import os
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmar.data import pipeline
from mmar.parallel import mesh as mesh_lib
from mmar.train import trainer
from mmar.train.decoder import decoder_task
from mmar import config as config_lib


def _setup(test_config, steps=6):
    cfg = ml_collections.ConfigDict(test_config.to_dict())
    cfg.train.steps, cfg.train.log_every = steps, 1
    vocab = config_lib.make_vocab(cfg)
    rng = np.random.default_rng(0)
    captions = [f"caption {i}" for i in range(40)]
    codes = rng.integers(0, vocab.num_image_codes, (40, 16))
    source = pipeline.CaptionCodeSource(captions, codes)
    batches = pipeline.decoder_batches(source, vocab, cfg.data, global_batch=8, seed=1)
    return cfg, batches


def _train(cfg, batches, workdir, log=lambda m: None, task=None):
    mesh = mesh_lib.make_mesh(cfg.mesh)
    return trainer.train(task or decoder_task(cfg), cfg=cfg.train, mesh=mesh,
                         data_iter=batches, workdir=workdir, config=cfg,
                         checkpoint_every=100, log=log)


def _losses(workdir):
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def test_resume_after_sigterm_is_exact(test_config, tmp_path):
    cfg, batches = _setup(test_config)
    straight = _train(cfg, batches, tmp_path / "straight")

    def stop_at_3(message):
        if "step 3/" in message:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg, batches = _setup(test_config)
    stopped = _train(cfg, batches, tmp_path / "resumed", log=stop_at_3)
    assert stopped.step == 3
    cfg, batches = _setup(test_config)       # a fresh process would start like this
    resumed = _train(cfg, batches, tmp_path / "resumed")
    assert resumed.step == 6
    a, b = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert sorted(b) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([b[s] for s in range(1, 7)], [a[s] for s in range(1, 7)],
                               rtol=1e-6)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
                 jax.device_get(resumed.params), jax.device_get(straight.params))


def test_nonfinite_loss_stops_and_is_not_checkpointed(test_config, tmp_path):
    cfg, batches = _setup(test_config)
    task = decoder_task(cfg)
    good_loss = task.loss_fn

    def nan_loss(model, batch):
        loss, metrics = good_loss(model, batch)
        return loss * jnp.nan, metrics

    task.loss_fn = nan_loss
    with pytest.raises(trainer.NonFiniteLossError, match="non-finite loss"):
        _train(cfg, batches, tmp_path, task=task)
    assert not any(p.name.isdigit() for p in (tmp_path / "checkpoints").iterdir())
