"""A small convolutional image autoencoder with a quantizer bottleneck (the image tokenizer).

Images are ``[B, H, W, 3]`` float in ``[-1, 1]`` (``to_model_range`` from uint8); codes are
``[B, H / downsample, W / downsample]`` int32 in ``[0, num_codes)``.

Encoder: conv_in -> per stage [num_res_blocks res blocks, stride-2 conv] -> res block
-> norm, SiLU, 1x1 conv to the quantizer's dim.
Decoder (mirror): 3x3 conv from dim -> res block -> per stage, deepest first
[num_res_blocks res blocks, nearest x2 upsample + 3x3 conv] -> norm, SiLU, conv_out to 3.

Res blocks are pre-activation (GroupNorm, SiLU, conv, GroupNorm, SiLU, conv) with a 1x1
shortcut when the width changes, and the second conv zero-initialised so each block starts as
the identity (stable with no warm-up on small nets). GroupNorm uses ``min(8, channels)`` groups
(the usual 32 would leave 1-2 channels per group at widths 32-64, and costs speed).

Config (the ``image_tokenizer`` section, completed with the schema's defaults, so a
hand-built partial section works; mmar/schema.py): ``arch``, ``downsample`` (4, 8 or 16),
``channels``, ``channel_mult`` (one per stride-2 stage), ``num_res_blocks``, ``quantizer`` and
its sub-section (``fsq.levels``, ``vq.*``, ...: quantizers.py); ``disc.weight`` (> 0 adds a
PatchGAN discriminator, discriminator.py) with ``disc.start`` and ``disc.channels``; ``norm``:
"group" or "none" (about 10-20% faster on CPU, no normalisation; the zero-initialised
residual convs keep it stable on small nets).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmar import schema
from mmar.derived import autoencoder_shape
from mmar.tokenizers.image.codebooks import Buffer
from mmar.tokenizers.image.discriminator import PatchDiscriminator
from mmar.tokenizers.image.quantizers import make_quantizer


def to_model_range(images) -> jax.Array:
    """uint8 images ``[..., 3]`` in [0, 255] -> float32 in [-1, 1]."""
    return jnp.asarray(images).astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images) -> jax.Array:
    """float images in [-1, 1] -> uint8 in [0, 255] (clipped, rounded)."""
    x = (jnp.asarray(images, jnp.float32) + 1.0) * 127.5
    return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)


def _groups(ch: int) -> int:
    g = min(8, ch)
    while ch % g:
        g -= 1
    return g


def _identity(x: jax.Array) -> jax.Array:
    return x


def _norm(kind: str, ch: int, rngs: nnx.Rngs):
    if kind == "none":
        return _identity
    return nnx.GroupNorm(ch, num_groups=_groups(ch), rngs=rngs)


class ResBlock(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, *, norm: str = "group", rngs: nnx.Rngs):
        self.norm1 = _norm(norm, in_ch, rngs)
        self.conv1 = nnx.Conv(in_ch, out_ch, (3, 3), padding="SAME", rngs=rngs)
        self.norm2 = _norm(norm, out_ch, rngs)
        self.conv2 = nnx.Conv(
            out_ch, out_ch, (3, 3), padding="SAME", kernel_init=nnx.initializers.zeros, rngs=rngs
        )
        self.skip = nnx.Conv(in_ch, out_ch, (1, 1), rngs=rngs) if in_ch != out_ch else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = self.conv2(nnx.silu(self.norm2(h)))
        if self.skip is not None:
            x = self.skip(x)
        return x + h


class Downsample(nnx.Module):
    def __init__(self, ch: int, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(ch, ch, (3, 3), strides=(2, 2), padding="SAME", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class Upsample(nnx.Module):
    def __init__(self, ch: int, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(ch, ch, (3, 3), padding="SAME", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return self.conv(x)


class Encoder(nnx.Module):
    def __init__(
        self,
        channels: int,
        channel_mult: Sequence[int],
        num_res_blocks: int,
        out_dim: int,
        *,
        norm: str = "group",
        rngs: nnx.Rngs,
    ):
        self.conv_in = nnx.Conv(3, channels, (3, 3), padding="SAME", rngs=rngs)
        blocks = []
        ch = channels
        for mult in channel_mult:
            out = channels * mult
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch, out, norm=norm, rngs=rngs))
                ch = out
            if ch != out:  # num_res_blocks == 0: widen in the 1x1 of a plain conv
                blocks.append(nnx.Conv(ch, out, (1, 1), rngs=rngs))
                ch = out
            blocks.append(Downsample(ch, rngs=rngs))
        self.blocks = nnx.List(blocks)
        self.mid = ResBlock(ch, ch, norm=norm, rngs=rngs)
        self.norm_out = _norm(norm, ch, rngs)
        self.conv_out = nnx.Conv(ch, out_dim, (1, 1), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x)
        for block in self.blocks:
            x = block(x)
        x = self.mid(x)
        return self.conv_out(nnx.silu(self.norm_out(x)))


class Decoder(nnx.Module):
    def __init__(
        self,
        channels: int,
        channel_mult: Sequence[int],
        num_res_blocks: int,
        in_dim: int,
        *,
        norm: str = "group",
        rngs: nnx.Rngs,
    ):
        ch = channels * channel_mult[-1]
        self.conv_in = nnx.Conv(in_dim, ch, (3, 3), padding="SAME", rngs=rngs)
        self.mid = ResBlock(ch, ch, norm=norm, rngs=rngs)
        blocks = []
        for mult in reversed(channel_mult):
            out = channels * mult
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch, out, norm=norm, rngs=rngs))
                ch = out
            if ch != out:
                blocks.append(nnx.Conv(ch, out, (1, 1), rngs=rngs))
                ch = out
            blocks.append(Upsample(ch, rngs=rngs))
        self.blocks = nnx.List(blocks)
        self.norm_out = _norm(norm, ch, rngs)
        self.conv_out = nnx.Conv(ch, 3, (3, 3), padding="SAME", rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        x = self.mid(self.conv_in(z))
        for block in self.blocks:
            x = block(x)
        return self.conv_out(nnx.silu(self.norm_out(x)))


class PatchEncoder(nnx.Module):
    """Non-overlapping `downsample` x `downsample` patches -> pointwise MLP -> latent.

    Each code sees exactly one patch, so identical patches always get identical codes: when
    image content is aligned to the patch grid (the demo's shapes sit in 8px cells) the
    decoder model never has to learn several codes for the same content. `arch="conv"`
    (overlapping receptive fields) is the general-purpose choice.
    """

    def __init__(self, downsample: int, channels: int, out_dim: int, *, rngs: nnx.Rngs):
        self.patch = nnx.Conv(
            3, channels, (downsample, downsample), strides=downsample, padding="VALID", rngs=rngs
        )
        self.hidden = nnx.Conv(channels, channels, (1, 1), rngs=rngs)
        self.out = nnx.Conv(channels, out_dim, (1, 1), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(nnx.silu(self.hidden(nnx.silu(self.patch(x)))))


class PatchDecoder(nnx.Module):
    """Latent -> pointwise MLP -> one `downsample` x `downsample` RGB patch per code."""

    def __init__(self, downsample: int, channels: int, in_dim: int, *, rngs: nnx.Rngs):
        self.downsample = downsample
        self.inp = nnx.Conv(in_dim, channels, (1, 1), rngs=rngs)
        self.hidden = nnx.Conv(channels, channels, (1, 1), rngs=rngs)
        self.out = nnx.Conv(channels, downsample * downsample * 3, (1, 1), rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        x = self.out(nnx.silu(self.hidden(nnx.silu(self.inp(z)))))
        b, h, w, _ = x.shape
        p = self.downsample
        x = x.reshape(b, h, w, p, p, 3).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, h * p, w * p, 3)


def _mlp(inp: int, width: int, out: int, rngs: nnx.Rngs) -> nnx.List:
    """Three 1x1 convs (a pointwise MLP over the code grid), SiLU between."""
    return nnx.List([nnx.Conv(inp, width, (1, 1), rngs=rngs),
                     nnx.Conv(width, width, (1, 1), rngs=rngs),
                     nnx.Conv(width, out, (1, 1), rngs=rngs)])


def _run_mlp(layers, x: jax.Array) -> jax.Array:
    for layer in layers[:-1]:
        x = nnx.silu(layer(x))
    return layers[-1](x)


def _patches(x: jax.Array, p: int) -> jax.Array:
    """[B, H, W, C] -> [B, H/p, W/p, p*p, C], each patch's pixels in raster order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // p, w // p, p * p, c)


class AlphaPatchEncoder(nnx.Module):
    """One patch -> (where latent, what latent), each from a view that cannot see the other.

    where: the patch's brightness map (each pixel's largest channel) -> MLP; what: the
    patch's brightest colour (each channel's largest value over the pixels) -> MLP. On a
    flat-coloured object over a black background the first is the object's mask whatever its
    colour (every palette colour has a saturated channel) and the second its colour whatever
    its shape, so the two sub-codes are disentangled by construction: a free encoder trained
    to the same decoder separated them on some seeds only (docs/tokenizers.md).
    """

    def __init__(self, downsample: int, channels: int, out_dim: int, *, rngs: nnx.Rngs):
        self.downsample, self.split = downsample, out_dim // 2
        self.where = _mlp(downsample * downsample, channels, self.split, rngs)
        self.what = _mlp(3, channels, out_dim - self.split, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        patches = _patches(x, self.downsample)                 # [B, h, w, p*p, 3]
        brightness = jnp.max(patches, axis=-1)                 # [B, h, w, p*p]
        colour = jnp.max(patches, axis=-2)                     # [B, h, w, 3]
        return jnp.concatenate([_run_mlp(self.where, brightness),
                                _run_mlp(self.what, colour)], axis=-1)


class AlphaPatchDecoder(nnx.Module):
    """Two sub-codes -> one patch as ``base + mask * colour``: where x what.

    The first half of the latent (sub-code 0) decodes to a mask over the patch's pixels,
    ``m = u^2 / max(u^2)`` (non-negative, peak 1), the second half (sub-code 1) to one RGB
    vector; ``base`` is a learned background patch. A flat-coloured object on a plain
    background is exactly this, and the mask's fixed peak pins the colour's scale, so the
    two sub-codes can only reconstruct it by naming its shape and its colour apart: a
    colour-shape pair never seen in training is then two sub-codes that were each seen, and
    this decoder draws it (docs/tokenizers.md, "Factorised codes"). Measured on the way there
    (`tiny`, 6,000 steps): an unnormalised product leaves the scale free (a shape's mask
    absorbs a factor its colours then divide out: 1 of 3 held-out pairs drawn right), a
    signed max-normalised mask let shapes flip the colour's sign (2 of 3), and a sigmoid
    matte over tanh colours did not learn in the budget. Natural images are not one colour
    over a background: use `arch="conv"` for them.
    """

    def __init__(self, downsample: int, channels: int, in_dim: int, *, rngs: nnx.Rngs):
        self.downsample, self.split = downsample, in_dim // 2
        p = downsample
        self.where = _mlp(self.split, channels, p * p, rngs)
        self.what = _mlp(in_dim - self.split, channels, 3, rngs)
        self.base = nnx.Param(jnp.zeros((p * p, 3), jnp.float32))
        # A product of two near-zero factors has near-zero gradients in both: start "what" at
        # 1 so that "where" learns first (as a plain patch decoder would) and "what" follows.
        self.what[-1].bias[...] = jnp.ones((3,), jnp.float32)

    def __call__(self, z: jax.Array) -> jax.Array:
        b, h, w, _ = z.shape
        p = self.downsample
        where = jnp.square(_run_mlp(self.where, z[..., :self.split]))
        where = (where / (jnp.max(where, axis=-1, keepdims=True) + 1e-3))[..., None]
        what = _run_mlp(self.what, z[..., self.split:])[..., None, :]
        x = self.base[...] + where * what   # [b, h, w, p*p, 3]
        x = x.reshape(b, h, w, p, p, 3).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, h * p, w * p, 3)


ARCHS = ("conv", "patch", "patch_alpha")


class Autoencoder(nnx.Module):
    """Conv encoder -> quantizer -> conv decoder. See the module docstring."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        cfg = schema.complete(cfg, section="image_tokenizer")
        # The shape rules live with validation (mmar/derived.py): a bad shape stops a job
        # before any work.
        downsample, channels, channel_mult, num_res_blocks, norm = autoencoder_shape(cfg)
        self.downsample = downsample
        self.quantizer = make_quantizer(cfg, rngs)
        dim = self.quantizer.dim
        arch = cfg.arch
        if arch not in ARCHS:
            raise ValueError(f"image_tokenizer.arch: must be one of {ARCHS}, got {arch!r}")
        if arch in ("patch", "patch_alpha"):
            width = channels * channel_mult[-1]
            alpha = arch == "patch_alpha"
            self.encoder = (AlphaPatchEncoder if alpha else PatchEncoder)(
                downsample, width, dim, rngs=rngs)
            self.decoder = (AlphaPatchDecoder if alpha else PatchDecoder)(
                downsample, width, dim, rngs=rngs)
        else:
            self.encoder = Encoder(
                channels, channel_mult, num_res_blocks, dim, norm=norm, rngs=rngs
            )
            self.decoder = Decoder(
                channels, channel_mult, num_res_blocks, dim, norm=norm, rngs=rngs
            )
        if float(cfg.disc.weight) > 0:
            self.discriminator = PatchDiscriminator(int(cfg.disc.channels), rngs=rngs)
            self.step = Buffer(jnp.zeros((), jnp.float32))  # train steps, for the warm-up
        else:
            self.discriminator, self.step = None, None

    @property
    def depth(self) -> int:
        """Codes per latent position (the RQ depth or FSQ's groups; 1 otherwise)."""
        return self.quantizer.depth

    @property
    def num_codes(self) -> int:
        return self.quantizer.num_codes

    def codes_shape(self, image_size) -> tuple[int, int]:
        """``(h, w)`` of the code grid for an ``image_size`` (int or ``(H, W)``)."""
        h, w = (image_size, image_size) if np.ndim(image_size) == 0 else tuple(image_size)
        if h % self.downsample or w % self.downsample:
            raise ValueError(
                f"image size {(h, w)} is not divisible by image_tokenizer.downsample = "
                f"{self.downsample}"
            )
        return h // self.downsample, w // self.downsample

    def codes_per_image(self, image_size) -> int:
        """Image tokens per image: ``h * w * depth`` (multi-scale: the token maps' sum)."""
        h, w = self.codes_shape(image_size)
        return getattr(self.quantizer, "codes_per_image", h * w * self.depth)

    def _check_images(self, images: jax.Array) -> None:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images [B, H, W, 3], got shape {images.shape}")
        self.codes_shape(images.shape[1:3])

    def encode_latents(self, images: jax.Array) -> jax.Array:
        """Continuous encoder output ``[B, h, w, dim]`` (before quantization)."""
        self._check_images(images)
        return self.encoder(images.astype(jnp.float32))

    def encode(self, images: jax.Array) -> jax.Array:
        """images float [-1, 1] ``[B, H, W, 3]`` -> codes int32 ``[B, h, w]`` (``[B, h, w,
        depth]`` for RQ and factorised FSQ; ``[B, N]`` for multi-scale codes)."""
        _, codes, _ = self.quantizer(self.encode_latents(images))
        return codes

    def decode_codes(self, codes: jax.Array, scales_used: int | None = None) -> jax.Array:
        """codes int ``[B, h, w]`` (``[..., depth]`` for RQ and factorised FSQ, ``[B, N]``
        multi-scale) -> images float (roughly [-1, 1]) ``[B, H, W, 3]``. `scales_used`
        (multi-scale only): decode the first that many token maps (the coarse image)."""
        if scales_used is None:
            return self.decoder(self.quantizer.codes_to_vectors(codes))
        return self.decoder(self.quantizer.codes_to_vectors(codes, scales_used))

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, Any]]:
        """Training path: ``(recon, codes, aux)``; gradients pass the quantizer (straight-through)."""
        z_q, codes, aux = self.quantizer(self.encode_latents(images))
        return self.decoder(z_q), codes, aux
