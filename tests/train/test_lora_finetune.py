"""LoRA fine-tuning (`model.lora`, mmar/model/lora.py): a train step through the trainer's
step function updates only the adapters, the optimizer holds state for them alone, merging
them gives the same logits (training forward and KV-cache decode), rank 0 is today's model,
the config refuses bad fields, the dry run counts the adapters' optimizer state only, and
the one loop starts a LoRA run from a base-model checkpoint and resumes it exactly."""
import json

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx, traverse_util

from mmar import config as config_lib
from mmar.data import pipeline
from mmar.model import flops, lora
from mmar.model.transformer import Decoder
from mmar.parallel import mesh as mesh_lib
from mmar.schema import ConfigError
from mmar.train import checkpoint as checkpoint_lib
from mmar.train import dry_run, optim, trainer
from mmar.train import state as state_lib
from mmar.train import step as step_lib
from mmar.train.decoder import decoder_task
from tests.helpers import text_tokenizers

RANK = 4


def _cfg(test_config, rank=RANK, **model):
    """The `test` preset with LoRA of `rank`, a 2-device FSDP mesh and a high constant lr
    (so one step visibly moves the adapters)."""
    cfg = ml_collections.ConfigDict(test_config.to_dict())
    cfg.model.lora.rank = rank
    for name, value in model.items():       # a dict sets fields of a section
        if isinstance(value, dict):
            cfg.model[name].update(value)
        else:
            cfg.model[name] = value
    cfg.mesh.update(data=1, fsdp=min(2, len(jax.devices())), tensor=1, strategy="fsdp")
    cfg.train.update(lr=1e-2, warmup_steps=0, schedule="constant", steps=10)
    return config_lib.validate(cfg)


def _mesh(cfg):
    return mesh_lib.from_config(cfg.mesh, jax.devices()[:cfg.mesh.fsdp])


def _batch(vocab_size, seed=0, b=4, s=16):
    rng = np.random.default_rng(seed)
    seg = np.ones((b, s), np.int32)
    pos = np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy()
    return {"tokens": rng.integers(0, vocab_size, (b, s), dtype=np.int32), "positions": pos,
            "segment_ids": seg, "modality": rng.integers(0, 2, (b, s), dtype=np.int32),
            "loss_weights": np.ones((b, s), np.float32)}


def _setup(cfg):
    """What the trainer sets up: sharded params, the optimizer state of the trained params,
    the jitted step (mmar/train/trainer.py)."""
    mesh, rule_table = _mesh(cfg)
    task = decoder_task(cfg)
    model_state, params = state_lib.create(task.make_module, mesh, 0, rule_table)
    tx = optim.make_optimizer(cfg.train)
    opt_state, opt_shardings = step_lib.init_optimizer(
        tx, step_lib.trained(task, model_state, params), mesh)
    step = step_lib.make_train_step(task, model_state, tx, mesh, model_state.shardings,
                                    opt_shardings, rule_table=rule_table)
    shardings = step_lib.batch_shardings(task, mesh, rule_table)
    return model_state, params, opt_state, step, shardings


def _flat(tree):
    return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def _is_adapter(name):
    return name.endswith((lora.A_SUFFIX, lora.B_SUFFIX))


@pytest.fixture(scope="module")
def stepped(test_config):
    """The LoRA model before and after two train steps."""
    cfg = _cfg(test_config)
    model_state, params, opt_state, step, shardings = _setup(cfg)
    before = _flat(params)
    for i in range(2):
        params, opt_state, metrics = step(params, opt_state, step_lib.global_batch(
            _batch(cfg.model.vocab_size, i), shardings))
        assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    return cfg, model_state, before, params, opt_state


def test_a_step_changes_only_the_adapters(stepped):
    _, _, before, params, _ = stepped
    after = _flat(params)
    assert before.keys() == after.keys()
    adapters = [k for k in after if _is_adapter(k)]
    assert len(adapters) == 2 * 7   # A and B of q, k, v, o, gate, up, down
    for name in after:
        if _is_adapter(name):
            assert not np.array_equal(after[name], before[name]), name
        else:
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    # B starts at zero: the fresh adapters leave the model as it was.
    assert all(not before[k].any() for k in adapters if k.endswith(lora.B_SUFFIX))


def test_the_optimizer_holds_state_for_the_adapters_only(stepped):
    _, _, before, _, opt_state = stepped
    base_shapes = {v.shape for k, v in before.items() if not _is_adapter(k)}
    adapter_sizes = sum(v.size for k, v in before.items() if _is_adapter(k))
    leaves = jax.tree.leaves(opt_state)
    assert not [x.shape for x in leaves if x.ndim and x.shape in base_shapes]
    # Adam's two moments per adapter, plus a few scalar counters.
    assert 2 * adapter_sizes <= sum(x.size for x in leaves) <= 2 * adapter_sizes + 8


def test_merged_adapters_give_the_same_logits(stepped):
    cfg, model_state, _, params, _ = stepped
    alpha = cfg.model.lora.alpha
    merged = lora.merge(params, alpha=alpha)
    assert not [k for k in _flat(merged) if "lora" in k]
    plain_cfg = ml_collections.ConfigDict(cfg.model.to_dict())
    plain_cfg.lora.rank = 0
    plain_state, plain_abstract = state_lib.create_abstract(
        lambda rngs: Decoder(plain_cfg, rngs=rngs), _mesh(cfg)[0])
    assert jax.tree.structure(plain_abstract) == jax.tree.structure(merged)
    adapted, plain = model_state.merge(params), plain_state.merge(merged)

    b = _batch(cfg.model.vocab_size, seed=5, b=2, s=12)
    args = (b["tokens"], b["positions"], b["segment_ids"], b["modality"])
    forward = np.asarray(adapted(*args))
    np.testing.assert_allclose(np.asarray(plain(*args)), forward, atol=1e-5, rtol=0)
    # The unmerged model differs from its base (the adapters are not zero any more).
    base = plain_state.merge(lora.merge({**params}, alpha=0.0))
    assert np.abs(np.asarray(base(*args)) - forward).max() > 1e-4

    for model in (adapted, plain):     # KV-cache prefill (kv_decode.prepare folds A @ B)
        cache = model.init_cache(2, 16)
        logits, _ = model.decode(b["tokens"], b["positions"], b["segment_ids"], cache,
                                 b["modality"])
        np.testing.assert_allclose(np.asarray(logits), forward, atol=1e-5, rtol=0)


def test_merged_weight_on_numpy_arrays():
    rng = np.random.default_rng(0)
    w, a, b = rng.normal(size=(3, 5, 2, 4)), rng.normal(size=(3, 5, 6)), rng.normal(
        size=(3, 6, 2, 4))
    want = w + 0.5 * np.einsum("lir,lrhd->lihd", a, b)
    np.testing.assert_allclose(lora.merged_weight(w, a, b, 0.5), want, rtol=1e-5)
    o, oa, ob = rng.normal(size=(2, 4, 5)), rng.normal(size=(2, 4, 6)), rng.normal(size=(6, 5))
    np.testing.assert_allclose(lora.merged_weight(o, oa, ob, 2.0),
                               o + 2.0 * np.einsum("hdr,re->hde", oa, ob), rtol=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        lora.merged_weight(w, a, b[:, :, :1], 1.0)


def test_rank_0_has_exactly_the_parameters_without_lora(test_config):
    shapes = {}
    for rank in (0, RANK):
        cfg = _cfg(test_config, rank=rank).model
        model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
        shapes[rank] = {k: v.shape for k, v in _flat(nnx.to_pure_dict(
            nnx.state(model, nnx.Param))).items()}
        assert flops.param_count(cfg) == sum(np.prod(s) for s in shapes[rank].values())
        assert bool(jax.tree.leaves(nnx.state(model, lora.LoRAParam))) == bool(rank)
    assert shapes[0] == {k: s for k, s in shapes[RANK].items() if not _is_adapter(k)}
    assert decoder_task(_cfg(test_config, rank=0)).trainable is None


def test_bad_lora_fields_name_the_field(test_config):
    with pytest.raises(ConfigError, match=r"model\.lora\.targets"):
        _cfg(test_config, lora=dict(rank=RANK, targets=("q", "x")))
    with pytest.raises(ConfigError, match=r"model\.lora\.targets"):
        _cfg(test_config, lora=dict(rank=RANK, targets=()))
    with pytest.raises(ConfigError, match=r"model\.lora\.alpha"):
        _cfg(test_config, lora=dict(rank=RANK, alpha=0.0))
    with pytest.raises(ConfigError, match=r"model\.lora\.rank"):
        Decoder(_cfg(test_config, mot=dict(enabled=True)).model, rngs=nnx.Rngs(0))


def test_targets_pick_the_projections(test_config):
    cfg = _cfg(test_config, lora=dict(rank=2, targets=("q", "v"))).model
    model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    names = sorted(_flat(nnx.to_pure_dict(nnx.state(model, lora.LoRAParam))))
    assert names == ["blocks/attn/q_lora_a", "blocks/attn/q_lora_b", "blocks/attn/v_lora_a",
                     "blocks/attn/v_lora_b"]


def test_dry_run_counts_the_optimizer_state_of_the_adapters_only(test_config):
    figures = {rank: dry_run.report(_cfg(test_config, rank=rank),
                                    jax.devices()[:_cfg(test_config).mesh.fsdp],
                                    log=lambda _: None)
               for rank in (0, RANK)}
    full, lo = figures[0], figures[RANK]
    assert lo["trained_parameters"] == flops.lora_param_count(_cfg(test_config).model)
    assert full["trained_parameters"] == full["parameters"]
    assert lo["parameters"] == full["parameters"] + lo["trained_parameters"]
    # Adam: two float32 moments per trained parameter (FSDP shards most of them).
    assert lo["optimizer_bytes"] < full["optimizer_bytes"] / 5
    assert lo["param_bytes"] > full["param_bytes"]
    for f in figures.values():
        assert f["param_bytes"] + f["optimizer_bytes"] + f["batch_bytes"] == pytest.approx(
            f["argument_bytes"], rel=0.05)


def _batches(cfg, test_config):
    vocab = config_lib.make_vocab(cfg)
    rng = np.random.default_rng(0)
    source = pipeline.CaptionCodeSource([f"caption {i}" for i in range(40)],
                                        rng.integers(0, vocab.num_image_codes, (40, 16)))
    return pipeline.decoder_batches(source, vocab, cfg.data, global_batch=8, seed=1,
                                    text=text_tokenizers.load(test_config))


def _train(cfg, test_config, workdir, steps, log=lambda m: None):
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.train.update(steps=steps, log_every=1)
    mesh, rule_table = _mesh(cfg)
    return trainer.train(decoder_task(cfg), cfg=cfg.train, mesh=mesh, rule_table=rule_table,
                         data_iter=_batches(cfg, test_config), workdir=workdir, config=cfg,
                         checkpoint_every=2, log=log)


@pytest.mark.slow
def test_lora_run_starts_from_a_base_checkpoint_and_resumes_exactly(test_config, tmp_path):
    cfg = _cfg(test_config)
    base_cfg = _cfg(test_config, rank=0)
    mesh, rule_table = _mesh(cfg)
    _, base = state_lib.create(decoder_task(base_cfg).make_module, mesh, 7, rule_table)
    base_flat = _flat(base)
    for run in ("straight", "resumed"):         # what `mmar import` writes: params only
        ckpt = checkpoint_lib.Checkpointer(tmp_path / run / "checkpoints", async_save=False)
        ckpt.save(0, params=base, config=base_cfg, force=True)
        ckpt.close()

    straight = _train(cfg, test_config, tmp_path / "straight", steps=4)
    messages = []
    first = _train(cfg, test_config, tmp_path / "resumed", steps=2, log=messages.append)
    assert any("initialised the frozen parameters from step 0" in m for m in messages)
    assert first.step == 2
    messages = []
    resumed = _train(cfg, test_config, tmp_path / "resumed", steps=4, log=messages.append)
    assert any("resumed from step 2" in m for m in messages) and resumed.step == 4
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()
                  if p.name.isdigit()) == ["2", "4"]

    a, b = _flat(straight.params), _flat(resumed.params)
    for name, value in b.items():
        if _is_adapter(name):
            np.testing.assert_allclose(value, a[name], rtol=1e-6, atol=1e-7, err_msg=name)
            assert value.any()
        else:                                   # the base model, untouched
            np.testing.assert_array_equal(value, base_flat[name], err_msg=name)
    losses = [{r["step"]: r["loss"] for r in map(json.loads, (
        tmp_path / run / "metrics.jsonl").read_text().splitlines())}
        for run in ("straight", "resumed")]
    np.testing.assert_allclose([losses[1][s] for s in range(1, 5)],
                               [losses[0][s] for s in range(1, 5)], rtol=1e-6)
