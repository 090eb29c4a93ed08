"""A train step on 8 fake devices under every strategy (data parallel, FSDP, tensor parallel,
both) gives the same loss, gradients (through the update) and parameters as on one device;
so does gradient accumulation, and so does a next-scale decoder's block-causal step."""
import jax
import numpy as np
import pytest

from mmar import schema
from mmar.model.transformer import Decoder
from mmar.parallel import mesh as mesh_lib
from mmar.train import loss as loss_lib
from mmar.train import optim, state
from mmar.train import step as step_lib
from mmar.train.decoder import BATCH_AXES
from tests.helpers.model_configs import preset_model

# The `test` preset's decoder with 8 query / 4 KV heads, so that tensor parallelism splits them.
MODEL = preset_model(vocab_size=256, n_heads=8, n_kv_heads=4, head_dim=8)
TRAIN = schema.complete(dict(lr=1e-2, warmup_steps=0, steps=10, schedule="constant",
                             weight_decay=0.1, grad_clip=1.0, b1=0.9, b2=0.95), section="train")
# (strategy, mesh shape data x fsdp x tensor, gradient accumulation)
CASES = {"dp": ("dp", (8, 1, 1), 1), "fsdp": ("fsdp", (1, 8, 1), 1),
         "dp_fsdp": ("fsdp", (2, 4, 1), 1), "tp": ("tp", (2, 1, 4), 1),
         "fsdp_tp": ("fsdp_tp", (2, 2, 2), 1), "fsdp_accum": ("fsdp", (1, 4, 1), 2)}


def adam_param_atol(steps: int, tokens: int, kappa: float = 1e3) -> float:
    """How far two float32 runs that sum the same gradient in another order may leave a
    parameter apart after `steps` AdamW steps.

    A float32 sum of `tokens` terms differs between two orders by at most about
    tokens * u (u = 2^-24) relative to the sum of the terms' magnitudes, i.e. by
    tokens * u * kappa relative to the sum itself, kappa being how much the terms cancel.
    Adam normalises each element by its own gradient scale, so a relative gradient error rho
    moves that element's update by up to rho * lr per step, whatever the gradient's size.
    Near-zero gradients cancel strongly; kappa = 1000 admits that, while a weighting bug in
    accumulation moves the losses (rtol 1e-5) and the gradient norm (1e-4), checked too."""
    return steps * TRAIN.lr * tokens * float(np.finfo(np.float32).epsneg) * kappa


# The same with next-scale images (mmar/model/next_scale.py): <boi> = 200, codes 210..249,
# token maps of side 1 and 2, one image in each packed document.
NEXT_SCALE = preset_model(vocab_size=256, n_heads=8, n_kv_heads=4, head_dim=8,
                          scale_layout=(200, 210, 250, 1, 2))


def _task(model_cfg=MODEL):
    def loss_fn(model, batch):
        logits = model(batch["tokens"], batch["positions"], batch["segment_ids"])
        return loss_lib.decoder_loss(logits, batch, z_loss=1e-4)
    return step_lib.Task("decoder", lambda rngs: Decoder(model_cfg, rngs=rngs), loss_fn,
                         BATCH_AXES, batch_weight=loss_lib.scored_weight)


def _batch(seed=0, b=8, s=16, images=False):
    rng = np.random.default_rng(seed)
    seg = np.ones((b, s), np.int32)
    seg[:, s // 2:] = 2          # two packed documents per row
    seg[0, -3:] = 0              # and some padding
    pos = np.concatenate([np.arange(s // 2)] * 2)[None].repeat(b, 0).astype(np.int32)
    tokens = rng.integers(0, 200, (b, s), dtype=np.int32)
    if images:   # text, <boi>, 5 codes (1 + 4), <eoi> in each document of 8
        for start in (0, s // 2):
            tokens[:, start + 1] = 200
            tokens[:, start + 2:start + 7] = rng.integers(210, 250, (b, 5))
            tokens[:, start + 7] = 201
    return {"tokens": tokens, "positions": pos,
            "segment_ids": seg, "modality": rng.integers(0, 2, (b, s), dtype=np.int32),
            "loss_weights": (seg > 0).astype(np.float32)}


def _run(mesh_shape, strategy="fsdp_tp", grad_accum=1, steps=2, model_cfg=MODEL):
    devices = jax.devices()[:int(np.prod(mesh_shape))]
    mesh_cfg = {**dict(zip(mesh_lib.AXES, mesh_shape)), "strategy": strategy}
    mesh, rule_table = mesh_lib.from_config(mesh_cfg, devices)
    task = _task(model_cfg)
    model_state, params = state.create(task.make_module, mesh, seed=0, rule_table=rule_table)
    tx = optim.make_optimizer(TRAIN)
    opt_state, opt_shardings = step_lib.init_optimizer(tx, params, mesh)
    step = step_lib.make_train_step(task, model_state, tx, mesh, model_state.shardings,
                                    opt_shardings, rule_table=rule_table,
                                    grad_accum=grad_accum)
    shardings = step_lib.batch_shardings(task, mesh, rule_table)
    losses = []
    for i in range(steps):
        batch = _batch(i, images=model_cfg is NEXT_SCALE)
        params, opt_state, metrics = step(params, opt_state,
                                          step_lib.global_batch(batch, shardings))
        losses.append(float(metrics["loss"]))
        grad_norm = float(metrics["grad_norm"])
    return losses, grad_norm, jax.device_get(params), params


@pytest.fixture(scope="module")
def reference():
    return _run((1, 1, 1))


@pytest.mark.parametrize("name", list(CASES))
def test_sharded_step_matches_one_device(reference, name):
    if len(jax.devices()) < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (make test)")
    ref_losses, ref_gnorm, ref_params, _ = reference
    strategy, shape, accum = CASES[name]
    losses, gnorm, params, device_params = _run(shape, strategy, accum)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    np.testing.assert_allclose(gnorm, ref_gnorm, rtol=1e-4)
    atol = adam_param_atol(steps=2, tokens=8 * 16)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=atol, rtol=1e-4),
                 params, ref_params)
    # On model-parallel meshes the parameters really are split, as the rules say.
    sharded = [x for x in jax.tree.leaves(device_params) if not x.sharding.is_fully_replicated]
    assert bool(sharded) == (strategy != "dp")
    if strategy == "tp":     # tensor parallel leaves the model dimension whole
        specs = {tuple(x.sharding.spec) for x in jax.tree.leaves(device_params)}
        assert not any("fsdp" in spec for spec in specs)


@pytest.mark.parametrize("name", ["dp", "fsdp_tp"])
def test_next_scale_sharded_step_matches_one_device(name):
    """Block-causal rows (the input mix is a [B, S, S] product over the batch-sharded rows)
    shard like any other."""
    if len(jax.devices()) < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (make test)")
    ref_losses, ref_gnorm, ref_params, _ = _run((1, 1, 1), model_cfg=NEXT_SCALE)
    strategy, shape, accum = CASES[name]
    losses, gnorm, params, _ = _run(shape, strategy, accum, model_cfg=NEXT_SCALE)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    np.testing.assert_allclose(gnorm, ref_gnorm, rtol=1e-4)
    atol = adam_param_atol(steps=2, tokens=8 * 16)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=atol, rtol=1e-4),
                 params, ref_params)


def test_grad_accum_matches_full_batch_on_one_device():
    """Four microbatches on one device = the whole batch at once, also when padding makes
    the microbatches' token counts differ (they are weighed by scored tokens)."""
    ref_losses, ref_gnorm, ref_params, _ = _run((1, 1, 1))
    losses, gnorm, params, _ = _run((1, 1, 1), grad_accum=4)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    np.testing.assert_allclose(gnorm, ref_gnorm, rtol=1e-4)
    atol = adam_param_atol(steps=2, tokens=8 * 16)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=atol, rtol=1e-4),
                 params, ref_params)


def test_strategy_refuses_a_mesh_axis_it_does_not_use():
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices")
    with pytest.raises(ValueError, match="mesh.tensor=4: mesh.strategy='dp'"):
        mesh_lib.make_mesh({"data": 2, "fsdp": 1, "tensor": 4, "strategy": "dp"})


def test_eight_devices_present():
    """`make test` must give the suite 8 devices, or the tests above skip silently."""
    import os
    if "xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""):
        assert len(jax.devices()) == 8
