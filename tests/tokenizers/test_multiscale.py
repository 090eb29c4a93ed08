"""Multi-scale residual quantization (VAR): resize matrices against PyTorch's interpolate,
the quantizer against a plain numpy loop, decoding from fewer scales, the tokenizer shape."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmar.model import next_scale
from mmar.tokenizers.image.multiscale import MultiScaleRQ

SCALES = (1, 2, 3, 4)


@pytest.mark.parametrize("src,dst", [(4, 1), (4, 2), (4, 3), (6, 4), (5, 5)])
def test_area_matrix_is_torch_area_interpolation(src, dst):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(src, src)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], size=(dst, dst),
                                           mode="area")[0, 0].numpy()
    a = next_scale.area_matrix(src, dst)
    np.testing.assert_allclose(a @ x @ a.T, want, atol=1e-5)


@pytest.mark.parametrize("src,dst", [(1, 4), (2, 4), (3, 4), (3, 8), (4, 4)])
def test_bilinear_matrix_is_torch_bilinear(src, dst):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).normal(size=(src, src)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], size=(dst, dst),
                                           mode="bilinear", align_corners=False)[0, 0].numpy()
    u = next_scale.bilinear_matrix(src, dst)
    np.testing.assert_allclose(u @ x @ u.T, want, atol=1e-5)


def numpy_msrq(f, codebook, scales):
    """The VAR loop, one image at a time, with explicit nearest-neighbour search."""
    g = scales[-1]
    out_codes, f_hats = [], []
    for img in f:
        f_hat, codes = np.zeros_like(img), []
        for k in scales:
            down, up = next_scale.area_matrix(g, k), next_scale.bilinear_matrix(k, g)
            r = np.einsum("ih,hwc,jw->ijc", down, img - f_hat, down)
            d = ((r.reshape(-1, 1, r.shape[-1]) - codebook[None]) ** 2).sum(-1)
            c = d.argmin(1)
            codes.extend(c.tolist())
            f_hat = f_hat + np.einsum("ih,hwc,jw->ijc", up, codebook[c].reshape(k, k, -1), up)
        out_codes.append(codes)
        f_hats.append(f_hat)
    return np.asarray(out_codes), np.stack(f_hats)


def test_quantizer_matches_numpy_loop_and_decodes_its_codes():
    q = MultiScaleRQ(SCALES, 16, 3, rngs=nnx.Rngs(0))
    f = np.random.default_rng(2).normal(size=(5, 4, 4, 3)).astype(np.float32)
    z_q, codes, aux = q(jnp.asarray(f))
    want_codes, want_hat = numpy_msrq(f.astype(np.float64), np.asarray(q.vq.vectors(),
                                                                        np.float64), SCALES)
    assert codes.shape == (5, 30) and q.codes_per_image == 30
    np.testing.assert_array_equal(np.asarray(codes), want_codes)
    np.testing.assert_allclose(np.asarray(z_q), want_hat, atol=1e-4)
    np.testing.assert_allclose(np.asarray(q.codes_to_vectors(codes)), want_hat, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(q.vectors_to_codes(z_q * 0 + f)), want_codes)
    assert float(aux["loss"]) > 0


def test_fewer_scales_decode_the_coarse_part_only():
    q = MultiScaleRQ(SCALES, 16, 3, rngs=nnx.Rngs(0))
    f = np.random.default_rng(3).normal(size=(2, 4, 4, 3)).astype(np.float32)
    _, codes, _ = q(jnp.asarray(f))
    e = np.asarray(q.vq.vectors())
    up1 = next_scale.bilinear_matrix(1, 4)
    want = np.einsum("ih,bhwc,jw->bijc", up1, e[np.asarray(codes)[:, :1]].reshape(2, 1, 1, 3),
                     up1)   # the 1x1 map spread over the grid
    np.testing.assert_allclose(np.asarray(q.codes_to_vectors(codes, scales_used=1)), want,
                               atol=1e-5)
    errors = [float(jnp.mean((q.codes_to_vectors(codes, m) - f) ** 2)) for m in (1, 2, 3, 4)]
    assert errors[-1] < errors[0]


def test_gradients_reach_encoder_and_codebook():
    q = MultiScaleRQ(SCALES, 8, 2, rngs=nnx.Rngs(0))
    f = jnp.asarray(np.random.default_rng(4).normal(size=(3, 4, 4, 2)), jnp.float32)

    def loss(model, f):
        z_q, _, aux = model(f)
        return jnp.sum(z_q ** 2) + aux["loss"]

    g_model, g_f = nnx.grad(loss, argnums=(0, 1))(q, f)
    assert float(jnp.abs(g_f).sum()) > 0
    assert float(jnp.abs(g_model.vq.codebook[...]).sum()) > 0


def test_bad_scales_and_shapes_are_refused():
    with pytest.raises(ValueError, match="msrq.scales"):
        MultiScaleRQ((2, 1, 4), 8, 2, rngs=nnx.Rngs(0))
    q = MultiScaleRQ(SCALES, 8, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"latents \[B, 4, 4, 2\]"):
        q(jnp.zeros((1, 8, 8, 2)))
