"""model.attention="splash": the Pallas splash kernel (interpret mode on CPU) against `attend`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmar.model import Decoder
from mmar.model.attention import attend, attention_mask
from mmar.model.splash import attend_splash
from mmar.parallel import rules
from tests.helpers.model_configs import tiny_cfg


def packed_qkv(b=2, s=256, h=4, kvh=2, d=8, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(b, s, n, d)), jnp.float32) for n in (h, kvh, kvh))
    segments = jnp.asarray([[1] * 100 + [2] * 130 + [3] * 26, [1] * 200 + [0] * 56], jnp.int32)
    return q, k, v, segments


@pytest.mark.slow
def test_splash_matches_plain_attention_in_value_and_gradient():
    """Three packed documents (one crossing a block edge) / one plus padding, GQA (2 query
    heads per KV head), blocks of 128 in a 256-token row: outputs and gradients of every
    real token equal the XLA path's."""
    q, k, v, segments = packed_qkv()
    ref = lambda q, k, v: attend(q, k, v, attention_mask(segments, segments))
    spl = lambda q, k, v: attend_splash(q, k, v, segments, block=128, interpret=True)
    real = np.asarray(segments > 0)
    np.testing.assert_allclose(np.asarray(spl(q, k, v))[real], np.asarray(ref(q, k, v))[real],
                               atol=1e-5)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
    weights = weights * (segments > 0)[..., None, None]
    loss = lambda f: lambda *a: jnp.sum(f(*a) * weights)
    for g_spl, g_ref in zip(jax.grad(loss(spl), argnums=(0, 1, 2))(q, k, v),
                            jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(g_spl, g_ref, atol=1e-5)


def test_splash_decoder_on_an_8_device_mesh_matches_xla_decoder():
    """The whole decoder with attention="splash" under a 2 (data) x 2 (fsdp) x 2 (tensor)
    mesh (the kernel inside shard_map) gives the single-device XLA decoder's logits."""
    cfg = dict(n_heads=4, n_kv_heads=2, vocab_size=48)
    xla = Decoder(tiny_cfg(**cfg), rngs=nnx.Rngs(0))
    splash = Decoder(tiny_cfg(attention="splash", attention_block=128, **cfg), rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 48, (4, 256)), jnp.int32)
    segments = jnp.asarray([[1] * 150 + [2] * 106] * 2 + [[1] * 256] * 2, jnp.int32)
    positions = jnp.asarray([list(range(150)) + list(range(106))] * 2 + [list(range(256))] * 2,
                            jnp.int32)
    want = nnx.jit(lambda m, t, p, s: m(t, p, s))(xla, tokens, positions, segments)
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    with rules.use_mesh(mesh):
        got = nnx.jit(lambda m, t, p, s: m(t, p, s))(splash, tokens, positions, segments)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4)


def test_splash_block_must_fit_the_kernel():
    q, k, v, segments = packed_qkv(s=192, b=1)
    with pytest.raises(ValueError, match="multiple of 128.*data.seq_len"):
        attend_splash(q, k, v, segments[:, :192], block=128, interpret=True)


def test_splash_kernel_serves_several_jitted_functions():
    """The cached kernel is built outside any trace: a second jitted function (an eval step
    after the train step) reuses it instead of failing on the first trace's tracers."""
    q, k, v, segments = packed_qkv(b=2, s=256)
    run = lambda q: attend_splash(q, k, v, segments, block=128, interpret=True)
    first = jax.jit(run)(q)
    np.testing.assert_array_equal(jax.jit(lambda q: run(q) * 2)(q), first * 2)
