"""mmar.model.transformer: numpy forward, packing, KV cache, remat, logical names."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmar.model import Decoder
from mmar.parallel import rules
from tests.helpers.model_configs import tiny_cfg


@functools.lru_cache(maxsize=None)
def make(seed=0, **overrides):
    """Models are shared between tests (none mutates one): building one compiles its random
    initialisers, the slowest part of these tests on CPU."""
    return Decoder(tiny_cfg(**overrides), rngs=nnx.Rngs(seed))


forward = nnx.jit(lambda model, tokens, positions, segments: model(tokens, positions, segments))
decode = nnx.jit(lambda model, tokens, positions, segments, cache:
                 model.decode(tokens, positions, segments, cache))


# ---- a plain numpy forward pass from the model's parameter arrays ----

def np_norm(x, scale, eps=1e-5):
    return x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + eps) * scale


def np_rope(x, positions, theta=10000.0):
    half = x.shape[-1] // 2
    angles = positions[..., None, None] * theta ** (-np.arange(half) / half)  # [B,S,1,D/2]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * np.cos(angles) - x2 * np.sin(angles),
                           x2 * np.cos(angles) + x1 * np.sin(angles)], axis=-1)


def np_head_layer_norm(x, scale, bias, eps=1e-5):
    x = x - x.mean(-1, keepdims=True)
    return x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + eps) * scale + bias


def np_forward(model, cfg, tokens, positions, segments):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64),
                     nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    b, s = tokens.shape
    group = cfg.n_heads // cfg.n_kv_heads
    x = p["embed"]["embedding"][tokens]
    i, j = np.arange(s)[:, None], np.arange(s)[None, :]
    for layer in range(cfg.n_layers):
        w = jax.tree.map(lambda a: a[layer], p["blocks"])
        swin = cfg.get("norm_placement", "pre") == "swin"
        h = x if swin else np_norm(x, w["attn_norm"]["scale"])
        q = np.einsum("bse,ehd->bshd", h, w["attn"]["q"])
        k = np.einsum("bse,ehd->bshd", h, w["attn"]["k"])
        v = np.einsum("bse,ehd->bshd", h, w["attn"]["v"])
        if cfg.qk_norm and cfg.get("qk_norm_kind", "rms") == "head_layernorm":
            q = np_head_layer_norm(q, w["attn"]["q_norm"]["scale"], w["attn"]["q_norm"]["bias"])
            k = np_head_layer_norm(k, w["attn"]["k_norm"]["scale"], w["attn"]["k_norm"]["bias"])
        elif cfg.qk_norm:
            q = np_norm(q, w["attn"]["q_norm"]["scale"])
            k = np_norm(k, w["attn"]["k_norm"]["scale"])
        q, k = np_rope(q, positions), np_rope(k, positions)
        out = np.zeros_like(q)
        for bi in range(b):
            mask = (j <= i) & (segments[bi][:, None] == segments[bi][None, :])
            for hi in range(cfg.n_heads):
                logits = q[bi, :, hi] @ k[bi, :, hi // group].T / np.sqrt(cfg.head_dim)
                logits = np.where(mask, logits, -np.inf)
                probs = np.exp(logits - logits.max(-1, keepdims=True))
                out[bi, :, hi] = probs / probs.sum(-1, keepdims=True) @ v[bi, :, hi // group]
        attn = np.einsum("bshd,hde->bse", out, w["attn"]["o"])
        x = x + (np_norm(attn, w["attn_norm"]["scale"]) if swin else attn)
        h = x if swin else np_norm(x, w["mlp_norm"]["scale"])
        gate = h @ w["mlp"]["gate"]
        mlp = (gate / (1 + np.exp(-gate)) * (h @ w["mlp"]["up"])) @ w["mlp"]["down"]
        x = x + (np_norm(mlp, w["mlp_norm"]["scale"]) if swin else mlp)
    x = np_norm(x, p["final_norm"]["scale"])
    return x @ (p["embed"]["embedding"].T if cfg.tie_embeddings else p["head"])


def one_doc(length, seed=0, batch=1):
    tokens = np.random.RandomState(seed).randint(0, 48, (batch, length)).astype(np.int32)
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length))
    return tokens, positions, np.ones((batch, length), np.int32)


@pytest.mark.parametrize("qk_norm,tie", [(False, False), (True, True), (True, False),
                                         (False, True)])
def test_logits_match_numpy_forward(qk_norm, tie):
    cfg = tiny_cfg(qk_norm=qk_norm, tie_embeddings=tie)
    model = make(qk_norm=qk_norm, tie_embeddings=tie)
    tokens, positions, segments = one_doc(7, seed=2, batch=2)
    logits = forward(model, tokens, positions, segments)
    assert logits.shape == (2, 7, 48) and logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, np_forward(model, cfg, tokens, positions, segments),
                               atol=1e-4)


CHAMELEON = dict(qk_norm=True, qk_norm_kind="head_layernorm", norm_placement="swin")


@functools.lru_cache(maxsize=None)
def make_perturbed(**overrides):
    """A model whose norm weights and biases are random too (ones and zeros would hide a
    missing per-head weight or bias)."""
    model = Decoder(tiny_cfg(**overrides), rngs=nnx.Rngs(3))
    params = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(4), len(leaves))
    nnx.update(model, jax.tree.unflatten(tree, [
        x + 0.3 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]))
    return model


@pytest.mark.parametrize("options", [
    dict(qk_norm=True, qk_norm_kind="head_layernorm"), dict(norm_placement="swin"), CHAMELEON],
    ids=["head_layernorm", "swin", "both"])
def test_chameleon_options_match_numpy_forward_and_kv_cache(options):
    """Chameleon's per-head LayerNorm QK-norm and swin-norm: the training forward equals the
    numpy forward, and the KV-cache path (model/kv_decode.py) equals the training forward."""
    model = make_perturbed(**options)
    tokens, positions, segments = one_doc(9, seed=6, batch=2)
    full = forward(model, tokens, positions, segments)
    np.testing.assert_allclose(full, np_forward(model, tiny_cfg(**options), tokens, positions,
                                                segments), atol=1e-4)
    np.testing.assert_allclose(decode_in_steps(model, tokens, positions, segments, 4), full,
                               atol=1e-4)


def test_chameleon_options_are_refused_with_mot():
    with pytest.raises(ValueError, match="model.norm_placement='swin'"):
        Decoder(tiny_cfg(norm_placement="swin", mot=dict(enabled=True)), rngs=nnx.Rngs(0))


def test_packed_documents_do_not_see_each_other():
    model = make(qk_norm=True)
    doc_a, doc_b = one_doc(5, seed=4)[0], one_doc(4, seed=5)[0]
    tokens = np.concatenate([doc_a, doc_b, [[0, 0, 0]]], axis=1)
    positions = np.array([[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 0, 0]], np.int32)
    segments = np.array([[1, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0]], np.int32)
    packed = forward(model, tokens, positions, segments)
    alone_a = forward(model, *one_doc(5, seed=4))
    alone_b = forward(model, *one_doc(4, seed=5))
    np.testing.assert_allclose(packed[:, :5], alone_a, atol=1e-5)
    np.testing.assert_allclose(packed[:, 5:9], alone_b, atol=1e-5)


def decode_in_steps(model, tokens, positions, segments, prompt_len, max_len=12):
    """Prefill `prompt_len` tokens, then one call per token; all logits [B, S, V]."""
    cache = model.init_cache(tokens.shape[0], max_len)
    logits, cache = decode(model, tokens[:, :prompt_len], positions[:, :prompt_len],
                           segments[:, :prompt_len], cache)
    steps = [logits]
    for t in range(prompt_len, tokens.shape[1]):
        logits, cache = decode(model, tokens[:, t:t + 1], positions[:, t:t + 1],
                               segments[:, t:t + 1], cache)
        steps.append(logits)
    assert int(cache["index"]) == tokens.shape[1]
    assert len(cache["k"]) == 2 and cache["k"][0].shape == (2, 2, max_len, 8)  # L x [B, KVH, T, D]
    return np.concatenate(steps, axis=1)


def test_kv_cache_prefill_then_steps_match_forward():
    model = make(qk_norm=True)
    tokens, positions, segments = one_doc(9, seed=7, batch=2)
    got = decode_in_steps(model, tokens, positions, segments, prompt_len=5)
    np.testing.assert_allclose(got, forward(model, tokens, positions, segments), atol=1e-4)


def test_kv_cache_with_left_padded_prompts():
    """Row 0: a 5-token prompt; row 1: a 2-token prompt left-padded to 5 (pads in segment 0,
    positions from 0 at the first real token). Both decode 4 steps; each row must match
    its sequence run alone, unpadded (the numpy forward, checked against the model above)."""
    model = make(qk_norm=True)
    seqs = [one_doc(9, seed=9)[0][0], one_doc(6, seed=10)[0][0]]
    tokens, positions, segments = (np.zeros((2, 9), np.int32) for _ in range(3))
    for row, seq in enumerate(seqs):
        pad = 9 - len(seq)
        tokens[row, pad:] = seq
        positions[row, pad:] = np.arange(len(seq))
        segments[row, pad:] = 1
    got = decode_in_steps(model, tokens, positions, segments, prompt_len=5)
    for row, seq in enumerate(seqs):
        alone = np_forward(model, tiny_cfg(qk_norm=True), seq[None],
                           np.arange(len(seq))[None], np.ones((1, len(seq)), np.int32))
        np.testing.assert_allclose(got[row, 9 - len(seq):], alone[0], atol=1e-4)


def test_remat_gives_same_loss_and_grads():
    tokens, positions, segments = one_doc(6, seed=11, batch=2)

    def loss_fn(model):
        logits = model(tokens, positions, segments)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    results = []
    for remat in ("none", "full"):
        model = make(remat=remat, qk_norm=True)
        results.append(nnx.jit(nnx.value_and_grad(loss_fn))(model))
    (loss_a, grads_a), (loss_b, grads_b) = results
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads_a, grads_b)
    graphdef, state = nnx.split(make(remat="full", qk_norm=True))
    jaxpr = jax.make_jaxpr(lambda state: loss_fn(nnx.merge(graphdef, state)))(state)
    assert "remat" in str(jaxpr)  # the block really is rematerialised


def test_unrolled_layers_give_same_loss_and_grads_without_a_loop():
    tokens, positions, segments = one_doc(6, seed=12, batch=2)

    def loss_fn(model):
        logits = model(tokens, positions, segments)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    results, loops = [], []
    for scan in (True, False):
        model = make(scan_layers=scan, qk_norm=True)
        results.append(nnx.jit(nnx.value_and_grad(loss_fn))(model))
        graphdef, state = nnx.split(model)
        hlo = jax.jit(lambda st, g=graphdef: loss_fn(nnx.merge(g, st))).lower(state).as_text()
        loops.append("stablehlo.while" in hlo)
    (loss_a, grads_a), (loss_b, grads_b) = results
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads_a, grads_b)
    assert loops == [True, False]  # the scan is a loop; unrolled, the layers are inline


def test_every_param_has_logical_names_of_its_rank():
    model = make(qk_norm=True)
    specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
    allowed = {"embed", "mlp", "heads", "kv_heads", "head_dim", "vocab", "layers", "norm"}
    params = jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
    names = jax.tree_util.tree_leaves(specs, is_leaf=lambda s: isinstance(s, jax.P))
    assert len(params) == len(names) == 14
    for (path, value), spec in zip(params, names):
        key = jax.tree_util.keystr(path)
        assert len(spec) == value.ndim, key
        assert set(spec) <= allowed, key
        assert (spec[0] == "layers") == key.startswith("['blocks']"), key


def test_runs_under_a_mesh_with_constraints():
    """Every activation name is one rules.py knows, with the right rank."""
    mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), devices=jax.devices()[:1],
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    model = make(qk_norm=True)
    tokens, positions, segments = one_doc(5, seed=13)
    with rules.use_mesh(mesh):
        logits = nnx.jit(lambda m: m(tokens, positions, segments))(model)
        logits2, _ = nnx.jit(lambda m: m.decode(tokens, positions, segments,
                                                m.init_cache(1, 5)))(model)
    np.testing.assert_allclose(logits, forward(model, tokens, positions, segments), atol=1e-5)
    np.testing.assert_allclose(logits2, logits, atol=1e-5)


def test_bfloat16_compute_returns_float32_logits():
    model = make(dtype="bfloat16", qk_norm=True)
    tokens, positions, segments = one_doc(6, seed=14)
    logits = forward(model, tokens, positions, segments)
    assert logits.dtype == jnp.float32
    ref = forward(make(qk_norm=True), tokens, positions, segments)
    np.testing.assert_allclose(logits, ref, atol=0.1)
    assert jax.tree.leaves(nnx.state(model, nnx.Param))[0].dtype == jnp.float32


@pytest.mark.parametrize("field,value", [("n_kv_heads", 3), ("head_dim", 7), ("dtype", "fp8"),
                                         ("remat", "some"), ("d_model", 0),
                                         ("qk_norm", "yes")])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"model.{field}"):
        make(**{field: value})


def test_decode_with_visible_mask_out_of_order_and_rewound():
    """`visible` lets tokens enter the cache in another order than they condition on.

    Token 6 is written first after the prompt (it sees the prompt only: the forward pass of
    the sequence without token 5), then token 5 ("keys at positions up to mine": the plain
    forward's logits), then a wrong draft of token 7, rewound and rewritten with the true
    one: the plain forward's logits again."""
    model = make(qk_norm=True)
    tokens, positions, segments = one_doc(8, seed=11)
    want = forward(model, tokens, positions, segments)
    keep = [0, 1, 2, 3, 4, 6]
    without_5 = forward(model, tokens[:, keep], positions[:, keep], segments[:, keep])
    cache = model.init_cache(1, 12)
    _, cache = decode(model, tokens[:, :5], positions[:, :5], segments[:, :5], cache)
    slot_pos = np.full(12, 99, np.int32)  # position held by each cache slot (99: empty)
    slot_pos[:5] = np.arange(5)
    decode_visible = nnx.jit(lambda m, t, p, s, c, v: m.decode(t, p, s, c, visible=v))

    def step(t, cache):
        slot = int(cache["index"])
        slot_pos[slot] = t
        visible = (slot_pos[None, None, :] <= t) & (np.arange(12) <= slot)[None, None]
        return decode_visible(model, tokens[:, t:t + 1], positions[:, t:t + 1],
                              segments[:, t:t + 1], cache, jnp.asarray(visible))

    logits, cache = step(6, cache)
    np.testing.assert_allclose(logits[:, 0], without_5[:, 5], atol=1e-4)
    logits, cache = step(5, cache)
    np.testing.assert_allclose(logits[:, 0], want[:, 5], atol=1e-4)
    # Rewinding: a wrong draft at slot 6, then index set back and the true token 6 written.
    cache = model.init_cache(1, 12)
    _, cache = decode(model, tokens[:, :6], positions[:, :6], segments[:, :6], cache)
    wrong = (tokens[:, 6:7] + 1) % 48
    _, drafted = decode(model, wrong, positions[:, 6:7], segments[:, 6:7], cache)
    logits, _ = decode(model, tokens[:, 6:8], positions[:, 6:8], segments[:, 6:8],
                       dict(drafted, index=cache["index"]))
    np.testing.assert_allclose(logits, want[:, 6:8], atol=1e-4)


def test_blockwise_decoder_on_an_8_device_mesh_matches_xla_decoder():
    """Under a multi-device mesh `blockwise` takes its batched query-block path (without
    one, on CPU, it runs one row and KV head at a time; both in test_attention.py): the
    same logits and gradients as the plain decoder, with packing and GQA."""
    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (make test)")
    cfg = dict(n_heads=4, n_kv_heads=2)
    plain, blockwise = make(**cfg), make(attention="blockwise", attention_block=5, **cfg)
    rng = np.random.default_rng(3)
    tokens = jnp.asarray(rng.integers(0, 48, (4, 12)), jnp.int32)
    segments = jnp.asarray([[1] * 7 + [2] * 5] * 2 + [[1] * 12] * 2, jnp.int32)
    positions = jnp.asarray([list(range(7)) + list(range(5))] * 2 + [list(range(12))] * 2,
                            jnp.int32)

    def loss_fn(model):
        return jnp.mean(jnp.sin(model(tokens, positions, segments)))

    want, want_grads = nnx.jit(nnx.value_and_grad(loss_fn))(plain)
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    with rules.use_mesh(mesh):
        got, got_grads = nnx.jit(nnx.value_and_grad(loss_fn))(blockwise)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), got_grads,
                 want_grads)
