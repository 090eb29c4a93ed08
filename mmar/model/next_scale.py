"""Next-scale prediction (VAR, Tian et al. 2024) in the one token stream: the row layout,
the block-causal mask, the inputs of each scale and their positions.

A multi-scale tokenizer (mmar/tokenizers/image/multiscale.py) writes an image as token maps
of growing side, scales k_1 < ... < k_K = the code grid side G, flattened coarse to fine
(`<boi> c(1) c(2) ... c(K) <eoi>`, each map in raster order, N = sum k_s^2 codes). The row is
an ordinary row, so packing, segments, the loss (logits[t] predicts tokens[t + 1]) and every
job that moves rows stay as they are. What changes is what the decoder reads at each slot.

Slot roles. In an image whose `<boi>` sits at slot b, the slot b + q predicts code q of the
image (the slot before it, as always). Code q belongs to scale s(q); the slots predicting
scale s are one **block** [b + off_s, b + off_s + n_s). Inside a block every slot sees the
whole block (and everything before it): block-causal attention, so the n_s codes of a scale
are drawn in one forward pass. That is only sound if no slot of the block reads a code of
its own scale, and the token in slot b + q is code q - 1, often of the same scale. So the
input of a block slot is not its token's embedding but, as in VAR's teacher forcing, **the
coarser scales upsampled and summed, then resized to this scale**:

    x(b + q) = sum over codes m of earlier scales  P[q, m] * E[code m]  + scale_embed[s(q)]

with P fixed by the scales (`input_matrix`: bilinear up to G x G, area down to k_s x k_s,
the resize rules of the tokenizer's own residual) and E the decoder's embedding table. VAR
feeds the VQ codebook vectors through a linear layer instead; E is that product learned
directly. The `<boi>` slot (q = 0, scale 1 of side 1) keeps `<boi>`'s embedding: nothing is
coarser. The slot of the last code (q = N) predicts `<eoi>` from its own token, causally.

Positions (RoPE, three components as model/positions.py): a block slot gets (the block's
first slot position, p_b + 1 + row, p_b + 1 + column) with (row, column) the centre of its
cell in units of the final grid, ((r + 0.5) G / k - 0.5), so a coarse code and the fine
codes under it share their spatial components and the tokens of one scale differ only there
(their order inside the scale carries nothing). Other slots get (p, p, p), 1-D RoPE.

Everything follows from the tokens (the last `<boi>` of each slot), as for 2-D positions;
the next-scale sampler (mmar/sample/next_scale.py) builds the same inputs, positions and
mask block by block (`scale_inputs`, `block_positions`).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmar import derived


class ScaleLayout(NamedTuple):
    """Where next-scale codes sit in a row: the `<boi>` id, the code ids [start, stop) and
    the scales (token map sides, coarse to fine; the last is the code grid side)."""
    boi: int
    code_start: int
    code_stop: int
    scales: tuple[int, ...]


# ---- the fixed matrices (numpy; the tokenizer uses the same ones) ---------------------------

def area_matrix(src: int, dst: int) -> np.ndarray:
    """[dst, src]: area (adaptive average) resize of one axis, as PyTorch's
    `adaptive_avg_pool1d` / `interpolate(mode='area')`: output i averages the inputs in
    [floor(i src / dst), ceil((i + 1) src / dst))."""
    out = np.zeros((dst, src), np.float64)
    for i in range(dst):
        lo, hi = (i * src) // dst, -(-((i + 1) * src) // dst)
        out[i, lo:hi] = 1.0 / (hi - lo)
    return out


def bilinear_matrix(src: int, dst: int) -> np.ndarray:
    """[dst, src]: linear resize of one axis with half-pixel centres (PyTorch's
    `interpolate(mode='bilinear', align_corners=False)` per axis; a side of 1 repeats)."""
    out = np.zeros((dst, src), np.float64)
    for i in range(dst):
        x = max((i + 0.5) * src / dst - 0.5, 0.0)
        lo = min(int(np.floor(x)), src - 1)
        hi = min(lo + 1, src - 1)
        w = x - lo
        out[i, lo] += 1.0 - w
        out[i, hi] += w
    return out


def resize_2d(matrix: np.ndarray) -> np.ndarray:
    """A one-axis resize [dst, src] -> the same resize of both axes of a raster-flattened
    map, [dst^2, src^2] (row-major: index r * side + c)."""
    return np.kron(matrix, matrix)


def offsets(scales) -> np.ndarray:
    """First code index of each scale, and N at the end: [K + 1]."""
    return np.concatenate([[0], np.cumsum([k * k for k in scales])]).astype(np.int64)


def num_codes(scales) -> int:
    """N: codes of one image over all scales (`derived.multiscale_codes`)."""
    return derived.multiscale_codes(scales)


def input_matrix(scales) -> np.ndarray:
    """P [N, N] float32: row q (a code of scale s) mixes the codes of scales < s into the
    input that predicts code q: sum_{t < s} area_{G->k_s} bilinear_{k_t->G} c(t) (module
    docstring). Rows of scale 1 are 0."""
    scales = tuple(int(k) for k in scales)
    g, off = scales[-1], offsets(scales)
    p = np.zeros((off[-1], off[-1]), np.float64)
    for s, k in enumerate(scales):
        down = resize_2d(area_matrix(g, k))
        for t in range(s):
            up = resize_2d(bilinear_matrix(scales[t], g))
            p[off[s]:off[s + 1], off[t]:off[t + 1]] = down @ up
    return p.astype(np.float32)


def code_table(scales) -> np.ndarray:
    """[N, 3] float32 per code index: its scale, and its cell centre (row, column) in units
    of the final grid."""
    scales = tuple(int(k) for k in scales)
    g, rows = scales[-1], []
    for s, k in enumerate(scales):
        r, c = np.divmod(np.arange(k * k), k)
        rows.append(np.stack([np.full(k * k, s), (r + 0.5) * g / k - 0.5,
                              (c + 0.5) * g / k - 0.5], 1))
    return np.concatenate(rows).astype(np.float32)


# ---- a row's structure ----------------------------------------------------------------------

class Structure(NamedTuple):
    """Per slot [B, S]: `q` the code index it predicts, `block` whether it is a block slot
    (0 <= q < N inside an image), `boi` the slot of its last `<boi>` (-1: none), `horizon`
    the last slot it may see (its block's end, or itself), `positions` [B, S, 3] float32."""
    q: jax.Array
    block: jax.Array
    boi: jax.Array
    horizon: jax.Array
    positions: jax.Array


def structure(tokens: jax.Array, positions: jax.Array, layout: ScaleLayout,
              first_slot: jax.Array | int = 0) -> Structure:
    """The slot roles of rows `tokens`, `positions` [B, S] (module docstring); `first_slot`:
    the slot of tokens[:, 0] (a KV-cache prefill writes at the cache index)."""
    b, s = tokens.shape
    scales = tuple(layout.scales)
    n, off = num_codes(scales), offsets(scales)
    slots = first_slot + jnp.arange(s, dtype=jnp.int32)[None, :]
    boi = jax.lax.cummax(jnp.where(tokens == layout.boi, slots, -1), axis=1)
    q = slots - boi
    is_code = (tokens >= layout.code_start) & (tokens < layout.code_stop)
    block = (boi >= 0) & (q < n) & ((tokens == layout.boi) | is_code)
    qc = jnp.clip(q, 0, n - 1)
    table = jnp.asarray(code_table(scales))[qc]                # [B, S, 3]
    scale = table[..., 0].astype(jnp.int32)
    block_start = jnp.asarray(off[:-1], jnp.int32)[scale]
    block_end = jnp.asarray(off[1:], jnp.int32)[scale] - 1
    horizon = jnp.where(block, boi + block_end, slots)
    p = positions.astype(jnp.float32)
    p_boi = p - q.astype(jnp.float32)
    comps = jnp.stack([p_boi + block_start, p_boi + 1 + table[..., 1],
                       p_boi + 1 + table[..., 2]], -1)
    comps = jnp.where(block[..., None], comps, p[..., None])
    return Structure(jnp.where(block, q, -1), block, boi, horizon, comps)


def visible(horizon: jax.Array, num_keys: int, first_key: int = 0) -> jax.Array:
    """[B, S, T] bool: key slot first_key + j is at most the query's horizon (causal, plus
    the rest of the query's block); `attention_mask` adds the document rules."""
    keys = first_key + jnp.arange(num_keys, dtype=jnp.int32)
    return keys[None, None, :] <= horizon[:, :, None]


def block_inputs(embedded: jax.Array, st: Structure, scale_embed: jax.Array,
                 layout: ScaleLayout) -> jax.Array:
    """Token embeddings [B, S, E] -> the decoder's inputs: block slots of scales > 1 read
    P-mixed embeddings of their image's coarser codes, every block slot adds its scale's
    embedding, other slots keep their own (module docstring).

    The mix is one [B, S, S] x [B, S, E] product: mix[t, u] = P[q_t, u - boi_t - 1] for the
    code slots u of t's image (P is 0 outside the coarser scales), as costly as one
    attention layer's scores and independent of where in a packed row the image sits."""
    n = num_codes(layout.scales)
    p = jnp.asarray(input_matrix(layout.scales))
    s = embedded.shape[1]
    m = jnp.arange(s, dtype=jnp.int32)[None, None, :] - st.boi[:, :, None] - 1   # [B, S, S]
    inside = (m >= 0) & (m < n) & st.block[:, :, None]
    mix = jnp.where(inside, p[jnp.clip(st.q, 0, n - 1)[:, :, None], jnp.clip(m, 0, n - 1)],
                    0.0)
    mixed = jnp.einsum("bsu,bue->bse", mix.astype(embedded.dtype), embedded)
    scale = jnp.asarray(code_table(layout.scales)[:, 0], jnp.int32)[jnp.clip(st.q, 0, n - 1)]
    coarse_read = st.block & (st.q >= 1)
    x = jnp.where(coarse_read[..., None], mixed, embedded)
    add = jnp.take(scale_embed, scale, axis=0).astype(embedded.dtype)
    return x + jnp.where(st.block[..., None], add, 0)


# ---- what the sampler builds block by block -------------------------------------------------

def scale_inputs(code_embeddings: jax.Array, scale: int, scale_embed: jax.Array,
                 layout: ScaleLayout) -> jax.Array:
    """The inputs [B, n_s, E] of scale `scale`'s block (0-based, > 0) from the embeddings of
    the image's codes so far [B, N, E] (codes of scale >= `scale` are ignored): the rows of
    `block_inputs` for that block, without building a row."""
    off = offsets(layout.scales)
    p = jnp.asarray(input_matrix(layout.scales)[off[scale]:off[scale + 1]])
    mixed = jnp.einsum("qm,bme->bqe", p.astype(code_embeddings.dtype), code_embeddings)
    return mixed + scale_embed[scale].astype(mixed.dtype)


def block_positions(boi_position: jax.Array, scale: int, layout: ScaleLayout) -> jax.Array:
    """RoPE components [B, n_s, 3] of scale `scale`'s block for images whose `<boi>` has
    1-D position `boi_position` [B]: `structure`'s values for those slots."""
    off = offsets(layout.scales)
    table = jnp.asarray(code_table(layout.scales)[off[scale]:off[scale + 1]])
    p = boi_position.astype(jnp.float32)[:, None]
    return jnp.stack([jnp.broadcast_to(p + off[scale], (p.shape[0], len(table))),
                      p + 1 + table[None, :, 1], p + 1 + table[None, :, 2]], -1)
