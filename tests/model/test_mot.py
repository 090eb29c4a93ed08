"""Mixture-of-Transformers (model.mot.enabled=True) against a naive per-modality reference.

The reference runs every modality's full dense block for every token and picks each token's
row by its modality: the cost MoT must avoid, and the result it must reproduce.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import t2i_shapes
from mmar import config as config_lib
from mmar import schema
from mmar.model import Decoder, flops, mot
from mmar.model.attention import attend, attention_mask
from mmar.model.layers import apply_rope
from mmar.parallel import mesh as mesh_lib
from mmar.train import dry_run, optim, state
from mmar.train import loss as loss_lib
from mmar.train import step as step_lib
from mmar.train.decoder import BATCH_AXES
from tests.helpers.model_configs import tiny_cfg

B, S = 2, 7   # 14 tokens: with tile 4, windows overhang modalities and 3 padding rows


@functools.lru_cache(maxsize=None)
def make(seed=0, matmul=None, tile=4, **overrides):
    """A MoT decoder; `matmul` and `tile` set model.mot.matmul / model.mot.tile (None: the
    preset's)."""
    mot_cfg = dict(enabled=True, num_modalities=2, tile=tile,
                   **({"matmul": matmul} if matmul else {}))
    return Decoder(tiny_cfg(**{"mot": mot_cfg, "qk_norm": True, **overrides}),
                   rngs=nnx.Rngs(seed))


def inputs(pattern, seed=0):
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, 48, (B, S)), jnp.int32)
    positions = jnp.tile(jnp.arange(S, dtype=jnp.int32), (B, 1))
    segments = jnp.ones((B, S), jnp.int32).at[1, :2].set(0)        # some padding in row 1
    modality = {
        "text": np.zeros((B, S)),
        "image": np.ones((B, S)),
        "random": rng.integers(0, 2, (B, S)),
        # one image run per row: 6 text rows, so the second text window of 4 overhangs
        "boundary": np.array([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 0]]),
    }[pattern]
    return tokens, positions, segments, jnp.asarray(modality, jnp.int32)


# ---- the naive reference: every copy for every token, then select ----

def _norm(x, scale, eps=1e-5):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def _select(outs, modality):
    """outs: one [B, S, ...] per modality -> each token's own."""
    m = modality.reshape(modality.shape + (1,) * (outs[0].ndim - 2))
    return functools.reduce(lambda acc, i: jnp.where(m == i, outs[i], acc),
                            range(1, len(outs)), outs[0])


def reference(params, cfg, tokens, positions, segments, modality):
    mods = range(cfg.mot.num_modalities)
    x = params["embed"]["embedding"][tokens]
    mask = attention_mask(segments, segments)
    for layer in range(cfg.n_layers):
        w = jax.tree.map(lambda a: a[layer], params["blocks"])
        a = w["attn"]
        h = _select([_norm(x, w["attn_norm"]["scale"][m]) for m in mods], modality)
        q = _select([jnp.einsum("bse,ehd->bshd", h, a["q"][m]) for m in mods], modality)
        k = _select([jnp.einsum("bse,ehd->bshd", h, a["k"][m]) for m in mods], modality)
        v = _select([jnp.einsum("bse,ehd->bshd", h, a["v"][m]) for m in mods], modality)
        if cfg.qk_norm:
            q = _select([_norm(q, a["q_norm"]["scale"][m]) for m in mods], modality)
            k = _select([_norm(k, a["k_norm"]["scale"][m]) for m in mods], modality)
        q, k = apply_rope(q, positions, cfg.rope_theta), apply_rope(k, positions, cfg.rope_theta)
        out = attend(q, k, v, mask)
        x = x + _select([jnp.einsum("bshd,hde->bse", out, a["o"][m]) for m in mods], modality)
        h = _select([_norm(x, w["mlp_norm"]["scale"][m]) for m in mods], modality)
        p = w["mlp"]
        x = x + _select([(jax.nn.silu(h @ p["gate"][m]) * (h @ p["up"][m])) @ p["down"][m]
                         for m in mods], modality)
    return _norm(x, params["final_norm"]["scale"]) @ params["head"]


def params_of(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@pytest.mark.parametrize("pattern", ["text", "image", "random", "boundary"])
@pytest.mark.parametrize("matmul", ["tiled", "ragged"])
def test_forward_matches_reference(pattern, matmul):
    model = make(matmul=matmul)
    args = inputs(pattern)
    got = nnx.jit(lambda m, *a: m(*a))(model, *args)
    want = reference(params_of(model), model_cfg(model), *args)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def model_cfg(model):
    return tiny_cfg(mot=dict(enabled=True, num_modalities=2),
                    qk_norm=model.blocks.attn.q_norm is not None)


@pytest.mark.parametrize("matmul,remat", [("tiled", "none"), ("ragged", "none"),
                                          ("tiled", "full")])
@pytest.mark.slow
def test_gradients_match_reference(matmul, remat):
    model = make(matmul=matmul, remat=remat)
    args = inputs("boundary", seed=1)
    graphdef, params = nnx.split(model, nnx.Param)
    cfg = model_cfg(model)

    def loss_mot(p):
        return jnp.mean(jnp.tanh(nnx.merge(graphdef, p)(*args)))

    def loss_ref(p):
        return jnp.mean(jnp.tanh(reference(nnx.to_pure_dict(p), cfg, *args)))

    got = nnx.to_pure_dict(jax.jit(jax.grad(loss_mot))(params))
    want = nnx.to_pure_dict(jax.grad(loss_ref)(params))
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6),
                 got, want)
    # every modality's copy of a block weight gets gradient (both occur in the batch)
    q_grad = np.asarray(got["blocks"]["attn"]["q"])
    assert all(np.abs(q_grad[:, m]).sum() > 0 for m in range(2))


def test_identical_copies_are_the_dense_model():
    """Copies all equal to the dense weights: MoT must be the dense model, whatever the
    modality pattern (routing must not reorder what attention sees)."""
    dense = Decoder(tiny_cfg(qk_norm=True), rngs=nnx.Rngs(0))
    model = make(seed=5)
    dense_p = params_of(dense)
    tiled = jax.tree.map(lambda d, m: jnp.broadcast_to(d[:, None] if m.ndim > d.ndim else d,
                                                       m.shape), dense_p, params_of(model))
    nnx.update(model, tiled)
    args = inputs("random", seed=3)
    np.testing.assert_allclose(model(*args), dense(*args[:3]), rtol=2e-5, atol=2e-5)
    make.cache_clear()   # this test changed the cached model's weights


def test_mot_false_is_the_dense_model():
    base, off = Decoder(tiny_cfg(), rngs=nnx.Rngs(0)), Decoder(tiny_cfg(mot=dict(enabled=False)),
                                                                rngs=nnx.Rngs(0))
    args = inputs("random")
    assert jax.tree.map(np.shape, params_of(base)) == jax.tree.map(np.shape, params_of(off))
    np.testing.assert_array_equal(base(*args[:3]), off(*args))   # modality ignored


def test_modality_is_required():
    with pytest.raises(ValueError, match="needs `modality`"):
        make()(*inputs("text")[:3])


def test_decode_with_cache_matches_forward():
    model = make(tile=2)
    tokens, positions, _, modality = inputs("boundary")
    segments = jnp.ones_like(tokens)
    full = model(tokens, positions, segments, modality)
    cache = model.init_cache(B, S)
    decode = nnx.jit(lambda m, t, p, s, c, mo: m.decode(t, p, s, c, mo))
    logits, cache = decode(model, tokens[:, :4], positions[:, :4], segments[:, :4], cache,
                           modality[:, :4])
    steps = [logits]
    for i in range(4, S):
        logits, cache = decode(model, tokens[:, i:i + 1], positions[:, i:i + 1],
                               segments[:, i:i + 1], cache, modality[:, i:i + 1])
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=2e-5, atol=2e-5)


# ---- the grouped matmul alone ----

@pytest.mark.parametrize("num,tile,n,empty", [(2, 4, 13, None), (2, 8, 8, None),
                                               (3, 4, 17, None), (2, 64, 9, None),
                                               (3, 3, 11, 1), (3, 4, 10, 2), (2, 4, 9, 0),
                                               (2, 2, 29, None), (3, 1, 23, None)])
@pytest.mark.parametrize("impl", ["tiled", "ragged"])
@pytest.mark.slow
def test_grouped_matmul_value_and_gradient(num, tile, n, empty, impl):
    rng = np.random.default_rng(n * num + tile)
    groups = rng.integers(0, num, n)
    groups[rng.random(n) < 0.3] = num - 1          # uneven group sizes
    # (n, tile) = (29, 2): windows of 16, 8, 4 and 2 rows (mot._windows); a modality with
    # no rows: `empty`
    if empty is not None:
        groups[groups == empty] = (empty + 1) % num
    modality = jnp.asarray(groups[None], jnp.int32)
    x = jnp.asarray(rng.normal(size=(1, n, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(num, 5, 6)), jnp.float32)
    dy = jnp.asarray(rng.normal(size=(1, n, 6)), jnp.float32)
    r = mot.route(modality, num, tile)
    assert np.all(np.diff(np.asarray(r.groups)) >= 0) and int(r.sizes.sum()) == r.groups.size

    def grouped(x, w):
        return mot.unsort_rows(mot.grouped_matmul(mot.sort_rows(x, r), w, r, impl), r)

    def direct(x, w):
        return jnp.einsum("bnk,bnkf->bnf", x, w[modality])

    np.testing.assert_allclose(grouped(x, w), direct(x, w), rtol=1e-5, atol=1e-5)
    g_got = jax.grad(lambda x, w: jnp.sum(grouped(x, w) * dy), argnums=(0, 1))(x, w)
    g_want = jax.grad(lambda x, w: jnp.sum(direct(x, w) * dy), argnums=(0, 1))(x, w)
    for got, want in zip(g_got, g_want):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_route_is_a_stable_sort():
    modality = jnp.asarray([[1, 0, 1, 1], [0, 0, 1, 0]], jnp.int32)
    r = mot.route(modality, 2, 3)
    assert r.perm.tolist() == [1, 4, 5, 7, 0, 2, 3, 6, 0, 0]     # + tile - 1 padding rows
    assert r.groups.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert (r.counts.tolist(), r.sizes.tolist()) == ([4, 4], [4, 6])
    assert mot.window_rows(r) == 3
    assert np.asarray(r.perm)[np.asarray(r.inv)].tolist() == list(range(8))


# ---- config and accounting ----

def test_param_count_and_flops():
    cfg = tiny_cfg(mot=dict(enabled=True, num_modalities=3), qk_norm=True)
    model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    sizes = [np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
    assert flops.param_count(cfg) == sum(sizes)
    dense = tiny_cfg(qk_norm=True)
    assert flops.param_count(cfg) > flops.param_count(dense)
    assert flops.flops_per_token(cfg, 64) == flops.flops_per_token(dense, 64)


@pytest.mark.parametrize("field,value", [("enabled", 1), ("num_modalities", 1),
                                         ("matmul", "masked"), ("tile", 0)])
def test_bad_fields_are_named(field, value):
    with pytest.raises(ValueError, match=f"model.mot.{field}"):
        Decoder(tiny_cfg(mot={"enabled": True, field: value}), rngs=nnx.Rngs(0))


# ---- sharded ----

def _sharded_step(mesh_shape, strategy="fsdp_tp"):
    cfg = tiny_cfg(mot=dict(enabled=True, tile=8), qk_norm=True, vocab_size=64, n_heads=4,
                   n_kv_heads=2)
    devices = jax.devices()[:int(np.prod(mesh_shape))]
    mesh, rule_table = mesh_lib.from_config({**dict(zip(mesh_lib.AXES, mesh_shape)),
                                             "strategy": strategy}, devices)

    def loss_fn(model, b):
        logits = model(b["tokens"], b["positions"], b["segment_ids"], b["modality"])
        return loss_lib.decoder_loss(logits, b)

    task = step_lib.Task("decoder", lambda rngs: Decoder(cfg, rngs=rngs), loss_fn, BATCH_AXES,
                         batch_weight=loss_lib.scored_weight)
    model_state, params = state.create(task.make_module, mesh, seed=0, rule_table=rule_table)
    tx = optim.make_optimizer(schema.complete(dict(
        lr=1e-2, warmup_steps=0, steps=10, schedule="constant", weight_decay=0.1,
        grad_clip=0.0), section="train"))
    opt_state, opt_shardings = step_lib.init_optimizer(tx, params, mesh)
    step = step_lib.make_train_step(task, model_state, tx, mesh, model_state.shardings,
                                    opt_shardings, rule_table=rule_table)
    rng = np.random.default_rng(0)
    batch = {"tokens": rng.integers(0, 64, (8, 12), dtype=np.int32),
             "positions": np.tile(np.arange(12, dtype=np.int32), (8, 1)),
             "segment_ids": np.ones((8, 12), np.int32),
             "modality": rng.integers(0, 2, (8, 12), dtype=np.int32),
             "loss_weights": np.ones((8, 12), np.float32)}
    params, _, metrics = step(params, opt_state, step_lib.global_batch(
        batch, step_lib.batch_shardings(task, mesh, rule_table)))
    return float(metrics["loss"]), jax.device_get(params)


@pytest.mark.slow
def test_sharded_step_matches_one_device():
    """fsdp x tensor x data on 8 devices: same loss and update as one device (each of the
    4 batch shards sorts its own rows; the weights' `tensor` axis stays automatic)."""
    if len(jax.devices()) < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    ref_loss, ref_params = _sharded_step((1, 1, 1))
    loss, params = _sharded_step((2, 2, 2))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=3e-5, rtol=1e-4),
                 params, ref_params)


def test_batch_shards_sort_their_own_rows():
    """Under data parallelism each device sorts and multiplies its own rows, so the compiled
    step needs about dense's temporaries per device. A sort over the global batch made XLA
    replicate the sorted stream (an all-reduce): every device then ran the blocks on the
    whole batch, with 5.9x dense's temporaries on this config."""
    if len(jax.devices()) < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    temps = {}
    for use_mot in (False, True):
        cfg = t2i_shapes.get_config("tiny")
        cfg.model.mot.enabled, cfg.mesh.data, cfg.mesh.strategy = use_mot, 8, "dp"
        cfg = config_lib.validate(cfg)
        compiled = dry_run.compile_decoder_step(cfg, jax.devices())[0]
        temps[use_mot] = compiled.memory_analysis().temp_size_in_bytes
    assert temps[True] < 2 * temps[False], temps
