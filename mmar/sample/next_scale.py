"""Next-scale decoding (VAR): one forward pass per scale, coarse to fine, with a KV cache.

The prompt `<bos> caption <boi>` is prefilled; its last logits draw the 1 x 1 map. Then for
each finer scale s the decoder gets, in one call, the n_s inputs of that scale's block (the
coarser maps drawn so far, upsampled, summed and resized: `Decoder.scale_inputs`), at the
block's positions, each seeing the cache and the whole block (block-causal,
mmar/model/next_scale.py), and all n_s codes are drawn at once. K scales are K forward
passes for N = sum k_s^2 codes (a raster decoder needs N). The cache holds exactly the
training row's slots, so every pass computes what the full forward over the finished row
computes at those slots (tests/model/test_next_scale.py).

Sampling settings and guidance are the image settings every decoder shares
(mmar/sample/core.py): temperature, top-k, top-p per code; classifier-free guidance with the
`<bos> <boi>` twin in the same batch, the code's guidance fraction being the fraction of the
image's codes already drawn before its scale. Captions (image-to-text) come from the plain
sampler: a prompt with a whole image is one prefill, whose inputs the decoder builds from
the tokens.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmar import schema
from mmar.model import next_scale
from mmar.sample import core
from mmar.vocab import Vocab


class NextScaleSampler:
    """Text-to-image for a next-scale decoder: its jitted scale loop (once per shape)."""

    def __init__(self, model_state, vocab: Vocab, vocab_rows: int, sample_cfg, layout):
        """`layout`: the decoder's `next_scale.ScaleLayout` (model.scale_layout)."""
        self.model_state, self.vocab, self.layout = model_state, vocab, layout
        self.cfg = schema.complete(sample_cfg, section="sample")
        self.vocab_rows = vocab_rows
        self.num_codes = next_scale.num_codes(layout.scales)
        self._jitted = jax.jit(self._generate, static_argnames=("guided",))

    def settings(self, **overrides) -> dict:
        """The image warp and guidance settings of the `sample` section, with per-call
        overrides (`core.section`)."""
        s = core.sampling_settings(core.section(self.cfg, **overrides))
        return {k: v for k, v in s.items() if not k.endswith("_text")}

    def images(self, params, caption_ids, num_codes: int, key,
               **overrides) -> tuple[np.ndarray, int]:
        """(Codes [B, N] per caption (ids without specials), coarse to fine; forward passes
        for the batch: one per scale)."""
        if num_codes != self.num_codes:
            raise ValueError(f"num_codes={num_codes}: this next-scale decoder writes "
                             f"{self.num_codes} codes per image (scales {self.layout.scales})")
        batch = core.image_batch(caption_ids, self.vocab, self.settings(**overrides))
        ids = self._jitted(params, batch["tokens"], batch["positions"], batch["segments"],
                           batch["knobs"], key, guided=batch["guided"])
        return self.vocab.codes_from_ids(np.asarray(ids)), len(self.layout.scales)

    def _generate(self, params, tokens, positions, segments, knobs, key, *, guided):
        """Code ids [B, N], scale by scale."""
        v, layout, n = self.vocab, self.layout, self.num_codes
        rows, plen = tokens.shape
        b = rows // 2 if guided else rows
        off = next_scale.offsets(layout.scales)
        code_ids = (v.image_offset, v.image_offset + v.num_image_codes)
        span = (v.image_offset, self.vocab_rows)
        model = self.model_state.merge(params)
        weights = model.decode_weights(code_ids)
        max_len = plen + n - 1             # the prompt, then the blocks of scales 2..K
        cache = model.init_cache(rows, max_len)
        logits, cache = model.decode(jnp.asarray(tokens), jnp.asarray(positions),
                                     jnp.asarray(segments), cache, weights=weights,
                                     logits_ids=code_ids)
        logits = logits[:, -1:]            # the <boi> slot: the 1 x 1 map
        boi_pos = jnp.asarray(positions)[:, -1]
        drawn = jnp.zeros((rows, n), jnp.int32) + v.image_offset
        keys = jax.random.split(key, len(layout.scales))
        for s, side in enumerate(layout.scales):
            m = side * side
            if s > 0:
                start = cache["index"]
                horizon = jnp.broadcast_to(start + m - 1, (rows, m))
                logits, cache = model.decode(
                    drawn[:, :m], next_scale.block_positions(boi_pos, s, layout),
                    jnp.ones((rows, m), jnp.int32), cache,
                    visible=next_scale.visible(horizon, max_len), weights=weights,
                    logits_ids=code_ids, inputs=model.scale_inputs(drawn, s))
            frac = jnp.full((b, m), off[s] / n, jnp.float32)
            cond = core.guide(logits, b, guided, knobs, frac).reshape(b * m, -1)
            knob = [jnp.full((b * m,), knobs[k]) for k in ("temperature", "top_k", "top_p")]
            new = v.image_offset + core.sample_logits(cond, None, keys[s], *knob,
                                                      span=span).reshape(b, m)
            drawn = drawn.at[:, off[s]:off[s + 1]].set(core.twin_rows(new, guided))
        return drawn[:b]
