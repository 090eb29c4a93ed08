"""Chameleon / Anole's VQ-GAN image tokenizer (encoder and decoder) as a Flax NNX module.

Why it exists: Chameleon (Meta) and Anole / Lumina-mGPT (fine-tunes of it that draw images)
read and write images as codes of one frozen VQ-GAN: 512-pixel images, 16x downsampling, a
32x32 grid of codes from a codebook of 8,192 vectors of dim 256. To train or sample mmar
models in that token space (or compare against those models) mmar needs the same tokenizer,
in JAX, giving *the same codes* as the reference and the same pixels back.

What it is: a taming-transformers ``VQModel`` (the release is one: its ``vqgan.yaml`` targets
``taming.models.vqgan.VQModel``): ``Encoder`` -> ``quant_conv`` -> nearest-codebook
quantizer; codes -> codebook rows -> ``post_quant_conv`` -> ``Decoder``. The encoder is the one
transformers ships (``ChameleonVQVAE``; transformers has no decoder), the decoder the
released checkpoint's (taming's ``Decoder``: the encoder's blocks with the channel plan
reversed, ``num_res_blocks + 1`` res blocks per level and nearest x2 upsampling). Attribute
paths mirror the torch tensor names (``encoder.down.1.block.0.conv1``, ...), so loading is a
rename (``kernel``/``scale`` <- ``weight``) and an OIHW -> HWIO transpose, and a missing or
extra tensor is reported by its torch name (chameleon_vqgan_weights.py: `load`,
`from_torch_names`, `params_from_torch_names`).

Layout: NHWC float32 inside (JAX's native conv layout), images in [-1, 1]: the original
Chameleon code feeds ``uint8 / 255 * 2 - 1`` (exactly mmar's ``autoencoder.to_model_range``);
transformers' ``ChameleonImageProcessor`` approximates it as ``uint8 * 0.0078 - 1`` (mean and
std 1.0, rescale_factor 0.0078), so white is 0.989 there, 1.0 here and in the original.

Configuration: a plain dict of ``transformers.ChameleonVQVAEConfig``'s fields (``embed_dim``,
``num_embeddings``, ``double_latent``, ``latent_channels``, ``resolution``, ``in_channels``,
``base_channels``, ``channel_multiplier``, ``num_res_blocks``, ``attn_resolutions``,
``dropout``, ``attn_type``), as a transformers ``vq_config`` or ``convert_vqgan``'s
``config.json`` holds it; missing fields take the released model's values.

Inference only: the VQ-GAN is frozen in every model that uses it, so there is no dropout (it
is 0.0 in the release and a no-op in torch's eval mode), no commitment loss and no
straight-through gradient.

Checkpoints: ``params_from_torch_names`` / ``from_torch_names`` take ``{torch name: array}``;
``load`` reads a directory: ``convert_vqgan``'s output (encoder and decoder, names with no
prefix) or a transformers Chameleon / Anole checkpoint (``config.json`` with ``vq_config``,
the encoder under ``model.vqmodel.``; encoder only, ``decoder=False``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

# The released Chameleon VQ-GAN (transformers' ChameleonVQVAEConfig defaults).
DEFAULTS: dict[str, Any] = {
    "embed_dim": 256, "num_embeddings": 8192, "double_latent": False, "latent_channels": 256,
    "resolution": 512, "in_channels": 3, "base_channels": 128,
    "channel_multiplier": (1, 1, 2, 2, 4), "num_res_blocks": 2, "attn_resolutions": None,
    "dropout": 0.0, "attn_type": "vanilla",
}
# Taming's GroupNorm: 32 groups, eps 1e-6, in every block.
GROUPS, EPS = 32, 1e-6
# The prefix of the VQ model's tensors in a transformers Chameleon / Anole checkpoint.
TRANSFORMERS_PREFIX = "model.vqmodel."
DECODER_HINT = (
    "the decoder weights (decoder.*) are not in transformers checkpoints, which hold the "
    "encoder only; they are in the released VQ-GAN (Chameleon's tokenizer/vqgan.ckpt and "
    "vqgan.yaml): convert them with `python -m mmar.tokenizers.image.convert_vqgan "
    "vqgan.ckpt vqgan.yaml --out DIR` and load DIR")


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
    """The validated ChameleonVQVAEConfig fields the graph is built from."""
    embed_dim: int
    num_embeddings: int
    double_latent: bool
    latent_channels: int
    resolution: int
    in_channels: int
    base_channels: int
    channel_multiplier: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]
    dropout: float
    attn_type: str

    @property
    def attention(self) -> bool:
        return self.attn_type == "vanilla"


def config_from_dict(vq_cfg: Mapping[str, Any] | VQGANConfig) -> VQGANConfig:
    """A ChameleonVQVAEConfig-field dict -> `VQGANConfig`; ValueError naming a bad field.

    Keys that are not VQ fields are ignored on purpose: a transformers ``vq_config`` also holds
    PretrainedConfig bookkeeping (``model_type``, ``transformers_version``, ``id2label``...)."""
    if isinstance(vq_cfg, VQGANConfig):
        return vq_cfg
    d = {**DEFAULTS, **{k: v for k, v in dict(vq_cfg).items() if k in DEFAULTS}}
    try:
        cfg = VQGANConfig(
            embed_dim=int(d["embed_dim"]), num_embeddings=int(d["num_embeddings"]),
            double_latent=bool(d["double_latent"]), latent_channels=int(d["latent_channels"]),
            resolution=int(d["resolution"]), in_channels=int(d["in_channels"]),
            base_channels=int(d["base_channels"]),
            channel_multiplier=tuple(int(m) for m in d["channel_multiplier"]),
            num_res_blocks=int(d["num_res_blocks"]),
            attn_resolutions=tuple(int(r) for r in (d["attn_resolutions"] or ())),
            dropout=float(d["dropout"]),
            attn_type="none" if d["attn_type"] is None else str(d["attn_type"]))
    except (TypeError, ValueError) as e:
        raise ValueError(f"VQ-GAN config: a field has the wrong type ({e}); fields: {d}") from e
    for name in ("embed_dim", "num_embeddings", "latent_channels", "resolution",
                 "in_channels", "base_channels", "num_res_blocks"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"VQ-GAN config: {name} must be >= 1, got {getattr(cfg, name)}")
    if not cfg.channel_multiplier or min(cfg.channel_multiplier) < 1:
        raise ValueError(f"VQ-GAN config: channel_multiplier must be a non-empty list of "
                         f"positive ints, got {list(cfg.channel_multiplier)}")
    widths = [cfg.base_channels * m for m in cfg.channel_multiplier]
    if any(w % GROUPS for w in widths):
        raise ValueError(f"VQ-GAN config: base_channels * channel_multiplier = {widths} must "
                         f"all be multiples of {GROUPS} (GroupNorm's {GROUPS} groups)")
    if cfg.double_latent:
        # quant_conv takes latent_channels; a doubled (mean, logvar) latent is a KL-VAE's,
        # which no Chameleon VQ-GAN is (transformers would fail on it too).
        raise ValueError("VQ-GAN config: double_latent must be false (a VQ-GAN's encoder "
                         "gives latent_channels channels to quant_conv)")
    if cfg.attn_type not in ("vanilla", "none"):
        raise ValueError(f"VQ-GAN config: attn_type must be 'vanilla' or 'none'/None, got "
                         f"{cfg.attn_type!r}")
    return cfg


# ---- building blocks (taming's, NHWC) ---------------------------------------------------------

def _norm(ch: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
    # Two-pass variance (use_fast_variance=False), as torch computes it: codes are an argmin,
    # so the encoder should be as close to torch's float32 arithmetic as it can.
    return nnx.GroupNorm(ch, num_groups=GROUPS, epsilon=EPS, use_fast_variance=False,
                         rngs=rngs)


def _conv(cin: int, cout: int, k: int, precision, rngs: nnx.Rngs, **kw) -> nnx.Conv:
    return nnx.Conv(cin, cout, (k, k), padding=kw.pop("padding", "SAME"),
                    precision=precision, rngs=rngs, **kw)


class ResnetBlock(nnx.Module):
    """norm1, swish, conv1, norm2, swish, (dropout), conv2, + (nin_shortcut 1x1) input."""

    def __init__(self, cin: int, cout: int, *, precision, rngs: nnx.Rngs):
        self.norm1 = _norm(cin, rngs)
        self.conv1 = _conv(cin, cout, 3, precision, rngs)
        self.norm2 = _norm(cout, rngs)
        self.conv2 = _conv(cout, cout, 3, precision, rngs)
        self.nin_shortcut = _conv(cin, cout, 1, precision, rngs) if cin != cout else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = self.conv2(nnx.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nnx.Module):
    """Single-head self-attention over all positions, 1x1-conv q/k/v/proj_out, residual."""

    def __init__(self, ch: int, *, precision, rngs: nnx.Rngs):
        self.precision = precision
        self.norm = _norm(ch, rngs)
        self.q = _conv(ch, ch, 1, precision, rngs)
        self.k = _conv(ch, ch, 1, precision, rngs)
        self.v = _conv(ch, ch, 1, precision, rngs)
        self.proj_out = _conv(ch, ch, 1, precision, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        y = self.norm(x)
        q, k, v = (f(y).reshape(n, h * w, c) for f in (self.q, self.k, self.v))
        att = jnp.einsum("nic,njc->nij", q, k, precision=self.precision) * (int(c) ** -0.5)
        att = jax.nn.softmax(att, axis=-1)
        out = jnp.einsum("nij,njc->nic", att, v, precision=self.precision)
        return x + self.proj_out(out.reshape(n, h, w, c))


class Downsample(nnx.Module):
    """Pad right/bottom by one, 3x3 stride-2 conv (taming's asymmetric padding)."""

    def __init__(self, ch: int, *, precision, rngs: nnx.Rngs):
        self.conv = _conv(ch, ch, 3, precision, rngs, strides=2, padding="VALID")

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))


class Upsample(nnx.Module):
    """Nearest x2 (torch's F.interpolate(scale_factor=2, mode="nearest")), 3x3 conv."""

    def __init__(self, ch: int, *, precision, rngs: nnx.Rngs):
        self.conv = _conv(ch, ch, 3, precision, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class Level(nnx.Module):
    """One resolution: `block` res blocks, each followed by `attn` at attention resolutions,
    then `downsample` (encoder) or `upsample` (decoder) unless it is the last level."""

    def __init__(self, blocks, attns, resample_name: str | None, resample):
        self.block = nnx.List(blocks)
        self.attn = nnx.List(attns)
        self.resample_name = resample_name
        if resample_name is not None:
            setattr(self, resample_name, resample)

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        if self.resample_name is not None:
            x = getattr(self, self.resample_name)(x)
        return x


class Mid(nnx.Module):
    """block_1, attn_1 (identity when attn_type is "none"), block_2."""

    def __init__(self, ch: int, attention: bool, *, precision, rngs: nnx.Rngs):
        self.block_1 = ResnetBlock(ch, ch, precision=precision, rngs=rngs)
        self.attn_1 = AttnBlock(ch, precision=precision, rngs=rngs) if attention else None
        self.block_2 = ResnetBlock(ch, ch, precision=precision, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.block_1(x)
        if self.attn_1 is not None:
            x = self.attn_1(x)
        return self.block_2(x)


class Encoder(nnx.Module):
    """conv_in; per level num_res_blocks res blocks (+ attention at attn_resolutions) and a
    stride-2 downsample but at the last level; mid; norm_out, swish, conv_out to
    latent_channels. transformers' ChameleonVQVAEEncoder, attribute for attribute."""

    def __init__(self, cfg: VQGANConfig, *, precision, rngs: nnx.Rngs):
        ch, mult = cfg.base_channels, cfg.channel_multiplier
        kw = dict(precision=precision, rngs=rngs)
        self.conv_in = _conv(cfg.in_channels, ch, 3, precision, rngs)
        levels, res, block_in = [], cfg.resolution, ch
        for i, m in enumerate(mult):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, ch * m, **kw))
                block_in = ch * m
                if cfg.attention and res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in, **kw))
            last = i == len(mult) - 1
            levels.append(Level(blocks, attns, None if last else "downsample",
                                None if last else Downsample(block_in, **kw)))
            res = res if last else res // 2
        self.down = nnx.List(levels)
        self.mid = Mid(block_in, cfg.attention, **kw)
        self.norm_out = _norm(block_in, rngs)
        self.conv_out = _conv(block_in, cfg.latent_channels, 3, precision, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        return self.conv_out(nnx.silu(self.norm_out(self.mid(x))))


class Decoder(nnx.Module):
    """taming's Decoder: conv_in from latent_channels to the deepest width; mid; levels
    deepest first, each num_res_blocks + 1 res blocks (+ attention at attn_resolutions) and a
    nearest x2 upsample but at level 0; norm_out, swish, conv_out to in_channels. `up[i]` is
    level i (taming prepends), as the checkpoint names it."""

    def __init__(self, cfg: VQGANConfig, *, precision, rngs: nnx.Rngs):
        ch, mult = cfg.base_channels, cfg.channel_multiplier
        kw = dict(precision=precision, rngs=rngs)
        block_in = ch * mult[-1]
        res = cfg.resolution // 2 ** (len(mult) - 1)
        self.conv_in = _conv(cfg.latent_channels, block_in, 3, precision, rngs)
        self.mid = Mid(block_in, cfg.attention, **kw)
        levels = [None] * len(mult)
        for i in reversed(range(len(mult))):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, ch * mult[i], **kw))
                block_in = ch * mult[i]
                if cfg.attention and res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in, **kw))
            levels[i] = Level(blocks, attns, "upsample" if i else None,
                              Upsample(block_in, **kw) if i else None)
            res = res * 2 if i else res
        self.up = nnx.List(levels)
        self.norm_out = _norm(block_in, rngs)
        self.conv_out = _conv(block_in, cfg.in_channels, 3, precision, rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(nnx.silu(self.norm_out(x)))


class Codebook(nnx.Module):
    """The codebook table [num_embeddings, embed_dim], at torch's `quantize.embedding.weight`."""

    def __init__(self, num: int, dim: int, *, rngs: nnx.Rngs):
        self.weight = nnx.Param(jax.random.uniform(rngs.params(), (num, dim), jnp.float32,
                                                   -1.0 / num, 1.0 / num))


class Quantizer(nnx.Module):
    """Nearest codebook row by squared distance, computed as the reference does
    (|z|^2 + |e|^2 - 2 z.e, then argmin: first index on ties), so near-ties break the same."""

    def __init__(self, num: int, dim: int, *, precision, rngs: nnx.Rngs):
        self.precision = precision
        self.embedding = Codebook(num, dim, rngs=rngs)

    def codes(self, z: jax.Array) -> jax.Array:
        e = self.embedding.weight[...]
        flat = z.reshape(-1, z.shape[-1])
        d = (jnp.sum(flat ** 2, axis=1, keepdims=True) + jnp.sum(e ** 2, axis=1)
             - 2 * jnp.einsum("md,nd->mn", flat, e, precision=self.precision))
        return jnp.argmin(d, axis=1).astype(jnp.int32).reshape(z.shape[:-1])

    def lookup(self, codes: jax.Array) -> jax.Array:
        return jnp.take(self.embedding.weight[...], codes, axis=0)

    def codes_to_vectors(self, codes: jax.Array) -> jax.Array:
        """`lookup` under the name mmar's quantizers give it (LANTERN's latent neighbours,
        mmar/sample/sjd.py)."""
        return self.lookup(jnp.asarray(codes, jnp.int32))


class ChameleonVQGAN(nnx.Module):
    """Chameleon's VQ-GAN: images [N, H, W, 3] in [-1, 1] <-> int32 codes [N, H/16, W/16].

    `decoder=False` builds the encoder half only (what a transformers checkpoint holds):
    `encode` works, `decode_codes` raises. `precision`: of every conv and matmul; "highest"
    by default because the codes are an argmin over distances, and on GPUs the default f32
    precision (TF32) would change some of them against the float32 reference."""

    def __init__(self, vq_cfg: Mapping[str, Any] | VQGANConfig, *, decoder: bool = True,
                 precision: Any = jax.lax.Precision.HIGHEST, rngs: nnx.Rngs | None = None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.config = cfg = config_from_dict(vq_cfg)
        kw = dict(precision=precision, rngs=rngs)
        self.encoder = Encoder(cfg, **kw)
        self.quant_conv = _conv(cfg.latent_channels, cfg.embed_dim, 1, precision, rngs)
        self.quantize = Quantizer(cfg.num_embeddings, cfg.embed_dim, **kw)
        self.has_decoder = decoder
        if decoder:
            self.post_quant_conv = _conv(cfg.embed_dim, cfg.latent_channels, 1, precision, rngs)
            self.decoder = Decoder(cfg, **kw)

    @property
    def num_codes(self) -> int:
        return self.config.num_embeddings

    @property
    def spatial_factor(self) -> int:
        """Pixels per code along each side (16 for the release: 512 px -> 32x32 codes)."""
        return 2 ** (len(self.config.channel_multiplier) - 1)

    def encode(self, images: jax.Array) -> jax.Array:
        """float [N, H, W, in_channels] in [-1, 1] -> int32 codes [N, H/f, W/f]."""
        images = jnp.asarray(images, jnp.float32)
        if images.ndim != 4 or images.shape[-1] != self.config.in_channels:
            raise ValueError(f"encode takes images [N, H, W, {self.config.in_channels}], got "
                             f"shape {images.shape}")
        return self.quantize.codes(self.quant_conv(self.encoder(images)))

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        """int codes [N, h, w] in [0, num_codes) -> float32 images [N, h*f, w*f, 3] in
        [-1, 1] (clipped, as the reference clamps before converting to pixels). Codes are
        not range-checked here (this runs under jit): one >= num_codes reads NaNs
        (`jnp.take`'s fill), a negative one wraps; `runtime.ImageTokenizer.decode` checks
        them first."""
        if not self.has_decoder:
            raise RuntimeError(f"this ChameleonVQGAN was built without a decoder "
                               f"(decoder=False): {DECODER_HINT}")
        codes = jnp.asarray(codes)
        if codes.ndim != 3:
            raise ValueError(f"decode_codes takes codes [N, h, w], got shape {codes.shape}")
        z = self.post_quant_conv(self.quantize.lookup(codes.astype(jnp.int32)))
        return jnp.clip(self.decoder(z), -1.0, 1.0)
