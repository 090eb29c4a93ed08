"""The one loop: exact resume after SIGTERM (params, optimizer, data iterator), the
non-finite policies (stop, skip), and restoring onto a different mesh (an unreadable
checkpoint: tests/faults/test_faults_checkpoints.py)."""
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
from mmar.parallel import rules
from mmar.train import trainer
from mmar.train.decoder import decoder_task
from mmar import config as config_lib
from tests.helpers import text_tokenizers


def _setup(test_config, steps=6):
    cfg = ml_collections.ConfigDict(test_config.to_dict())
    cfg.train.steps, cfg.train.log_every = steps, 1
    vocab = config_lib.make_vocab(cfg)
    rng = np.random.default_rng(0)
    captions = [f"caption {i}" for i in range(40)]
    codes = rng.integers(0, vocab.num_image_codes, (40, 16))
    source = pipeline.CaptionCodeSource(captions, codes)
    batches = pipeline.decoder_batches(source, vocab, cfg.data, global_batch=8, seed=1,
                                       text=text_tokenizers.load(test_config))
    return cfg, batches


def _train(cfg, batches, workdir, log=lambda m: None, task=None):
    mesh = mesh_lib.make_mesh(cfg.mesh)
    return trainer.train(task or decoder_task(cfg), cfg=cfg.train, mesh=mesh,
                         data_iter=batches, workdir=workdir, config=cfg,
                         checkpoint_every=100, log=log)


def _losses(workdir):
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


@pytest.mark.slow
@pytest.mark.faults
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


@pytest.mark.slow
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


class _PoisonStep:
    """Wraps a batch iterator; the batch of step `step` (1-based) gets a NaN loss weight.
    Keeps Grain's checkpoint interface."""

    def __init__(self, inner, step):
        self.inner, self.step, self.n = inner, step, 0

    def __next__(self):
        batch = dict(next(self.inner))
        self.n += 1
        if self.n == self.step:
            batch["loss_weights"] = batch["loss_weights"].copy()
            batch["loss_weights"][0, 1] = np.nan
        return batch

    def get_state(self):          # bytes: how Grain checkpoints a non-Dataset iterator
        return json.dumps(self.inner.get_state()).encode()

    def set_state(self, state):
        self.inner.set_state(json.loads(state))

    def start_prefetch(self):
        pass


@pytest.mark.slow
def test_nonfinite_skip_policy_drops_the_step_and_goes_on(test_config, tmp_path):
    cfg, batches = _setup(test_config)
    cfg.train.on_nonfinite = "skip"
    messages = []
    result = _train(cfg, _PoisonStep(batches, 3), tmp_path, log=messages.append)
    assert result.step == 6 and result.skipped_steps == 1
    assert any("skipped non-finite steps [3]" in m for m in messages)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(result.params)))
    losses = _losses(tmp_path)
    assert 3 not in losses and all(np.isfinite(v) for v in losses.values())

    cfg2, batches = _setup(test_config)
    cfg2.train.update(on_nonfinite="skip", max_skipped_steps=0)
    with pytest.raises(trainer.NonFiniteLossError, match="max_skipped_steps=0"):
        _train(cfg2, _PoisonStep(batches, 2), tmp_path / "strict")


@pytest.mark.slow
def test_restore_onto_a_different_mesh_continues_the_same_run(test_config, tmp_path):
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices")
    cfg, batches = _setup(test_config)
    straight = _train(cfg, batches, tmp_path / "straight")
    cfg, batches = _setup(test_config, steps=3)
    cfg.mesh.update(data=8, fsdp=1, tensor=1, strategy="dp")
    _train(cfg, batches, tmp_path / "moved")
    cfg, batches = _setup(test_config)
    cfg.mesh.update(data=1, fsdp=2, tensor=2, strategy="fsdp_tp")   # 4 devices, sharded
    mesh = mesh_lib.make_mesh(cfg.mesh, jax.devices()[:4])
    moved = trainer.train(decoder_task(cfg), cfg=cfg.train, mesh=mesh, data_iter=batches,
                          workdir=tmp_path / "moved", checkpoint_every=100,
                          rule_table=rules.for_strategy("fsdp_tp"), log=lambda m: None)
    assert moved.start_step == 3
    a, b = _losses(tmp_path / "straight"), _losses(tmp_path / "moved")
    np.testing.assert_allclose([b[s] for s in range(1, 7)], [a[s] for s in range(1, 7)],
                               rtol=1e-5)
    assert not all(x.sharding.is_fully_replicated for x in jax.tree.leaves(moved.params))


@pytest.mark.slow
def test_profile_steps_write_a_trace(test_config, tmp_path):
    cfg, batches = _setup(test_config, steps=3)
    cfg.train.profile_steps = (2, 3)
    messages = []
    _train(cfg, batches, tmp_path, log=messages.append)
    assert any("profiler trace of steps 2-3" in m for m in messages)
    assert list((tmp_path / "profile").rglob("*.xplane.pb"))
    table = (tmp_path / "parameters.txt").read_text()       # the parameter overview
    assert "blocks/attn/q" in table and "total:" in table


@pytest.mark.slow
def test_params_only_checkpoint_starts_a_fresh_run_from_those_params(test_config, tmp_path):
    """What `mmar import` writes (params, no optimizer or data state) initialises a run."""
    from mmar.train import checkpoint as checkpoint_lib
    from mmar.train import state as state_lib
    cfg, batches = _setup(test_config, steps=2)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    _, params = state_lib.create(decoder_task(cfg).make_module, mesh, seed=7)
    ckpt = checkpoint_lib.Checkpointer(tmp_path / "imported" / "checkpoints", async_save=False)
    ckpt.save(0, params=params, config=cfg, force=True)
    ckpt.close()
    messages = []
    result = _train(cfg, batches, tmp_path / "imported", log=messages.append)
    assert result.step == 2 and any("params-only checkpoint" in m for m in messages)
    cfg, batches = _setup(test_config, steps=2)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    trainer.train(decoder_task(cfg), cfg=cfg.train, mesh=mesh, data_iter=batches,
                  workdir=tmp_path / "seed7", seed=7, log=lambda m: None)
    assert _losses(tmp_path / "imported")[1] == pytest.approx(_losses(tmp_path / "seed7")[1],
                                                              rel=1e-6)
