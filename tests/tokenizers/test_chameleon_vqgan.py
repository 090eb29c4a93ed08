"""Chameleon's VQ-GAN in NNX against torch references, on a tiny random config.

Encoder: transformers' `ChameleonVQVAE` (codes must be identical). Decoder: transformers has
none, so the reference is taming's `Decoder` written here in plain torch from transformers'
encoder blocks (the release's decoder is built from the same ResnetBlock / AttnBlock), named as
the released checkpoint names it; pixels within 1e-4. Every parameter is perturbed, so a
swapped or untransposed tensor cannot hide behind an initial value (GroupNorm's ones, zero
biases).
"""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from safetensors.numpy import save_file  # noqa: E402
from torch import nn  # noqa: E402
from transformers.models.chameleon import modeling_chameleon as hf  # noqa: E402

from mmar.tokenizers.image import chameleon_vqgan as cv  # noqa: E402
from mmar.tokenizers.image import chameleon_vqgan_weights as cvw  # noqa: E402
from mmar.tokenizers.image import convert_vqgan  # noqa: E402

# Two levels (32 px -> 16x16 codes), attention at the 16-px level: in the encoder's level 1,
# the decoder's level 1 and both mids.
VQ = dict(embed_dim=8, num_embeddings=64, double_latent=False, latent_channels=8,
          resolution=32, in_channels=3, base_channels=32, channel_multiplier=[1, 2],
          num_res_blocks=1, attn_resolutions=[16], dropout=0.0, attn_type="vanilla")
DECODE_TOL = 1e-4


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class TamingDecoder(nn.Module):
    """taming.modules.diffusionmodules.model.Decoder (temb_ch 0, vanilla attention)."""

    def __init__(self, config):
        super().__init__()
        ch, mult = config.base_channels, config.channel_multiplier
        n = len(mult)
        block_in, res = ch * mult[-1], config.resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(config.latent_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = hf.ChameleonVQVAEEncoderResnetBlock(config, block_in, block_in)
        self.mid.attn_1 = hf.ChameleonVQVAEEncoderAttnBlock(block_in)
        self.mid.block_2 = hf.ChameleonVQVAEEncoderResnetBlock(config, block_in, block_in)
        self.up = nn.ModuleList()
        for i in reversed(range(n)):
            up = nn.Module()
            up.block, up.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(config.num_res_blocks + 1):
                up.block.append(
                    hf.ChameleonVQVAEEncoderResnetBlock(config, block_in, ch * mult[i]))
                block_in = ch * mult[i]
                if res in config.attn_resolutions:
                    up.attn.append(hf.ChameleonVQVAEEncoderAttnBlock(block_in))
            if i != 0:
                up.upsample = Upsample(block_in)
                res *= 2
            self.up.insert(0, up)
        self.norm_out = nn.GroupNorm(32, block_in, eps=1e-6)
        self.conv_out = nn.Conv2d(block_in, config.in_channels, 3, padding=1)
        self.num_res_blocks = config.num_res_blocks

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for i in reversed(range(len(self.up))):
            for j in range(self.num_res_blocks + 1):
                h = self.up[i].block[j](h)
                if len(self.up[i].attn) > 0:
                    h = self.up[i].attn[j](h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


class TorchVQGAN(nn.Module):
    """The released VQModel's layout: transformers' encoder half + the decoder above."""

    def __init__(self, config):
        super().__init__()
        vq = hf.ChameleonVQVAE(config)
        self.encoder, self.quant_conv = vq.encoder, vq.quant_conv
        self.quantize, self.post_quant_conv = vq.quantize, vq.post_quant_conv
        self.decoder = TamingDecoder(config)
        self.vq = [vq]   # a list: not a submodule, so state_dict keeps the release's names

    @torch.no_grad()
    def encode(self, images_nhwc):
        x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)
        out = self.vq[0].encode(x).image_tokens
        return out.numpy().reshape(len(images_nhwc), x.shape[2] // 2, x.shape[3] // 2)

    @torch.no_grad()
    def decode_codes(self, codes):
        z = self.quantize.embedding(torch.from_numpy(codes).long()).permute(0, 3, 1, 2)
        x = self.decoder(self.post_quant_conv(z))
        return torch.clamp(x, -1, 1).permute(0, 2, 3, 1).numpy(), x.permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    model = TorchVQGAN(transformers.ChameleonVQVAEConfig(**VQ)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.05 if p.ndim > 1 else 0.1))
        # Keep decoded pixels mostly inside [-1, 1], so the clip hides no differences.
        model.decoder.conv_out.weight.mul_(0.3)
    return model


@pytest.fixture(scope="module")
def tensors(reference):
    """The release's state dict: {torch name: float32 numpy}."""
    return {k: v.numpy().copy() for k, v in reference.state_dict().items()}


@pytest.fixture(scope="module")
def full(tensors):
    return cvw.from_torch_names(tensors, VQ)


@pytest.fixture(scope="module")
def images():
    return np.random.RandomState(0).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def codes(reference, images):
    return reference.encode(images)


def test_tensor_names_are_the_releases(tensors):
    """transformers' encoder names are the released checkpoint's; the decoder's are taming's."""
    assert "encoder.down.1.attn.0.proj_out.weight" in tensors
    assert "encoder.down.0.downsample.conv.weight" in tensors
    assert "quantize.embedding.weight" in tensors
    assert "decoder.up.1.upsample.conv.weight" in tensors
    assert "decoder.up.0.upsample.conv.weight" not in tensors
    assert "decoder.up.1.attn.1.q.weight" in tensors
    assert "decoder.up.0.attn.0.q.weight" not in tensors


def test_encode_matches_transformers(reference, tensors, codes, images):
    """An encoder-only transformers checkpoint (model.vqmodel.*, next to language-model tensors)
    gives transformers' codes exactly; a non-square image too."""
    hf_names = {cv.TRANSFORMERS_PREFIX + k: v for k, v in tensors.items()
                if not k.startswith("decoder.")}
    hf_names["model.embed_tokens.weight"] = np.zeros((4, 2), np.float32)
    enc = cvw.from_torch_names(hf_names, VQ, cv.TRANSFORMERS_PREFIX, decoder=False)
    got = np.asarray(enc.encode(images))
    assert got.dtype == np.int32 and got.shape == (3, 16, 16)
    assert len(np.unique(codes)) > 10
    np.testing.assert_array_equal(got, codes)
    wide = np.random.RandomState(1).uniform(-1, 1, (1, 32, 48, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(enc.encode(wide)), reference.encode(wide))
    assert enc.num_codes == 64 and enc.spatial_factor == 2
    with pytest.raises(RuntimeError, match="convert_vqgan"):
        enc.decode_codes(got)


def test_full_model_encodes_and_decodes_as_torch(full, reference, codes, images):
    np.testing.assert_array_equal(np.asarray(full.encode(images)), codes)
    want, raw = reference.decode_codes(codes)
    assert np.mean(np.abs(raw) < 1) > 0.7   # the clip leaves most pixels to compare
    got = np.asarray(full.decode_codes(codes))
    assert got.shape == (3, 32, 32, 3) and got.dtype == np.float32
    assert np.abs(got - want).max() < DECODE_TOL, np.abs(got - want).max()


def test_convert_round_trip(tmp_path, reference, tensors, full, codes, images):
    """vqgan.ckpt (a Lightning-style dict with loss.* tensors) + vqgan.yaml -> DIR -> load."""
    state_dict = dict(reference.state_dict())
    state_dict["loss.discriminator.main.0.weight"] = torch.zeros(2, 3, 4, 4)
    torch.save({"state_dict": state_dict, "epoch": 3, "global_step": 10},
               tmp_path / "vqgan.ckpt")
    ddconfig = dict(double_z=False, z_channels=8, resolution=32, in_channels=3, out_ch=3,
                    ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[16], dropout=0.0)
    (tmp_path / "vqgan.yaml").write_text(
        "model:\n  target: taming.models.vqgan.VQModel\n  params:\n    embed_dim: 8\n"
        "    n_embed: 64\n    ddconfig: " + json.dumps(ddconfig) + "\n"
        "    lossconfig: {target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator}\n")
    out = tmp_path / "out"
    assert convert_vqgan.main([str(tmp_path / "vqgan.ckpt"), str(tmp_path / "vqgan.yaml"),
                               "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text()) == VQ
    loaded = cvw.load(out)
    np.testing.assert_array_equal(np.asarray(loaded.encode(images)), codes)
    np.testing.assert_array_equal(np.asarray(loaded.decode_codes(codes)),
                                  np.asarray(full.decode_codes(codes)))


def test_load_transformers_directory(tmp_path, tensors, codes, images):
    """A transformers checkpoint directory: config.json's vq_config, model.vqmodel.* tensors
    (bfloat16-safe reading), encoder only by default."""
    names = {cv.TRANSFORMERS_PREFIX + k: v for k, v in tensors.items()
             if not k.startswith("decoder.")}
    names["lm_head.weight"] = np.zeros((4, 2), np.float32)
    save_file(names, str(tmp_path / "model-00001-of-00001.safetensors"))
    vq_config = {**VQ, "model_type": "chameleon_vqgan", "initializer_range": 0.02}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "chameleon",
                                                      "vq_config": vq_config}))
    enc = cvw.load(tmp_path)
    assert not enc.has_decoder
    np.testing.assert_array_equal(np.asarray(enc.encode(images)), codes)


def test_bad_checkpoints_name_the_tensor(tensors):
    missing = {k: v for k, v in tensors.items() if k != "decoder.up.1.attn.0.k.bias"}
    with pytest.raises(ValueError, match=r"missing tensor 'decoder\.up\.1\.attn\.0\.k\.bias'"):
        cvw.params_from_torch_names(missing, VQ)
    with pytest.raises(ValueError, match="decoder=False"):   # encoder-only, loaded as full
        cvw.params_from_torch_names({k: v for k, v in tensors.items()
                                    if not k.startswith("decoder.")}, VQ)
    wrong = {**tensors, "encoder.conv_out.weight": np.zeros((8, 64, 1, 1), np.float32)}
    with pytest.raises(ValueError,
                       match=r"'encoder\.conv_out\.weight' has shape \(8, 64, 1, 1\)"):
        cvw.params_from_torch_names(wrong, VQ)
    extra = {**tensors, "encoder.down.0.attn.0.q.weight": np.zeros((32, 32, 1, 1), np.float32)}
    with pytest.raises(ValueError,
                       match=r"unexpected tensor 'encoder\.down\.0\.attn\.0\.q\.weight'"):
        cvw.params_from_torch_names(extra, VQ)


def test_convert_errors_name_file_and_field(tmp_path, capsys):
    (tmp_path / "vqgan.yaml").write_text(
        "model:\n  params:\n    embed_dim: 8\n    n_embed: 64\n    ddconfig: {ch: 32}\n")
    torch.save({"state_dict": {}}, tmp_path / "vqgan.ckpt")
    assert convert_vqgan.main([str(tmp_path / "vqgan.ckpt"), str(tmp_path / "vqgan.yaml"),
                               "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "vqgan.yaml" in err and "model.params.ddconfig.ch_mult" in err
    assert not (tmp_path / "out").exists()
