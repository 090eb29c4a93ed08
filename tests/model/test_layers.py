"""mmar.model.layers against plain numpy written out here."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmar.model import layers
from model_configs import tiny_cfg


def np_rms_norm(x, scale, eps=1e-5):
    return x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + eps) * scale


def np_rope(x, positions, theta=10000.0):
    """Written pair by pair: dims (i, i + D/2) rotated by pos * theta^(-2i/D)."""
    out = np.empty_like(x)
    half = x.shape[-1] // 2
    for b in range(x.shape[0]):
        for s in range(x.shape[1]):
            for i in range(half):
                angle = positions[b, s] * theta ** (-2.0 * i / x.shape[-1])
                c, sn = np.cos(angle), np.sin(angle)
                a, bb = x[b, s, :, i], x[b, s, :, i + half]
                out[b, s, :, i] = a * c - bb * sn
                out[b, s, :, i + half] = bb * c + a * sn
    return out


def np_mask(q_seg, k_seg, q_offset=0):
    mask = np.zeros((q_seg.shape[0], q_seg.shape[1], k_seg.shape[1]), bool)
    for b in range(q_seg.shape[0]):
        for i in range(q_seg.shape[1]):
            for j in range(k_seg.shape[1]):
                mask[b, i, j] = (j <= q_offset + i and k_seg[b, j] == q_seg[b, i]
                                 and k_seg[b, j] != 0)
    return mask


def np_attend(q, k, v, mask):
    """Each query head h reads kv head h // group, softmax over visible keys only.
    Queries that see no key (padding) are left at 0: the model's output there is unused."""
    b, s, h, d = q.shape
    group = h // k.shape[2]
    out = np.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            logits = q[bi, :, hi] @ k[bi, :, hi // group].T / np.sqrt(d)
            for i in np.flatnonzero(mask[bi].any(-1)):
                visible = logits[i][mask[bi, i]]
                probs = np.exp(visible - visible.max())
                out[bi, i, hi] = probs / probs.sum() @ v[bi, mask[bi, i], hi // group]
    return out


def test_rms_norm_matches_numpy():
    norm = layers.RMSNorm(8, eps=1e-5, dtype=jnp.float32, param_dtype=jnp.float32,
                          rngs=nnx.Rngs(0))
    norm.scale[...] = jnp.linspace(0.5, 2.0, 8)
    x = np.random.RandomState(0).randn(2, 3, 8).astype(np.float32) * 3
    np.testing.assert_allclose(norm(x), np_rms_norm(x, np.linspace(0.5, 2.0, 8)), rtol=1e-5)


def test_rope_matches_numpy_and_keeps_relative_positions():
    rs = np.random.RandomState(1)
    x = rs.randn(2, 5, 3, 8).astype(np.float32)
    positions = rs.randint(0, 100, (2, 5))
    np.testing.assert_allclose(layers.apply_rope(x, positions, 10000.0),
                               np_rope(x, positions), atol=1e-4)
    # q.k after RoPE depends on the distance only: shifting both positions changes nothing.
    q, k = x[:1, :1], x[:1, 1:2]
    def score(pq, pk):
        rq = layers.apply_rope(q, np.array([[pq]]), 10000.0)
        rk = layers.apply_rope(k, np.array([[pk]]), 10000.0)
        return np.sum(np.asarray(rq) * np.asarray(rk), axis=-1)
    np.testing.assert_allclose(score(3, 7), score(40, 44), atol=1e-4)


def test_attention_mask_is_causal_within_documents():
    q_seg = np.array([[1, 1, 2, 2, 2, 0], [0, 0, 1, 1, 1, 1]])
    np.testing.assert_array_equal(layers.attention_mask(q_seg, q_seg), np_mask(q_seg, q_seg))
    # Decoding: 2 new queries at slots 3..4 of a 6-slot cache.
    k_seg = np.array([[0, 1, 1, 1, 1, 0], [1, 1, 2, 2, 2, 0]])
    new = np.array([[1, 1], [2, 2]])
    np.testing.assert_array_equal(layers.attention_mask(new, k_seg, q_offset=3),
                                  np_mask(new, k_seg, q_offset=3))


def test_attend_gqa_matches_numpy():
    rs = np.random.RandomState(2)
    q = rs.randn(2, 6, 4, 8).astype(np.float32)
    k, v = rs.randn(2, 2, 6, 2, 8).astype(np.float32)
    seg = np.array([[1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 1, 1]])
    mask = np_mask(seg, seg)
    np.testing.assert_allclose(layers.attend(q, k, v, mask), np_attend(q, k, v, mask),
                               atol=1e-5)


def test_attend_padding_rows_are_finite():
    rs = np.random.RandomState(3)
    q, k, v = rs.randn(3, 1, 4, 2, 8).astype(np.float32)
    seg = np.array([[0, 0, 1, 1]])
    out = layers.attend(q, k, v, layers.attention_mask(seg, seg))
    assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("qk_norm", [False, True])
def test_attention_module_matches_numpy(qk_norm):
    attn = layers.Attention(tiny_cfg(qk_norm=qk_norm), rngs=nnx.Rngs(4))
    if qk_norm:  # non-trivial scales so a swapped q/k norm would show
        attn.q_norm.scale[...] = jnp.linspace(0.5, 1.5, 8)
        attn.k_norm.scale[...] = jnp.linspace(1.5, 0.5, 8)
    rs = np.random.RandomState(5)
    x = rs.randn(2, 6, 16).astype(np.float32)
    positions = np.array([[0, 1, 2, 0, 1, 2], [0, 1, 2, 3, 4, 5]])
    seg = np.array([[1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 1, 0]])
    out, _ = attn(x, positions, layers.attention_mask(seg, seg))

    wq, wk, wv, wo = (np.asarray(w[...]) for w in (attn.q, attn.k, attn.v, attn.o))
    q = np.einsum("bse,ehd->bshd", x, wq)
    k = np.einsum("bse,ehd->bshd", x, wk)
    v = np.einsum("bse,ehd->bshd", x, wv)
    if qk_norm:
        q = np_rms_norm(q, np.linspace(0.5, 1.5, 8))
        k = np_rms_norm(k, np.linspace(1.5, 0.5, 8))
    o = np_attend(np_rope(q, positions), np_rope(k, positions), v, np_mask(seg, seg))
    real = seg != 0
    np.testing.assert_allclose(np.asarray(out)[real], np.einsum("bshd,hde->bse", o, wo)[real],
                               atol=1e-5)


def test_mlp_is_swiglu():
    mlp = layers.MLP(tiny_cfg(), rngs=nnx.Rngs(6))
    x = np.random.RandomState(7).randn(2, 3, 16).astype(np.float32)
    gate, up, down = (np.asarray(w[...]) for w in (mlp.gate, mlp.up, mlp.down))
    g = x @ gate
    np.testing.assert_allclose(mlp(x), (g / (1 + np.exp(-g)) * (x @ up)) @ down, atol=1e-5)


def test_embed_lookup_and_tied_logits():
    embed = layers.Embed(tiny_cfg(), rngs=nnx.Rngs(8))
    table = np.asarray(embed.embedding[...])
    tokens = np.array([[3, 0, 47]])
    np.testing.assert_array_equal(embed(tokens), table[tokens])
    x = np.random.RandomState(9).randn(1, 3, 16).astype(np.float32)
    np.testing.assert_allclose(embed.attend(x), x @ table.T, atol=1e-5)
    assert embed.attend(x.astype(jnp.bfloat16)).dtype == jnp.float32


def test_param_names_must_match_rank():
    with pytest.raises(ValueError, match="axis names"):
        layers.param(nnx.Rngs(0), nnx.initializers.ones, (2, 3), ("embed",), jnp.float32)


@pytest.mark.parametrize("block", [4, 5, 16])
def test_blockwise_attention_matches_plain_in_value_and_gradient(block):
    """Packed rows (two documents and padding), GQA: the blockwise path (causal blocks,
    remat) gives `attend`'s output and gradients, also for a block that does not divide S."""
    from mmar.model.layers import attend, attend_blockwise, attention_mask
    rng = np.random.default_rng(0)
    b, s, h, kvh, d = 2, 12, 4, 2, 8
    q, k, v = (jnp.asarray(rng.normal(size=(b, s, n, d)), jnp.float32) for n in (h, kvh, kvh))
    segments = jnp.asarray([[1] * 7 + [2] * 5, [1] * 9 + [0] * 3], jnp.int32)
    ref = lambda q, k, v: attend(q, k, v, attention_mask(segments, segments))
    blk = lambda q, k, v: attend_blockwise(q, k, v, segments, block)
    real = np.asarray(segments > 0)          # padding queries see nothing: output unused
    np.testing.assert_allclose(np.asarray(blk(q, k, v))[real], np.asarray(ref(q, k, v))[real],
                               atol=1e-6)
    weights = jnp.asarray(rng.normal(size=(b, s, h, d)), jnp.float32) * (segments > 0)[..., None, None]
    loss = lambda f: lambda *a: jnp.sum(f(*a) * weights)
    for g_blk, g_ref in zip(jax.grad(loss(blk), argnums=(0, 1, 2))(q, k, v),
                            jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(g_blk, g_ref, atol=1e-5)
