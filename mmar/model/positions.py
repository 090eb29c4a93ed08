"""2-D positions for image codes (`model.image_positions="2d"`), computed from the tokens.

A raster of codes written as one line gives a code and the code below it positions `w`
apart, and a code and its right neighbour positions 1 apart: RoPE then tells "left of" from
"above" only through `w`-periodic patterns the decoder has to learn, and image-to-text misses
on the shapes data were all relations (docs/first_run.md). Here every token carries three
position components, (sequence, row, column), as in Qwen2-VL's M-RoPE, and RoPE's frequencies
take them in turn (frequency i reads component i % 3, the interleaved assignment of later
M-RoPE variants, so every component gets high and low frequencies):

- a text or special token has all three equal to its 1-D position: with text alone this is
  exactly the 1-D RoPE of `model.image_positions="1d"` (a test checks it);
- image code k of an image (the k-th token after its `<boi>`, `depth` codes per grid cell)
  sits in cell (r, c) = divmod(k // depth, width); its components are (p, p - k + r,
  p - k + c) for its 1-D position p, i.e. the image's first code position plus its row and
  its column. Sequence order stays in the first component; rows and columns get their own.

The components follow from the tokens alone (the last `<boi>` before each code), so the
data pipeline, packing and evaluation need nothing new; the KV-cache decoder keeps the slot
of the last `<boi>` of each row in its cache (`boi_slot`) to continue the count one token at
a time. Only in-order decoders can do that: validation refuses 2-D positions with SJD /
ZipAR / LANTERN, RAR / RandAR orders, images of any shape and Emu3's layout, and export
refuses them (no transformers class has these positions).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class ImageLayout(NamedTuple):
    """Where image codes sit in a row: the `<boi>` id, the code ids [start, stop), the grid
    width in cells and the codes per cell (RQ depth or FSQ groups)."""
    boi: int
    code_start: int
    code_stop: int
    width: int
    depth: int


def components(tokens: jax.Array, positions: jax.Array, layout: ImageLayout,
               first_slot: jax.Array | int = 0, last_boi: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
    """tokens, positions [B, S] -> ((sequence, row, column) positions [B, S, 3], the slot of
    the last `<boi>` seen by each row's final token [B]).

    `first_slot`: the slot (cache index) of tokens[:, 0]; `last_boi` [B]: the slot of the
    last `<boi>` before it (-1: none), both for the KV-cache decoder; a full forward leaves
    them at their defaults. Slots count tokens, pads included, so a code's index in its image
    is its slot less its `<boi>`'s slot less 1.
    """
    b, s = tokens.shape
    slots = first_slot + jnp.arange(s, dtype=jnp.int32)[None, :]
    seen = jnp.where(tokens == layout.boi, slots, -1)
    if last_boi is not None:
        seen = jnp.maximum(seen, last_boi.astype(jnp.int32)[:, None])
    boi = jax.lax.cummax(seen, axis=1)
    k = slots - boi - 1
    is_code = (tokens >= layout.code_start) & (tokens < layout.code_stop) & (boi >= 0)
    cell = jnp.maximum(k, 0) // layout.depth
    row, col = cell // layout.width, cell % layout.width
    p = positions.astype(jnp.int32)
    first = p - k
    out = jnp.stack([p, jnp.where(is_code, first + row, p),
                     jnp.where(is_code, first + col, p)], axis=-1)
    return out, boi[:, -1]
