"""mmar.model.attention: the mask, the kernels and the one call that picks them, against numpy."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmar import schema
from mmar.model import attention
from mmar.model.attention import Visible, attend, attention_mask


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


def packed_qkv(b=2, s=12, h=4, kvh=2, d=8):
    """GQA q, k, v and packed rows: two documents / one document and padding."""
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(b, s, n, d)), jnp.float32) for n in (h, kvh, kvh))
    segments = jnp.asarray([[1] * 7 + [2] * 5, [1] * 9 + [0] * 3], jnp.int32)
    return q, k, v, segments


def test_attention_mask_is_causal_within_documents():
    q_seg = np.array([[1, 1, 2, 2, 2, 0], [0, 0, 1, 1, 1, 1]])
    np.testing.assert_array_equal(attention_mask(q_seg, q_seg), np_mask(q_seg, q_seg))
    # Decoding: 2 new queries at slots 3..4 of a 6-slot cache.
    k_seg = np.array([[0, 1, 1, 1, 1, 0], [1, 1, 2, 2, 2, 0]])
    new = np.array([[1, 1], [2, 2]])
    np.testing.assert_array_equal(attention_mask(new, k_seg, q_offset=3),
                                  np_mask(new, k_seg, q_offset=3))


def test_visible_replaces_only_the_causal_rule():
    k_seg = np.array([[0, 1, 1, 2, 1, 0]])
    new = np.array([[1, 1]])
    visible = np.random.default_rng(1).integers(0, 2, (1, 2, 6)).astype(bool)
    want = visible & (k_seg[:, None, :] == new[:, :, None]) & (k_seg != 0)[:, None, :]
    np.testing.assert_array_equal(attention_mask(new, k_seg, q_offset=3, visible=visible), want)


def test_attend_gqa_matches_numpy():
    rs = np.random.RandomState(2)
    q = rs.randn(2, 6, 4, 8).astype(np.float32)
    k, v = rs.randn(2, 2, 6, 2, 8).astype(np.float32)
    seg = np.array([[1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 1, 1]])
    mask = np_mask(seg, seg)
    np.testing.assert_allclose(attend(q, k, v, mask), np_attend(q, k, v, mask), atol=1e-5)


def test_attend_padding_rows_are_finite():
    rs = np.random.RandomState(3)
    q, k, v = rs.randn(3, 1, 4, 2, 8).astype(np.float32)
    seg = np.array([[0, 0, 1, 1]])
    out = attend(q, k, v, attention_mask(seg, seg))
    assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("per_kv_head", [False, True])
@pytest.mark.parametrize("block", [4, 5, 16])
@pytest.mark.slow
def test_blockwise_attention_matches_plain_in_value_and_gradient(block, per_kv_head):
    """Packed rows (two documents and padding), GQA: the blockwise path (causal blocks, the
    hand-written backward pass), batched or one (row, KV head) at a time, gives `attend`'s
    output and gradients, also for a block that does not divide S."""
    q, k, v, segments = packed_qkv()
    ref = lambda q, k, v: attend(q, k, v, attention_mask(segments, segments))
    blk = lambda q, k, v: attention.attend_blockwise(q, k, v, segments, block, per_kv_head)
    real = np.asarray(segments > 0)          # padding queries see nothing: output unused
    np.testing.assert_allclose(np.asarray(blk(q, k, v))[real], np.asarray(ref(q, k, v))[real],
                               atol=1e-6)
    rng = np.random.default_rng(1)
    weights = jnp.asarray(rng.normal(size=q.shape), jnp.float32) * (segments > 0)[..., None, None]
    loss = lambda f: lambda *a: jnp.sum(f(*a) * weights)
    for g_blk, g_ref in zip(jax.grad(loss(blk), argnums=(0, 1, 2))(q, k, v),
                            jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(g_blk, g_ref, atol=1e-5)


def _model(**fields):
    return schema.complete(fields, section="model")


def test_implementation_resolves_the_platform_once():
    impl = attention.implementation(_model(attention="blockwise", attention_block=64))
    cpu = jax.default_backend() == "cpu"
    assert (impl.name, impl.block, impl.per_kv_head) == ("blockwise", 64, cpu)
    assert impl.interpret == (jax.default_backend() != "tpu")
    # Equal settings are equal (and hash alike): models built from one config share a graph.
    assert impl == attention.implementation(_model(attention="blockwise", attention_block=64))
    assert hash(impl) == hash(dataclasses.replace(impl))
    assert attention.implementation(_model()).name == "xla"
    with pytest.raises(ValueError, match="model.attention"):
        attention.implementation(_model(attention="flash"))


@pytest.mark.parametrize("name", ["xla", "blockwise"])
def test_one_call_for_every_setting(name):
    """`impl(q, k, v, visible)`: the packed rows' segment ids go to the configured kernel, an
    explicit mask always to `attend` (the KV cache's path); both give `attend`'s values."""
    q, k, v, segments = packed_qkv()
    impl = attention.implementation(_model(attention=name, attention_block=5))
    want = np.asarray(attend(q, k, v, attention_mask(segments, segments)))
    real = np.asarray(segments > 0)
    packed = impl.packed(segments)
    assert (packed.mask is not None) == (name == "xla")
    np.testing.assert_allclose(np.asarray(impl(q, k, v, packed))[real], want[real], atol=1e-6)
    only_segments = np.asarray(impl(q, k, v, Visible(segments)))
    np.testing.assert_allclose(only_segments[real], want[real], atol=1e-6)
    mask = attention_mask(segments, segments)
    np.testing.assert_array_equal(impl(q, k, v, Visible(mask=mask)), attend(q, k, v, mask))
