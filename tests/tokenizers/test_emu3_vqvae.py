"""Parity of mmar's Flax port of Emu3's image tokenizer with transformers' `Emu3VQVAE`.

A tiny random transformers model (three levels, so factor 4; attention at the deepest level
and two heads; temporal factor 4, so two causal temporal downsamples and upsamples), every
parameter and BatchNorm statistic perturbed so that no norm or bias is trivial, is exported
to numpy, loaded into the JAX module, and compared: codes exactly, pixels to 1e-4, on a
square and a non-square size. Plus the loader's errors, the checkpoint prefix, and the names
and shapes of the released (default) configuration, built on torch's meta device.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from mmar.tokenizers.image import emu3_vqvae, emu3_vqvae_weights  # noqa: E402

TINY = dict(codebook_size=64, embed_dim=4, latent_channels=4, base_channels=32,
            channel_multiplier=[1, 2, 2], num_res_blocks=1, attn_resolutions=[2],
            hidden_size=64, num_attention_heads=2, temporal_downsample_factor=4)
SIZES = [(32, 32), (32, 48)]


@pytest.fixture(scope="module")
def reference():
    """(transformers model, its config dict, its state dict as numpy)."""
    config = transformers.Emu3VQVAEConfig(**TINY)
    torch.manual_seed(0)
    model = transformers.Emu3VQVAE(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
    tensors = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    return model, config.to_dict(), tensors


@pytest.fixture(scope="module")
def port(reference):
    _, cfg, tensors = reference
    model = emu3_vqvae_weights.from_torch_names(tensors, cfg)
    return (model, nnx.jit(lambda m, x: m.encode(x)),
            nnx.jit(lambda m, c: m.decode_codes(c)))


@pytest.fixture(scope="module")
def codes(reference, port):
    """{size: (transformers codes, ported codes)} of three random images per size."""
    tmodel = reference[0]
    model, encode, _ = port
    rng = np.random.default_rng(0)
    out = {}
    for h, w in SIZES:
        images = rng.uniform(-1, 1, (3, h, w, 3)).astype(np.float32)
        with torch.no_grad():
            ref = tmodel.encode(torch.from_numpy(images).permute(0, 3, 1, 2),
                                torch.tensor([[h, w]] * len(images))).image_tokens
        out[h, w] = (torch.stack(ref).numpy(), np.asarray(encode(model, jnp.asarray(images))))
    return out


@pytest.mark.parametrize("size", SIZES)
def test_codes_match_transformers(codes, port, size):
    ref, ours = codes[size]
    factor = port[0].spatial_factor
    assert factor == 4 and port[0].num_codes == TINY["codebook_size"]
    assert ours.dtype == np.int32 and ours.shape == (3, size[0] // factor, size[1] // factor)
    assert len(np.unique(ref)) > 5  # a real test: not one code everywhere
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("size", SIZES)
def test_decoded_pixels_match_transformers(reference, codes, port, size):
    ref_codes = codes[size][0]
    model, _, decode = port
    with torch.no_grad():
        ref = reference[0].decode(torch.from_numpy(ref_codes)).permute(0, 2, 3, 1).numpy()
    ours = np.asarray(decode(model, jnp.asarray(ref_codes, jnp.int32)))
    assert ours.shape == (3, *size, 3) and ours.dtype == np.float32
    assert np.abs(ref).max() > 1  # perturbed weights: not a near-constant image
    assert np.abs(ours - ref).max() < 1e-4


def test_checkpoint_prefix_ignores_the_language_model(reference):
    _, cfg, tensors = reference
    full = {emu3_vqvae_weights.PREFIX + k: v for k, v in tensors.items()}
    full["model.text_model.embed_tokens.weight"] = np.zeros((3, 2), np.float32)
    state = emu3_vqvae_weights.params_from_torch_names(full, cfg, emu3_vqvae_weights.PREFIX)
    kernel = state["encoder"]["conv_in"]["kernel"].get_value()
    np.testing.assert_array_equal(
        kernel, np.transpose(tensors["encoder.conv_in.weight"], (2, 3, 1, 0)))


def test_missing_unexpected_and_misshapen_tensors_are_named(reference):
    _, cfg, tensors = reference
    missing = dict(tensors)
    del missing["decoder.up_block.up.2.attn_norms.0.conv_y.weight"]
    with pytest.raises(ValueError, match=r"missing tensor decoder\.up_block\.up\.2\.attn_norms"
                                         r"\.0\.conv_y\.weight"):
        emu3_vqvae_weights.params_from_torch_names(missing, cfg)
    bad = dict(tensors, **{"quantize.embedding.weight": np.zeros((63, 4), np.float32)})
    with pytest.raises(ValueError, match=r"quantize\.embedding\.weight: shape \(63, 4\)"):
        emu3_vqvae_weights.params_from_torch_names(bad, cfg)
    extra = dict(tensors, **{"encoder.extra.weight": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match=r"unexpected tensor encoder\.extra\.weight"):
        emu3_vqvae_weights.params_from_torch_names(extra, cfg)


def test_configs_transformers_cannot_run_are_refused():
    with pytest.raises(ValueError, match="embed_dim 8 != latent_channels 4"):
        emu3_vqvae.vq_config(dict(TINY, embed_dim=8))
    with pytest.raises(ValueError, match="hidden_size 32"):
        emu3_vqvae.vq_config(dict(TINY, hidden_size=32))


def test_released_config_names_and_shapes():
    """Emu3's default config (4 levels, 2 res blocks, ~270M parameters): every tensor of
    transformers' state dict has a parameter of the transposed shape, and none is left over
    (shapes only: the torch model lives on the meta device, the port is abstract)."""
    config = transformers.Emu3VQVAEConfig()
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in transformers.Emu3VQVAE(config).state_dict().items()
                  if not k.endswith("num_batches_tracked")}
    abstract = nnx.eval_shape(lambda: emu3_vqvae.Emu3VQVAE(config.to_dict()))
    ours = {}
    for path, var in nnx.to_flat_state(nnx.state(abstract)):
        shape = tuple(var.get_value().shape)
        axes = emu3_vqvae_weights._KERNEL_AXES.get(len(shape)) if path[-1] == "kernel" else None
        # invert the torch -> flax permutation to get the torch shape back
        ours[emu3_vqvae_weights.torch_name(path)] = (
            shape if axes is None else tuple(shape[axes.index(i)] for i in range(len(shape))))
    assert ours == shapes
    assert abstract.spatial_factor == 8 and abstract.num_codes == 32768
