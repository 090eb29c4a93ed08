"""Image autoencoder: shapes, encode/decode consistency, config errors, jit step, overfit."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from mmar.tokenizers.image.autoencoder import Autoencoder, to_model_range, to_uint8
from mmar.tokenizers.image.losses import reconstruction_loss


def _cfg(levels=(5, 5, 5, 5), **kw):
    """A partial `image_tokenizer` section (the Autoencoder completes it from the schema)."""
    base = dict(
        arch="conv",
        downsample=8,
        channels=8,
        channel_mult=(1, 1, 1),
        num_res_blocks=1,
        quantizer="fsq",
        fsq=dict(levels=levels),
        loss="l1+l2",
    )
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _rngs(seed=0):
    # rbg keys: threefry random-init ops compile per parameter shape, seconds each on a busy CPU.
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def _shapes_images(n, size=32, seed=0):
    """Flat-coloured squares on black, uint8 [n, size, size, 3]."""
    rng = np.random.RandomState(seed)
    out = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        for _ in range(rng.randint(1, 4)):
            cy, cx = rng.randint(0, 4, 2) * 8
            color = rng.choice([0, 255], 3)
            color[rng.randint(3)] = 255
            out[i, cy + 1 : cy + 7, cx + 1 : cx + 7] = color
    return out


@nnx.jit
def _forward(model, x):
    recon, codes, aux = model(x)
    return recon, codes, aux, model.encode(x), model.decode_codes(codes)


@pytest.mark.parametrize("downsample,mult", [(4, (1, 2)), (8, (1, 2, 2)), (16, (1, 1, 2, 2))])
def test_shapes_and_encode_decode(downsample, mult):
    model = Autoencoder(_cfg(downsample=downsample, channel_mult=mult), rngs=_rngs(0))
    x = to_model_range(_shapes_images(3))
    recon, codes, aux, enc, dec = _forward(model, x)
    h = 32 // downsample
    assert recon.shape == (3, 32, 32, 3) and recon.dtype == jnp.float32
    assert codes.shape == (3, h, h) and codes.dtype == jnp.int32
    assert int(codes.min()) >= 0 and int(codes.max()) < model.num_codes == 625
    assert float(aux["loss"]) == 0.0
    assert model.codes_per_image(32) == h * h
    assert model.codes_per_image((32, 64)) == h * h * 2
    # encode -> decode_codes reproduces the training path (same codes, same images).
    np.testing.assert_array_equal(np.asarray(enc), np.asarray(codes))
    assert dec.shape == (3, 32, 32, 3)
    np.testing.assert_allclose(np.asarray(dec), np.asarray(recon), atol=1e-5)


def test_bad_config():
    with pytest.raises(ValueError, match=r"image_tokenizer\.downsample"):
        Autoencoder(_cfg(downsample=2, channel_mult=(1,)), rngs=_rngs(0))
    with pytest.raises(ValueError, match=r"image_tokenizer\.channel_mult"):
        Autoencoder(_cfg(downsample=8, channel_mult=(1, 2)), rngs=_rngs(0))
    with pytest.raises(ValueError, match=r"image_tokenizer\.quantizer"):
        Autoencoder(_cfg(quantizer="nope"), rngs=_rngs(0))
    model = Autoencoder(_cfg(), rngs=_rngs(0))
    with pytest.raises(ValueError, match=r"image_tokenizer\.loss"):
        reconstruction_loss(model, jnp.zeros((1, 32, 32, 3)), _cfg(loss="l3"))
    with pytest.raises(ValueError, match="downsample"):
        model.codes_per_image(36)


def test_uint8_helpers():
    u = np.arange(256, dtype=np.uint8).reshape(1, 1, -1, 1).repeat(3, -1)
    x = to_model_range(u)
    assert x.dtype == jnp.float32 and float(x.min()) == -1.0 and float(x.max()) == 1.0
    np.testing.assert_array_equal(np.asarray(to_uint8(x)), u)
    assert to_uint8(jnp.asarray([-3.0, 3.0])).tolist() == [0, 255]


def _train(cfg, images, steps, lr=3e-3, seed=0):
    model = Autoencoder(cfg, rngs=_rngs(seed))
    opt = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x):
        grad_fn = nnx.value_and_grad(lambda m: reconstruction_loss(m, x, cfg), has_aux=True)
        (loss, metrics), grads = grad_fn(model)
        opt.update(model, grads)
        return metrics

    losses = [float(step(model, opt, images)["loss"]) for _ in range(steps)]
    return model, losses


def test_metrics_and_loss_kinds():
    model = Autoencoder(_cfg(), rngs=_rngs(0))
    x = to_model_range(_shapes_images(2))

    @nnx.jit
    def all_losses(model, x):
        return {k: reconstruction_loss(model, x, _cfg(loss=k)) for k in ("l1", "l2", "l1+l2")}

    out = all_losses(model, x)
    m = out["l1+l2"][1]
    for k in (
        "loss",
        "recon_loss",
        "l1",
        "mse",
        "psnr",
        "aux_loss",
        "usage_fraction",
        "perplexity",
    ):
        assert k in m and m[k].shape == ()
    np.testing.assert_allclose(float(m["psnr"]), 10 * np.log10(4 / float(m["mse"])), rtol=1e-5)
    np.testing.assert_allclose(float(out["l1"][0]), float(m["l1"]), rtol=1e-6)
    np.testing.assert_allclose(float(out["l2"][0]), float(m["mse"]), rtol=1e-6)
    np.testing.assert_allclose(float(out["l1+l2"][0]), float(m["l1"] + m["mse"]), rtol=1e-6)
    assert 0.0 < float(m["usage_fraction"]) <= 1.0 and float(m["perplexity"]) >= 1.0


def test_overfit_small_batch():
    """150 jitted adam steps (nnx.jit + nnx.value_and_grad) on 8 fixed images: the loss falls
    far and beats the mean-image baseline."""
    cfg = _cfg(downsample=4, channels=8, channel_mult=(1, 2), num_res_blocks=0, levels=(8, 5, 5, 5))
    x = to_model_range(_shapes_images(8, seed=3))
    model, losses = _train(cfg, x, 150)
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])
    d = x - x.mean(0, keepdims=True)
    baseline = float(jnp.mean(jnp.abs(d)) + jnp.mean(d**2))  # predict the mean image
    assert losses[-1] < 0.8 * baseline, (losses[-1], baseline)


def test_patch_arch_codes_see_one_patch_each():
    """arch="patch": a code depends on its own 8x8 patch only, so equal patches get equal
    codes wherever they are, and changing one patch changes no other code."""
    cfg = ml_collections.ConfigDict(
        dict(
            quantizer="fsq",
            fsq=dict(levels=(5, 5, 5)),
            downsample=8,
            arch="patch",
            channels=8,
            channel_mult=(1, 1, 2),
            num_res_blocks=0,
            loss="l2",
        )
    )
    model = Autoencoder(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    patch = rng.uniform(-1, 1, (8, 8, 3)).astype(np.float32)
    images = np.tile(patch, (2, 4, 4, 1))  # [2, 32, 32, 3], the same patch everywhere
    images[1, 8:16, 16:24] = -patch  # one different patch in image 1
    codes = np.asarray(model.encode(jnp.asarray(images)))
    assert codes.shape == (2, 4, 4)
    assert (codes[0] == codes[0, 0, 0]).all()
    others = np.ones((4, 4), bool)
    others[1, 2] = False
    assert (codes[1][others] == codes[0][others]).all()
    recon = np.asarray(model.decode_codes(jnp.asarray(codes)))
    assert recon.shape == images.shape
    np.testing.assert_allclose(recon[0, :8, :8], recon[0, 24:, 24:], atol=1e-6)


def test_alpha_patch_decoder_matches_numpy_and_needs_two_sub_codes():
    """arch="patch_alpha": patch = base + m * colour with m = where^2 / max(where^2) (peak 1,
    so the colour's scale is pinned), where from sub-code 0's half of the latent and colour
    from sub-code 1's; codes come in [B, h, w, 2]."""
    cfg = _cfg(arch="patch_alpha", fsq=dict(levels=(5, 5, 5, 5), groups=2), num_res_blocks=0)
    model = Autoencoder(cfg, rngs=_rngs(1))
    codes = np.asarray(model.encode(to_model_range(_shapes_images(2))))
    assert codes.shape == (2, 4, 4, 2)
    assert (codes[..., 0] < 25).all() and (codes[..., 1] >= 25).all()
    z = np.asarray(model.quantizer.codes_to_vectors(jnp.asarray(codes)), np.float64)
    dec = model.decoder

    def mlp(layers, x):
        for i, layer in enumerate(layers):
            x = x @ np.asarray(layer.kernel[...])[0, 0] + np.asarray(layer.bias[...])
            if i < len(layers) - 1:
                x = x / (1 + np.exp(-x))         # silu
        return x

    where = mlp(dec.where, z[..., :2]) ** 2
    mask = where / (where.max(-1, keepdims=True) + 1e-3)
    colour = mlp(dec.what, z[..., 2:])
    patch = np.asarray(dec.base[...]) + mask[..., None] * colour[..., None, :]  # [B,h,w,64,3]
    want = patch.reshape(2, 4, 4, 8, 8, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 32, 32, 3)
    np.testing.assert_allclose(np.asarray(model.decode_codes(jnp.asarray(codes))), want,
                               atol=1e-5)
    with pytest.raises(ValueError, match="patch_alpha.*fsq.groups=2"):
        Autoencoder(_cfg(arch="patch_alpha"), rngs=_rngs(0))
