"""ZipAR (He et al. 2024): several rows of the code grid decode at once, for raster models.

Neighbouring image regions depend mostly on what is above and to the left, so a row need not
wait for the end of the row above: row r+1 starts as soon as row r has `sample.zipar.window`
codes, and from then on every active row gets one new code per forward pass. Passes for an
H x W grid (prefill included), w = min(window, W):

    H = 1: W          H >= 2: 2W + (H - 2) w          (plain: H W)

Row 1 always waits for the whole of row 0 (there is no row above it to stand in, as in the
official code), so window >= W is plain raster decoding, draw for draw (same keys).

The first code of row r+1, while row r is still incomplete, is predicted as the official
LlamaGen code does: a stand-in input is fed at the raster position of row r's (not yet drawn)
last code, holding the latest code drawn in row r-1 (the code above that slot, or the
nearest one drawn); its output is row r+1's first code. The stand-in is only a query: its
cache slot is visible to itself and never again (the official cache keeps it until the real
code overwrites that position, so row r+1's first few codes also see it). When row r is
complete, row r+1 starts from row r's real last code, as in raster decoding.

Slots are written in generation order, so every query gets an explicit `visible` row: the
prompt and every live slot whose raster position is <= its own. The schedule depends only on
(H, W, window), so `plan` builds it once on the host (numpy) and one jitted `lax.scan` runs
all passes; each pass feeds a fixed number of columns (the widest pass; idle columns are
padding nobody sees). Codes are drawn per target with the key plain decoding uses for that
raster index.

    sampler = ZipARSampler(model_state, vocab, vocab_rows, cfg.sample)
    codes, forward_passes = sampler.images(params, caption_ids, n, key, zipar=dict(window=2))

Raster-order models only (mmar/sample/dispatch.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmar import schema
from mmar.sample import core
from mmar.vocab import Vocab
HIDDEN = 1 << 30   # raster position of padding slots: visible to no query


def forward_passes(height: int, width: int, window: int) -> int:
    """Model calls for one image, prefill included (the formula in the module doc)."""
    if height == 1:
        return width
    return 2 * width + (height - 2) * min(window, width)


def plan(height: int, width: int, window: int) -> dict:
    """The static schedule of the passes after prefill (S of them, T columns each):
    src [S, T] raster index of the code fed, pos [S, T] raster position it is fed at (-1:
    padding), target [S, T] raster index drawn from that column's output (-1: none), visible
    [S, T, S*T] bool over the generated slots (slot s*T + t is pass s, column t)."""
    n = height * width
    count, started, drawn_at = [0] * height, [True] + [False] * (height - 1), {0: 0}
    count[0], passes = 1, []
    while sum(count) < n:
        step, feeds = len(passes) + 1, []
        for r in range(height):
            k = r * width + count[r] - 1
            if count[r] and drawn_at.get(k) == step - 1:
                nxt = k + 1 if count[r] < width else -1
                if count[r] == width and r + 1 < height and not started[r + 1]:
                    nxt, started[r + 1] = (r + 1) * width, True
                feeds.append((k, k, nxt, True))
        for r in range(1, height - 1):
            if not started[r + 1] and window <= count[r] < width:
                above = (r - 1) * width + count[r - 1] - 1
                feeds.append((above, (r + 1) * width - 1, (r + 1) * width, False))
                started[r + 1] = True
        for _, _, k, _ in feeds:
            if k >= 0:
                count[k // width] += 1
                drawn_at[k] = step
        passes.append(feeds)
    S, T = len(passes), max((len(f) for f in passes), default=1)
    src, pos = np.zeros((S, T), np.int32), np.full((S, T), -1, np.int32)
    target = np.full((S, T), -1, np.int32)
    slot_pos = np.full(S * T, HIDDEN, np.int64)
    slot_live = np.zeros(S * T, bool)           # a real code (visible from later passes)
    for s, feeds in enumerate(passes):
        for t, (k, p, nxt, real) in enumerate(feeds):
            src[s, t], pos[s, t], target[s, t] = k, p, nxt
            slot_pos[s * T + t], slot_live[s * T + t] = p, real
    slot_pass = np.arange(S * T) // T
    visible = ((slot_pos[None, None] <= pos[:, :, None]) &
               ((slot_live[None, None] & (slot_pass[None, None] <= np.arange(S)[:, None, None]))
                | (slot_pass[None, None] == np.arange(S)[:, None, None])))
    return {"src": src, "pos": pos, "target": target, "visible": visible}


class ZipARSampler:
    """ZipAR image decoding for one model: its jitted scan (compiled once per shape)."""

    def __init__(self, model_state, vocab: Vocab, vocab_rows: int, sample_cfg):
        self.model_state, self.vocab = model_state, vocab
        self.cfg = schema.complete(sample_cfg, section="sample")
        self.allowed = core.id_masks(vocab, vocab_rows)
        self._jitted = jax.jit(self._decode, static_argnames=("n", "guided"))

    def settings(self, **overrides) -> dict:
        """The warp and guidance settings and the ZipAR options (`zipar`: window) of the
        `sample` section, with per-call overrides (`core.section`: `zipar=dict(window=1)`),
        checked."""
        c = core.section(self.cfg, **overrides)
        return {**core.sampling_settings(c), "zipar": c.zipar.to_dict()}

    def images(self, params, caption_ids, num_codes: int, key,
               **overrides) -> tuple[np.ndarray, int]:
        """(Image codes [B, num_codes] int32, forward passes for the batch). The grid is
        square (side sqrt(n)), as the tokenizers make."""
        codes, passes, _ = self.images_rows(params, caption_ids, num_codes, key, **overrides)
        return codes, passes

    def images_rows(self, params, caption_ids, num_codes: int, key, **overrides):
        """`images`, plus [B] the pass at which each row had its codes (all the same here)."""
        s = self.settings(**overrides)
        window = s["zipar"]["window"]
        n = num_codes
        side = round(np.sqrt(n))
        if side * side != n:
            raise ValueError(f"ZipAR needs a square code grid, got {n} codes")
        p = plan(side, side, window)
        batch = core.image_batch(caption_ids, self.vocab, s)
        ids = self._jitted(params, batch["tokens"], batch["positions"], batch["segments"],
                           batch["knobs"], key, {k: jnp.asarray(v) for k, v in p.items()},
                           n=n, guided=batch["guided"])
        passes = len(p["src"]) + 1
        return (np.asarray(self.vocab.codes_from_ids(ids), np.int32), passes,
                np.full(len(caption_ids), passes))

    def _decode(self, params, tokens, positions, segments, knobs, key, p, *, n, guided):
        rows, plen = tokens.shape
        batch = rows // 2 if guided else rows
        S, T = p["src"].shape
        model = self.model_state.merge(params)
        v = self.vocab
        code_ids = (v.image_offset, v.image_offset + v.num_image_codes)
        weights = model.decode_weights(code_ids)         # codes' logits only; once
        span = (v.image_offset, self.allowed["image"].shape[0])
        knob = {k: jnp.broadcast_to(knobs[k], (batch,)) for k in ("temperature", "top_k",
                                                                 "top_p")}
        first_key, rest = jax.random.split(key)          # plain decoding's key stream
        keys = jnp.concatenate([first_key[None], jax.random.split(rest, n - 1)])
        base = positions[:, -1] + 1

        def draw(logits, k):                             # logits [rows, 1, V] -> ids [batch]
            g = core.guide(logits, batch, guided, knobs, jnp.full((batch, 1), k / n))[:, 0]
            return v.image_offset + core.sample_logits(
                g, None, keys[jnp.maximum(k, 0)], knob["temperature"], knob["top_k"],
                knob["top_p"], span=span)

        cache = model.init_cache(rows, plen + max(S * T, n))
        logits, cache = model.decode(tokens, positions, segments, cache,
                                     core.modality(tokens, self.vocab), weights=weights,
                                     logits_ids=code_ids)
        codes = jnp.zeros((batch, n), jnp.int32).at[:, 0].set(draw(logits[:, -1:], 0))
        pad = max(S * T, n) - S * T

        def body(carry, xs):
            cache, codes = carry
            src, pos, target, vis = xs
            visible = jnp.concatenate([jnp.ones((T, plen), bool), vis,
                                       jnp.zeros((T, pad), bool)], -1)
            step_model = self.model_state.merge(params)
            positions = base[:, None] + jnp.maximum(pos, 0)[None]
            logits, cache = step_model.decode(core.twin_rows(codes[:, src], guided), positions,
                                              jnp.ones_like(positions), cache,
                                              jnp.ones_like(positions),
                                              jnp.broadcast_to(visible, (rows, *visible.shape)),
                                              weights=weights, logits_ids=code_ids)
            for t in range(T):
                k = target[t]
                new = draw(logits[:, t:t + 1], k)
                slot = jnp.maximum(k, 0)
                codes = codes.at[:, slot].set(jnp.where(k >= 0, new, codes[:, slot]))
            return (cache, codes), None

        (_, codes), _ = jax.lax.scan(body, (cache, codes),
                                     (p["src"], p["pos"], p["target"], p["visible"]))
        return codes
