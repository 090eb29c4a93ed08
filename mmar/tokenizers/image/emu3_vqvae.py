"""Emu3's image tokenizer (transformers' ``Emu3VQVAE``) as a Flax NNX module, for parity.

Emu3 (BAAI) tokenizes images and videos with one 3-D VQ autoencoder: a 2-D conv encoder runs
on every frame (``2 ** (len(channel_multiplier) - 1)`` spatial downsampling, GroupNorm(32),
attention at the ``attn_resolutions`` levels and in the middle), then causal temporal convs
shrink time by ``temporal_downsample_factor``, and a nearest-codebook quantizer writes one code
per latent position. A still image is a clip of ``temporal_downsample_factor`` copies of
itself, so it gets exactly one temporal code slice. The decoder runs the temporal stack
backwards (nearest x2 in time + causal conv) and then a 2-D decoder whose norms are
SpatialNorm: GroupNorm modulated by 1x1 convs of the quantized vectors; of the frames it
makes, a still image is frame 0.

This port mirrors ``transformers.models.emu3.modeling_emu3`` (v5) operation for operation, so
that codes match it exactly and pixels to float32 rounding: every conv pads as torch does
(``Emu3VQVAEConv3d`` pads time causally with two zero frames whatever its kernel, and space
by ``k - s`` split ceil/floor; the stride-2 downsample pads right/bottom by one), GroupNorm
has eps 1e-6 and the exact (two-pass) variance, BatchNorm3d (eps 1e-5) uses its running
statistics, the quantizer's distance is the same ``|z|^2 + |e|^2 - 2 z.e``. Layout is
channels-last (NHWC, NTHWC), float32. Parameter paths copy transformers' module names, so
loading a state dict is a renaming plus kernel transposes (``emu3_vqvae_weights``).

Two shortcuts, both exact: the 2-D encoder is run once per image rather than once per
repeated frame (frames are independent there, and identical), and the 2-D decoder only on
frame 0 (every temporal op is causal or a per-frame norm, so frame 0 depends on the first
latent frame alone). That is 1 / temporal_downsample_factor of transformers' 2-D work.

Pixels are in [-1, 1]: Emu3's checkpoints ship an image processor with mean = std = 0.5
(transformers' ``Emu3ImageProcessor`` class defaults are CLIP's mean/std; the released
configs override them), which is also mmar's ``autoencoder.to_model_range``. Like
transformers, ``decode_codes`` does not clip; ``autoencoder.to_uint8`` does.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

# transformers' Emu3VQVAEConfig defaults (configuration_emu3.py): missing fields take these.
DEFAULTS: dict[str, Any] = dict(
    codebook_size=32768, embed_dim=4, latent_channels=4, double_latent=False, in_channels=3,
    out_channels=3, temporal_downsample_factor=4, base_channels=256,
    channel_multiplier=(1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(3,),
    hidden_size=1024, num_attention_heads=1, attention_dropout=0.0)


def vq_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a transformers ``vq_config`` dict that the model uses, defaults filled in
    (other keys a saved config.json carries, ``model_type`` and the like, are ignored);
    ValueError for a combination transformers' own model cannot run."""
    c = {k: cfg.get(k, v) for k, v in DEFAULTS.items()}
    c["channel_multiplier"] = tuple(c["channel_multiplier"])
    c["attn_resolutions"] = tuple(c["attn_resolutions"] or ())
    widths = [c["base_channels"] * m for m in c["channel_multiplier"]]
    t = c["temporal_downsample_factor"]
    problems = []
    if c["double_latent"]:
        problems.append("double_latent=True (quant_conv takes latent_channels, not twice that)")
    if c["embed_dim"] != c["latent_channels"]:
        problems.append(f"embed_dim {c['embed_dim']} != latent_channels "
                        f"{c['latent_channels']} (the decoder stacks both through one stack)")
    if t < 1 or t & (t - 1):
        problems.append(f"temporal_downsample_factor {t} is not a power of two")
    if any(w % 32 for w in widths):
        problems.append(f"widths {widths} are not all multiples of GroupNorm's 32 groups")
    attn_widths = {widths[-1]} | {widths[i] for i in c["attn_resolutions"] if i < len(widths)}
    if attn_widths != {c["hidden_size"]}:
        problems.append(f"hidden_size {c['hidden_size']} != the attention widths "
                        f"{sorted(attn_widths)}")
    if c["hidden_size"] % c["num_attention_heads"]:
        problems.append("hidden_size is not a multiple of num_attention_heads")
    if problems:
        raise ValueError("Emu3 vq_config: " + "; ".join(problems))
    return c


def _conv(cin: int, cout: int, k: int, rngs, precision, stride: int = 1, padding=None):
    """2-D conv, torch's symmetric ``padding=k // 2`` unless given."""
    pad = [(k // 2, k // 2)] * 2 if padding is None else padding
    return nnx.Conv(cin, cout, (k, k), strides=stride, padding=pad, precision=precision,
                    rngs=rngs)


def _group_norm(ch: int, rngs) -> nnx.GroupNorm:
    """torch ``GroupNorm(32, ch, eps=1e-6)``; the two-pass variance, as torch computes it."""
    return nnx.GroupNorm(ch, num_groups=32, epsilon=1e-6, use_fast_variance=False, rngs=rngs)


def _nearest(x: jax.Array, size) -> jax.Array:
    """``F.interpolate(mode="nearest", size=size)`` of NHWC ``x`` for integer ratios (always
    the case here: the quantized grid against a 2**k times larger feature map)."""
    (h, w), (th, tw) = x.shape[1:3], size
    if th % h or tw % w:
        raise ValueError(f"cannot nearest-resize {h}x{w} to {th}x{tw} by an integer factor")
    return jnp.repeat(jnp.repeat(x, th // h, axis=1), tw // w, axis=2)


def _norm(norm, x: jax.Array, quant) -> jax.Array:
    """GroupNorm in the encoder, SpatialNorm (conditioned on ``quant``) in the decoder."""
    return norm(x, quant) if isinstance(norm, SpatialNorm) else norm(x)


class CausalConv3d(nnx.Module):
    """``Emu3VQVAEConv3d``: zero padding of 2 frames before (none after) in time, whatever
    the kernel, and ``k - s`` in space, the larger half first; then a plain Conv3d."""

    def __init__(self, cin: int, cout: int, kernel, stride, *, rngs, precision):
        pads = [(2, 0)] + [((k - s + 1) // 2, (k - s) // 2)
                           for k, s in zip(kernel[1:], stride[1:])]
        self.conv = nnx.Conv(cin, cout, tuple(kernel), strides=tuple(stride), padding=pads,
                             precision=precision, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class TemporalResnetBlock(nnx.Module):
    """``Emu3VQVAETemporalResnetBlock`` (equal widths, so no shortcut conv): BatchNorm3d in
    eval mode, SiLU, causal 3x3x3 conv, twice, plus the input."""

    def __init__(self, ch: int, *, rngs, precision):
        self.norm1 = nnx.BatchNorm(ch, use_running_average=True, epsilon=1e-5, rngs=rngs)
        self.conv1 = CausalConv3d(ch, ch, (3, 3, 3), (1, 1, 1), rngs=rngs, precision=precision)
        self.norm2 = nnx.BatchNorm(ch, use_running_average=True, epsilon=1e-5, rngs=rngs)
        self.conv2 = CausalConv3d(ch, ch, (3, 3, 3), (1, 1, 1), rngs=rngs, precision=precision)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(nnx.silu(self.norm1(x)))
        return x + self.conv2(nnx.silu(self.norm2(h)))


class TemporalDownsample(nnx.Module):
    """``Emu3VQVAETemporalDownsample``: causal conv, kernel (4, 3, 3), stride 2 in time."""

    def __init__(self, ch: int, *, rngs, precision):
        self.conv = CausalConv3d(ch, ch, (4, 3, 3), (2, 1, 1), rngs=rngs, precision=precision)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class TemporalUpsample(nnx.Module):
    """``Emu3VQVAETemporalUpsample``: nearest x2 in time (each frame twice), causal 3x3x3."""

    def __init__(self, ch: int, *, rngs, precision):
        self.conv = CausalConv3d(ch, ch, (3, 3, 3), (1, 1, 1), rngs=rngs, precision=precision)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(jnp.repeat(x, 2, axis=1))


class SpatialNorm(nnx.Module):
    """``Emu3VQVAESpatialNorm``: GroupNorm(x) * conv_y(q) + conv_b(q), ``q`` the quantized
    vectors nearest-upsampled to x's grid (the decoder's only use of the codes past conv_in)."""

    def __init__(self, quant_ch: int, ch: int, *, rngs, precision):
        self.norm_layer = _group_norm(ch, rngs)
        self.conv_y = _conv(quant_ch, ch, 1, rngs, precision)
        self.conv_b = _conv(quant_ch, ch, 1, rngs, precision)

    def __call__(self, x: jax.Array, quant: jax.Array) -> jax.Array:
        q = _nearest(quant, x.shape[1:3])
        return self.norm_layer(x) * self.conv_y(q) + self.conv_b(q)


class ResnetBlock(nnx.Module):
    """``Emu3VQVAEResnetBlock``: norm, SiLU, 3x3 conv, twice, plus the input (1x1
    ``nin_shortcut`` when the width changes); SpatialNorm when ``quant_ch`` is given."""

    def __init__(self, cin: int, cout: int, quant_ch: int | None, *, rngs, precision):
        def norm(ch):
            return (_group_norm(ch, rngs) if quant_ch is None
                    else SpatialNorm(quant_ch, ch, rngs=rngs, precision=precision))
        self.norm1 = norm(cin)
        self.conv1 = _conv(cin, cout, 3, rngs, precision)
        self.norm2 = norm(cout)
        self.conv2 = _conv(cout, cout, 3, rngs, precision)
        self.nin_shortcut = _conv(cin, cout, 1, rngs, precision) if cin != cout else None

    def __call__(self, x: jax.Array, quant=None) -> jax.Array:
        h = self.conv1(nnx.silu(_norm(self.norm1, x, quant)))
        h = self.conv2(nnx.silu(_norm(self.norm2, h, quant)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class Attention(nnx.Module):
    """``Emu3VQVAEAttentionBlock``: multi-head self-attention over the h*w positions (raster
    order), q/k/v/out projections with bias, scale head_dim ** -0.5, no mask, no dropout."""

    def __init__(self, dim: int, heads: int, *, rngs, precision):
        self.heads, self.precision = heads, precision
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            setattr(self, name, nnx.Linear(dim, dim, precision=precision, rngs=rngs))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        flat = x.reshape(b, h * w, c)
        q, k, v = (p(flat).reshape(b, h * w, self.heads, c // self.heads)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        logits = jnp.einsum("bqnd,bknd->bnqk", q, k, precision=self.precision)
        probs = jax.nn.softmax(logits * (c // self.heads) ** -0.5, axis=-1)
        out = jnp.einsum("bnqk,bknd->bqnd", probs, v, precision=self.precision)
        return self.out_proj(out.reshape(b, h * w, c)).reshape(b, h, w, c)


def _attend(norm, attn: Attention, x: jax.Array, quant=None) -> jax.Array:
    """The residual attention step every block list and the middle block repeat."""
    return x + attn(_norm(norm, x, quant))


class Level(nnx.Module):
    """One resolution of the encoder's ``down_block.down`` / the decoder's ``up_block.up``:
    ``block`` res blocks, each followed by attention (``attn`` / ``attn_norms``) at the
    attention levels, then ``downsample`` / ``upsample`` (None at the last / first level)."""

    def __init__(self, widths, attention: bool, quant_ch, cfg, resample: str | None, *,
                 rngs, precision):
        kw = dict(rngs=rngs, precision=precision)
        self.block = nnx.List([ResnetBlock(i, o, quant_ch, **kw) for i, o in widths])
        self.attn = nnx.List([Attention(cfg["hidden_size"], cfg["num_attention_heads"], **kw)
                              for _ in widths if attention])
        self.attn_norms = nnx.List([
            _group_norm(o, rngs) if quant_ch is None else SpatialNorm(quant_ch, o, **kw)
            for _, o in widths if attention])
        ch = widths[-1][1]
        self.downsample = Resample(ch, True, **kw) if resample == "down" else None
        self.upsample = Resample(ch, False, **kw) if resample == "up" else None

    def __call__(self, x: jax.Array, quant=None) -> jax.Array:
        for i, block in enumerate(self.block):
            x = block(x, quant)
            if len(self.attn):
                x = _attend(self.attn_norms[i], self.attn[i], x, quant)
        return x


class Resample(nnx.Module):
    """``Emu3VQVAEEncoderConvDownsample`` (pad right/bottom by 1, 3x3 stride 2, no padding) or
    ``...ConvUpsample`` (nearest x2, 3x3)."""

    def __init__(self, ch: int, down: bool, *, rngs, precision):
        self.down = down
        self.conv = _conv(ch, ch, 3, rngs, precision, stride=2 if down else 1,
                          padding=[(0, 1), (0, 1)] if down else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        if not self.down:
            x = _nearest(x, (2 * x.shape[1], 2 * x.shape[2]))
        return self.conv(x)


class Stages(nnx.Module):
    """``Emu3VQVAEDownBlock`` / ``Emu3VQVAEUpBlock``: the per-resolution levels, held under
    ``down`` / ``up`` and indexed by level in both (the decoder runs them deepest first)."""

    def __init__(self, cfg, decoder: bool, *, rngs, precision):
        kw = dict(rngs=rngs, precision=precision)
        mults, n = cfg["channel_multiplier"], len(cfg["channel_multiplier"])
        quant_ch = cfg["embed_dim"] if decoder else None
        levels = [None] * n
        cin = cfg["base_channels"] * (mults[-1] if decoder else 1)
        for lvl in (reversed(range(n)) if decoder else range(n)):
            cout = cfg["base_channels"] * mults[lvl]
            count = cfg["num_res_blocks"] + (1 if decoder else 0)
            widths = [(cin if j == 0 else cout, cout) for j in range(count)]
            resample = (("up" if lvl != 0 else None) if decoder
                        else ("down" if lvl != n - 1 else None))
            levels[lvl] = Level(widths, lvl in cfg["attn_resolutions"], quant_ch, cfg,
                                resample, **kw)
            cin = cout
        self.decoder = decoder
        setattr(self, "up" if decoder else "down", nnx.List(levels))

    def __call__(self, x: jax.Array, quant=None) -> jax.Array:
        if not self.decoder:
            for level in self.down:
                x = level(x)
                x = x if level.downsample is None else level.downsample(x)
            return x
        for level in reversed(self.up):
            x = level(x, quant)
            x = x if level.upsample is None else level.upsample(x)
        return x


class MiddleBlock(nnx.Module):
    """``Emu3VQVAEMiddleBlock``: res block, residual attention, res block."""

    def __init__(self, cfg, ch: int, quant_ch, *, rngs, precision):
        kw = dict(rngs=rngs, precision=precision)
        self.block_1 = ResnetBlock(ch, ch, quant_ch, **kw)
        self.attn_1 = Attention(cfg["hidden_size"], cfg["num_attention_heads"], **kw)
        self.attn_norm = (_group_norm(ch, rngs) if quant_ch is None
                          else SpatialNorm(quant_ch, ch, **kw))
        self.block_2 = ResnetBlock(ch, ch, quant_ch, **kw)

    def __call__(self, x: jax.Array, quant=None) -> jax.Array:
        x = _attend(self.attn_norm, self.attn_1, self.block_1(x, quant), quant)
        return self.block_2(x, quant)


class Encoder(nnx.Module):
    """``Emu3VQVAEEncoder``: 2-D encoder per frame, then the temporal downsampling stack."""

    def __init__(self, cfg, *, rngs, precision):
        kw = dict(rngs=rngs, precision=precision)
        top, lat = cfg["base_channels"] * cfg["channel_multiplier"][-1], cfg["latent_channels"]
        self.conv_in = _conv(cfg["in_channels"], cfg["base_channels"], 3, rngs, precision)
        self.down_block = Stages(cfg, decoder=False, **kw)
        self.middle_block = MiddleBlock(cfg, top, None, **kw)
        self.norm_out = _group_norm(top, rngs)
        self.conv_out = _conv(top, lat, 3, rngs, precision)
        steps = cfg["temporal_downsample_factor"].bit_length() - 1
        self.time_conv = nnx.List([TemporalDownsample(lat, **kw) for _ in range(steps)])
        self.time_res_stack = nnx.List([TemporalResnetBlock(lat, **kw)
                                        for _ in range(cfg["num_res_blocks"])])

    def __call__(self, images: jax.Array, frames: int) -> jax.Array:
        """images [N, H, W, C] -> latents [N, frames / factor, h, w, latent_channels] of the
        clip that repeats each image ``frames`` times (the 2-D part computed once)."""
        x = self.middle_block(self.down_block(self.conv_in(images)))
        x = self.conv_out(nnx.silu(self.norm_out(x)))
        x = jnp.repeat(x[:, None], frames, axis=1)
        for conv in self.time_conv:
            x = nnx.silu(conv(x))
        for block in self.time_res_stack:
            x = block(x)
        return x


class Decoder(nnx.Module):
    """``Emu3VQVAEDecoder``: the temporal upsampling stack (run on the post-quant latents and
    the quantized vectors alike, stacked on the batch axis as transformers does), then the
    2-D decoder of frame 0 with SpatialNorm on the (temporally processed) quantized vectors."""

    def __init__(self, cfg, *, rngs, precision):
        kw = dict(rngs=rngs, precision=precision)
        lat, quant_ch = cfg["latent_channels"], cfg["embed_dim"]
        top = cfg["base_channels"] * cfg["channel_multiplier"][-1]
        bottom = cfg["base_channels"] * cfg["channel_multiplier"][0]
        self.time_res_stack = nnx.List([TemporalResnetBlock(lat, **kw)
                                        for _ in range(cfg["num_res_blocks"])])
        steps = cfg["temporal_downsample_factor"].bit_length() - 1
        self.time_conv = nnx.List([TemporalUpsample(lat, **kw) for _ in range(steps)])
        self.conv_in = _conv(lat, top, 3, rngs, precision)
        self.middle_block = MiddleBlock(cfg, top, quant_ch, **kw)
        self.up_block = Stages(cfg, decoder=True, **kw)
        self.norm_out = SpatialNorm(quant_ch, bottom, **kw)
        self.conv_out = _conv(bottom, cfg["out_channels"], 3, rngs, precision)

    def __call__(self, hidden: jax.Array, quant: jax.Array) -> jax.Array:
        """hidden, quant [N, T, h, w, latent] -> frame 0 [N, H, W, out_channels]."""
        x = jnp.concatenate([hidden, quant], axis=0)
        for block in self.time_res_stack:
            x = block(x)
        for conv in self.time_conv:
            x = nnx.silu(conv(x))
        hidden, quant = jnp.split(x[:, 0], 2, axis=0)
        x = self.up_block(self.middle_block(self.conv_in(hidden), quant), quant)
        return self.conv_out(nnx.silu(self.norm_out(x, quant)))


class VectorQuantizer(nnx.Module):
    """``Emu3VQVAEVectorQuantizer``: the index of the nearest codebook row, by the same
    expanded squared distance (so near-ties break as transformers breaks them)."""

    def __init__(self, num_codes: int, dim: int, *, rngs, precision):
        self.embedding, self.precision = nnx.Embed(num_codes, dim, rngs=rngs), precision

    def __call__(self, z: jax.Array) -> jax.Array:
        e = self.embedding.embedding[...]
        flat = z.reshape(-1, z.shape[-1])
        dots = 2 * jnp.matmul(flat, e.T, precision=self.precision)
        dist = jnp.sum(flat ** 2, axis=1, keepdims=True) + jnp.sum(e ** 2, axis=1) - dots
        return jnp.argmin(dist, axis=1).astype(jnp.int32).reshape(z.shape[:-1])

    def codes_to_vectors(self, codes: jax.Array) -> jax.Array:
        """The codebook rows of int `codes` (what mmar's quantizers call this: LANTERN's
        latent neighbours, mmar/sample/sjd.py)."""
        return self.embedding(jnp.asarray(codes, jnp.int32))


class Emu3VQVAE(nnx.Module):
    """Emu3's VQ tokenizer for still images: ``encode`` [N, H, W, 3] in [-1, 1] -> codes
    [N, H / f, W / f]; ``decode_codes`` back. Built from a transformers ``vq_config`` dict;
    random weights until ``emu3_vqvae_weights.load_torch_weights`` fills them.

    ``precision``: of every conv and matmul; "highest" (the default) keeps float32 on GPUs
    that would otherwise round to TF32, which codes (an argmin) are sensitive to."""

    def __init__(self, vq_cfg: Mapping[str, Any], *, rngs: nnx.Rngs | None = None,
                 precision: str | None = "highest"):
        cfg = vq_config(vq_cfg)
        rngs = nnx.Rngs(0) if rngs is None else rngs
        kw = dict(rngs=rngs, precision=precision)
        self.config = cfg
        self.encoder = Encoder(cfg, **kw)
        self.decoder = Decoder(cfg, **kw)
        self.quantize = VectorQuantizer(cfg["codebook_size"], cfg["embed_dim"], **kw)
        self.quant_conv = CausalConv3d(cfg["latent_channels"], cfg["embed_dim"], (3, 1, 1),
                                       (1, 1, 1), **kw)
        self.post_quant_conv = CausalConv3d(cfg["embed_dim"], cfg["latent_channels"],
                                            (3, 1, 1), (1, 1, 1), **kw)

    @property
    def num_codes(self) -> int:
        return self.config["codebook_size"]

    @property
    def spatial_factor(self) -> int:
        """Pixels per code along each axis (transformers' ``vision_spatial_factor``)."""
        return 2 ** (len(self.config["channel_multiplier"]) - 1)

    def encode(self, images: jax.Array) -> jax.Array:
        """images float [-1, 1] [N, H, W, 3] (H, W multiples of ``spatial_factor``) -> codes
        int32 [N, h, w]: ``Emu3VQVAE.encode(pixel_values, image_sizes).image_tokens`` with
        ``image_sizes`` the full size (transformers' crop to ``size / factor`` is then a
        no-op; a smaller size would only cut the grid, the codes kept are the same)."""
        n, h, w, c = images.shape
        f = self.spatial_factor
        if h % f or w % f or c != self.config["in_channels"]:
            raise ValueError(f"images must be [N, H, W, {self.config['in_channels']}] with H, "
                             f"W multiples of {f}, got {tuple(images.shape)}")
        z = self.encoder(images.astype(jnp.float32), self.config["temporal_downsample_factor"])
        codes = self.quantize(self.quant_conv(z))
        return codes[:, 0]  # one temporal slice: the clip was exactly one factor long

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        """codes int [N, h, w] -> images float [N, h * f, w * f, 3], roughly [-1, 1], not
        clipped: ``Emu3VQVAE.decode`` of a 3-D code tensor, which decodes a one-latent-frame
        clip of ``temporal_downsample_factor`` frames and keeps frame 0."""
        quant = self.quantize.embedding(codes.astype(jnp.int32))[:, None]
        return self.decoder(self.post_quant_conv(quant), quant)
