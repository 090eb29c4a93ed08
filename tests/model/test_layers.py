"""mmar.model.layers against plain numpy written out here (attention's in test_attention.py)."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmar.model import layers
from mmar.model.attention import Visible, attention_mask
from tests.helpers.model_configs import tiny_cfg
from tests.model.test_attention import np_attend, np_mask


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
    out, _ = attn(x, positions, Visible(mask=attention_mask(seg, seg)))

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
