"""A trained image tokenizer at run time: uint8 images <-> integer codes, jitted, in batches.

Built from already-loaded state (the autoencoder's `ModelState`, its params and checkpoint
step); loading a run directory's tokenizer is `mmar.rundir.load_tokenizer`. What every job
that touches images uses: pretokenize and train encode with it, sample and eval decode.
"""
from __future__ import annotations

import time

import jax
import numpy as np

from mmar import derived
from mmar import vocab as vocab_lib
from mmar.tokenizers.image import autoencoder


def check_depths(codes: np.ndarray, depth: int, codes_per_depth: int) -> None:
    """Codes [N, h*w*depth] of a residual quantizer hold, at each position, depth d's code in
    [d * codes_per_depth, (d + 1) * codes_per_depth); ValueError naming the first that does
    not (the codebook lookup would otherwise index another depth's codebook, or clamp)."""
    if depth <= 1:
        return
    codes = np.asarray(codes).reshape(len(codes), -1, depth)
    bad = codes // codes_per_depth != np.arange(depth)
    if bad.any():
        n, pos, d = (int(i[0]) for i in np.nonzero(bad))
        raise ValueError(
            f"image {n}, position {pos}, depth {d}: code {int(codes[n, pos, d])} is outside "
            f"depth {d}'s range [{d * codes_per_depth}, {(d + 1) * codes_per_depth}) (RQ writes "
            f"{depth} codes per position, each depth in its own range)")


class ImageTokenizer:
    """uint8 images [N, H, W, 3] <-> codes [N, h*w*depth] for one trained autoencoder."""

    def __init__(self, model_state, params, step: int, tok_cfg, batch_sharding=None):
        """`model_state` / `params`: the autoencoder's graph and parameters
        (`trainer.load_params` of `tokenizer_task`); `tok_cfg`: its `image_tokenizer`.
        `batch_sharding`: a NamedSharding that splits the images of one call over its mesh
        (data parallel, params replicated: an imported tokenizer, `pretrained.load`); each
        chunk is padded to a multiple of the mesh size and the padding cut off again."""
        self.model_state, self.params, self.step = model_state, params, step
        self.batch_sharding = batch_sharding
        self.num_codes = derived.num_image_codes(tok_cfg)
        self.depth = derived.quantizer_depth(tok_cfg)
        self.codes_per_depth = self.num_codes // self.depth
        # multi-scale codes (multiscale.py) are one flat list per image, not a grid
        self.flat = tok_cfg.quantizer == "msrq"
        self.codes_per_image = (derived.multiscale_codes(tok_cfg.msrq.scales)
                                if self.flat else None)
        self._encode = jax.jit(lambda p, x: self.model_state.merge(p).encode(
            autoencoder.to_model_range(x)))
        self._decode = jax.jit(lambda p, c: autoencoder.to_uint8(
            self.model_state.merge(p).decode_codes(c)))

    def decode_scales(self, codes: np.ndarray, scales_used: int) -> np.ndarray:
        """Multi-scale codes [N, n] -> uint8 images from their first `scales_used` token
        maps: what a next-scale decoder has drawn after that many passes."""
        if not self.flat:
            raise ValueError("decode_scales: a multi-scale tokenizer (quantizer 'msrq') only")
        fn = jax.jit(lambda p, c: autoencoder.to_uint8(
            self.model_state.merge(p).decode_codes(c, scales_used)))
        return self._batches(fn, np.asarray(codes))

    def encode(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8 [N, H, W, 3] -> codes [N, h*w*depth] (raster order; RQ: the depth codes of
        one position next to each other, each depth in its own id range)."""
        return self._batches(self._encode, images, batch_size).reshape(len(images), -1)

    def _batches(self, fn, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """`_run(fn, ...)` over chunks of `batch_size` rows of x, concatenated."""
        return np.concatenate([self._run(fn, x[i:i + batch_size])
                               for i in range(0, len(x), batch_size)])

    def _run(self, fn, chunk: np.ndarray) -> np.ndarray:
        """`fn(params, chunk)` as numpy; with `batch_sharding`, the chunk split over its
        mesh (padded with copies of its first row to a multiple of the device count)."""
        if self.batch_sharding is None:
            return np.asarray(fn(self.params, chunk))
        n, size = len(chunk), self.batch_sharding.mesh.size
        padded = np.concatenate([chunk, np.repeat(chunk[:1], -n % size, axis=0)])
        return np.asarray(fn(self.params, jax.device_put(padded, self.batch_sharding)))[:n]

    def decode(self, codes: np.ndarray, batch_size: int = 256, grid=None) -> np.ndarray:
        """codes [N, h*w*depth] -> uint8 [N, H, W, 3]; ValueError for a code outside
        [0, num_codes) or, for RQ, outside its depth's range. `grid`: (h, w) of every image
        (default square); codes [N, h, w] carry their grid themselves."""
        codes = np.asarray(codes)
        if codes.ndim == 3 and self.depth == 1:
            grid, codes = codes.shape[1:], codes.reshape(len(codes), -1)
        if codes.size and (codes.min() < 0 or codes.max() >= self.num_codes):
            raise ValueError(f"image codes must be in [0, {self.num_codes}), got "
                             f"[{codes.min()}, {codes.max()}]")
        check_depths(codes, self.depth, self.codes_per_depth)
        if self.flat:
            if codes.ndim != 2 or codes.shape[1] != self.codes_per_image:
                raise ValueError(f"multi-scale codes: {self.codes_per_image} per image "
                                 f"expected, got shape {codes.shape}")
            return self._batches(self._decode, codes, batch_size)
        positions = codes.shape[1] // self.depth
        h, w = grid if grid is not None else vocab_lib.square_grid(positions)
        if h * w != positions:
            raise ValueError(f"{codes.shape[1]} codes per image do not fill a {h}x{w} grid"
                             + (f" of depth {self.depth}" if self.depth > 1 else ""))
        codes = codes.reshape(len(codes), h, w, *([self.depth] if self.depth > 1 else []))
        return self._batches(self._decode, codes, batch_size)


def encode_source(tokenizer: ImageTokenizer, source, log=print, batch_size: int = 512):
    """(captions, codes [N, n]) for every record of a shapes split, with progress."""
    t0, captions, codes = time.perf_counter(), [], []
    for start in range(0, len(source), batch_size):
        records = [source[i] for i in range(start, min(start + batch_size, len(source)))]
        captions += [r["caption"] for r in records]
        codes.append(tokenizer.encode(np.stack([r["image"] for r in records])))
    rate = len(source) / max(time.perf_counter() - t0, 1e-9)
    log(f"[tokenize] {len(source)} images -> codes ({rate:,.0f} images/s)")
    return captions, np.concatenate(codes)
