"""What follows from a config's fields, defined once for validation and for the code that
builds the things (no JAX, no data sets: `mmar.config` imports this, and everything else
imports `mmar.config`).

- the image tokenizer: its quantizers, codes per latent position (the RQ depth), the number
  of image codes (the image part of the vocabulary), the code grid and the codes of one
  image, and the autoencoder's shape rules;
- the decoder's image orders (mmar/data/orders.py);
- the `data.mixture` syntax (mmar/data/sources.py reads the sources it names).

Every function reads a complete config section (mmar/schema.py fills the defaults).
"""
from __future__ import annotations

import glob
import math
import os
from typing import Any

QUANTIZERS = ("fsq", "vq", "lfq", "rq", "msrq")
IMAGE_ORDERS = ("raster", "rar", "randar", "next_scale")
DOWNSAMPLES = (4, 8, 16)
NORMS = ("group", "none")
BUILT_IN_SOURCES = ("shapes", "stories", "digits")
STREAM_KINDS = ("webdataset", "parquet", "obelics")  # `kind:GLOB`, streamed (mmar/data/ingest)


def quantizer_depth(tok_cfg: Any) -> int:
    """Codes per latent position: `rq.depth` for residual quantization, `fsq.groups` for FSQ
    (its sub-codebooks), 1 otherwise."""
    if tok_cfg.quantizer == "rq":
        return int(tok_cfg.rq.depth)
    return int(tok_cfg.fsq.groups) if tok_cfg.quantizer == "fsq" else 1


def num_image_codes(tok_cfg: Any) -> int:
    """The number of image ids the `image_tokenizer` section needs, without building it
    (RQ: one id range of `codebook_size` per depth, mmar/tokenizers/image/codebooks.py)."""
    name = tok_cfg.quantizer
    if name == "fsq":   # groups sub-codebooks of equal size (quantizers.FSQ)
        slices = fsq_slices(tok_cfg.fsq.levels, tok_cfg.fsq.groups)
        return len(slices) * math.prod(slices[0])
    if name == "vq":
        return int(tok_cfg.vq.codebook_size)
    if name == "lfq":
        return 2 ** int(tok_cfg.lfq.bits)
    if name == "rq":
        return int(tok_cfg.rq.depth) * int(tok_cfg.rq.codebook_size)
    if name == "msrq":   # one codebook for every scale
        return int(tok_cfg.msrq.codebook_size)
    raise ValueError(
        f"image_tokenizer.quantizer: unknown quantizer {name!r}; allowed values: {QUANTIZERS}"
    )


def fsq_slices(levels, groups) -> list[tuple[int, ...]]:
    """FSQ's sub-codebooks: `levels` split into `groups` consecutive slices of equal length
    and equal level product (one id range size per sub-codebook); ValueError naming the
    fields otherwise."""
    levels, groups = tuple(int(x) for x in levels), int(groups)
    if groups < 1 or len(levels) % groups:
        raise ValueError(f"image_tokenizer.fsq.groups={groups}: must divide the {len(levels)} "
                         f"channels of image_tokenizer.fsq.levels={levels}")
    size = len(levels) // groups
    slices = [levels[g * size:(g + 1) * size] for g in range(groups)]
    if len({math.prod(s) for s in slices}) > 1:
        raise ValueError(f"image_tokenizer.fsq.groups={groups}: the slices {slices} of "
                         "image_tokenizer.fsq.levels need equal level products (one id range "
                         "size per sub-codebook)")
    return slices


def code_grid(cfg: Any) -> tuple[int, int]:
    """(h, w) latent positions of one `data.image_size` image."""
    side = cfg.data.image_size // cfg.image_tokenizer.downsample
    return side, side


def grid_for(height: int, width: int, cfg: Any) -> tuple[int, int]:
    """The code grid (h, w) of a `height` x `width` image: `code_grid` unless
    `data.keep_aspect`; then about the square's number of positions, A = side^2, at the
    image's aspect ratio r = width / height clipped to `data.max_aspect_ratio`:
    h = round(side / sqrt(r)), w = round(side * sqrt(r)), the longer side shortened while
    h * w > A. So no image has more than A positions, a square keeps the square grid and
    r and 1 / r give transposed grids. The one rule that resizing (mmar/data/ingest),
    sampling (`sample.image_shape`) and the vocabulary's size ids (`max_grid_side`) share."""
    side = code_grid(cfg)[0]
    if not cfg.data.keep_aspect:
        return side, side
    return aspect_grid(height, width, side, float(cfg.data.max_aspect_ratio))


def aspect_grid(height: int, width: int, side: int, limit: float) -> tuple[int, int]:
    """`grid_for`'s rule alone: the grid of about side^2 positions for a `height` x `width`
    image, its ratio clipped to [1 / limit, limit]."""
    if height < 1 or width < 1:
        raise ValueError(f"an image of {height}x{width} pixels has no grid")
    ratio = min(max(width / height, 1.0 / limit), limit)
    h, w = max(1, round(side / math.sqrt(ratio))), max(1, round(side * math.sqrt(ratio)))
    while h * w > side * side:
        if w >= h:
            w -= 1
        else:
            h -= 1
    return h, w


def max_grid_side(cfg: Any) -> int:
    """The longest grid side `grid_for` can give (0 without `data.keep_aspect`): the number
    of size ids in the vocabulary (mmar/vocab.py)."""
    if not cfg.data.keep_aspect:
        return 0
    r = float(cfg.data.max_aspect_ratio)
    tall, wide = grid_for(round(1000 * r), 1000, cfg), grid_for(1000, round(1000 * r), cfg)
    return max(*tall, *wide)


def parse_image_shape(text: str) -> tuple[int, int] | None:
    """`sample.image_shape`: 'HxW' pixels -> (H, W); '' -> None (square)."""
    if not text:
        return None
    h, _, w = text.partition("x")
    return int(h), int(w)


def multiscale_codes(scales) -> int:
    """Codes of one image written as token maps of the given sides: sum k^2 (VAR's
    multi-scale codes, `image_tokenizer.msrq.scales`)."""
    return sum(int(k) ** 2 for k in scales)


def codes_per_image(cfg: Any) -> int:
    """Image codes of one square image in a sequence: h * w positions times the RQ depth
    (with `data.keep_aspect` also the most any image has: `grid_for`); multi-scale codes:
    the sum of the token maps, sum k^2 over `msrq.scales`."""
    if cfg.image_tokenizer.quantizer == "msrq":
        return multiscale_codes(cfg.image_tokenizer.msrq.scales)
    h, w = code_grid(cfg)
    return h * w * quantizer_depth(cfg.image_tokenizer)


def autoencoder_shape(tok_cfg: Any) -> tuple[int, int, tuple[int, ...], int, str]:
    """The architecture fields of `image_tokenizer`, checked (a ValueError names the field):
    (downsample, channels, channel_mult, num_res_blocks, norm). The autoencoder is built from
    them (mmar/tokenizers/image/autoencoder.py) and validation checks them before any work."""
    downsample = int(tok_cfg.downsample)
    if downsample not in DOWNSAMPLES:
        raise ValueError(
            f"image_tokenizer.downsample: must be one of {DOWNSAMPLES}, got "
            f"{tok_cfg.downsample!r}")
    stages = int(math.log2(downsample))
    channel_mult = tuple(int(m) for m in tok_cfg.channel_mult)
    if len(channel_mult) != stages or any(m < 1 for m in channel_mult):
        raise ValueError(
            f"image_tokenizer.channel_mult: needs log2(downsample) = {stages} positive entries "
            f"(one per stride-2 stage), got {tuple(tok_cfg.channel_mult)}")
    channels = int(tok_cfg.channels)
    if channels < 1:
        raise ValueError(f"image_tokenizer.channels: must be >= 1, got {tok_cfg.channels!r}")
    num_res_blocks = int(tok_cfg.num_res_blocks)
    if num_res_blocks < 0:
        raise ValueError(
            f"image_tokenizer.num_res_blocks: must be >= 0, got {tok_cfg.num_res_blocks!r}")
    norm = tok_cfg.norm
    if norm not in NORMS:
        raise ValueError(f"image_tokenizer.norm: must be one of {NORMS}, got {norm!r}")
    if tok_cfg.quantizer == "fsq":
        fsq_slices(tok_cfg.fsq.levels, tok_cfg.fsq.groups)
    if tok_cfg.arch == "patch_alpha" and (tok_cfg.quantizer != "fsq"
                                          or int(tok_cfg.fsq.groups) != 2):
        raise ValueError("image_tokenizer.arch='patch_alpha' draws each patch from two "
                         "sub-codes (an alpha mask and a colour): it needs image_tokenizer.quantizer='fsq' "
                         f"with fsq.groups=2, got quantizer={tok_cfg.quantizer!r}"
                         + (f", fsq.groups={tok_cfg.fsq.groups}" if tok_cfg.quantizer == "fsq"
                            else ""))
    return downsample, channels, channel_mult, num_res_blocks, norm


# ---- data ----------------------------------------------------------------------------------

def parse_mixture(text: str) -> list[tuple[str, float]]:
    """'shapes:0.6,my_data:0.4' -> [('shapes', 0.6), ('my_data', 0.4)]; ValueError if bad.

    Entries are `name[:weight]` (weight 1 if left out), comma-separated; a name is one of
    BUILT_IN_SOURCES, an existing folder, or `kind:GLOB` with a kind of STREAM_KINDS
    ('webdataset:data/shard-*.tar:0.5'; a local GLOB must match a file, gs:// is checked
    when read)."""
    out = []
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, weight = entry, 1.0
        head, _, tail = entry.rpartition(":")
        if head:
            try:
                name, weight = head, float(tail)
            except ValueError:
                pass
        if not weight > 0:
            raise ValueError(f"weight of {name!r} must be > 0, got {weight}")
        stream = stream_source(name)
        if stream is not None:
            kind, pattern = stream
            if "://" not in pattern and not glob.glob(pattern, recursive=True):
                raise ValueError(f"{name!r}: no file matches {pattern!r}")
        elif name not in BUILT_IN_SOURCES and not os.path.isdir(name):
            raise ValueError(f"{name!r} is neither one of {BUILT_IN_SOURCES}, nor a folder, "
                             f"nor KIND:GLOB with KIND one of {STREAM_KINDS}")
        out.append((name, weight))
    return out


def stream_source(name: str) -> tuple[str, str] | None:
    """'webdataset:data/*.tar' -> ('webdataset', 'data/*.tar'); None for other names."""
    kind, sep, pattern = name.partition(":")
    if sep and kind in STREAM_KINDS and pattern:
        return kind, pattern
    return None
