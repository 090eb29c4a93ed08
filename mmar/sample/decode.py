"""Jitted KV-cache decoding: text-to-image and image-to-text, constrained by modality.

Inside an image only image codes can be drawn and the image ends after exactly its number of
codes; captions draw only text ids or `<eos>`. Prompts of different lengths are left-padded
(pad slots have segment id 0, so no query ever attends to them; positions start at 0 at the
first real token). Temperature 0 means greedy; top-k 0 means off.

Classifier-free guidance for images (`sample.cfg_scale_image`, 1 = off): every caption row
gets a twin prompt without the caption, `<bos> <boi>`, which is exactly how image-first
(image-to-text) training rows begin, so the unconditional model is trained for free. The
next code is drawn from `uncond + scale * (cond - uncond)` and fed to both twins. Top-p comes
with the sampling issue.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mmar.vocab import Vocab

NEG_INF = -1e9


def left_pad(prompts, pad_id: int):
    """Lists of ids -> (tokens, positions, segment_ids) [B, P], right-aligned."""
    length = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    segments = np.zeros((len(prompts), length), np.int32)
    positions = np.zeros((len(prompts), length), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, length - len(p):] = p
        segments[i, length - len(p):] = 1
        positions[i, length - len(p):] = np.arange(len(p))
    return tokens, positions, segments


def _pick(logits, allowed, key, temperature, top_k):
    """One token per row from logits [B, V] restricted to `allowed` [V] (bool)."""
    logits = jnp.where(allowed[None], logits.astype(jnp.float32), NEG_INF)
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    return jax.random.categorical(key, logits).astype(jnp.int32)


class Sampler:
    """Holds the jitted generation function for one model (compiled once per shape)."""

    def __init__(self, model_state, vocab: Vocab, vocab_rows: int, sample_cfg):
        self.model_state, self.vocab, self.cfg = model_state, vocab, sample_cfg
        ids = np.arange(vocab_rows)
        self._allowed = {
            "image": (ids >= vocab.image_offset) & (ids < vocab.image_offset + vocab.num_image_codes),
            "text": (ids < vocab.text_size) | (ids == vocab.eos),
        }
        self._jitted = jax.jit(self._generate, static_argnums=(4, 5, 6, 7, 8))

    def images(self, params, caption_ids, num_codes: int, key) -> np.ndarray:
        """Image codes [B, num_codes] for each caption (ids without specials)."""
        v, scale = self.vocab, float(self.cfg.cfg_scale_image)
        prompts = [[v.bos, *c, v.boi] for c in caption_ids]
        if scale != 1.0:
            prompts += [[v.bos, v.boi]] * len(caption_ids)
        tokens, positions, segments = left_pad(prompts, v.pad)
        ids = self._jitted(params, tokens, positions, segments, num_codes, "image",
                           float(self.cfg.temperature_image), int(self.cfg.top_k_image), scale,
                           key)
        return v.codes_from_ids(np.asarray(ids))

    def captions(self, params, image_codes, key) -> list[list[int]]:
        """Text ids per image (up to `<eos>`, at most sample.max_text_len)."""
        v = self.vocab
        prompts = [[v.bos, v.boi, *v.image_ids(c).tolist(), v.eoi] for c in image_codes]
        tokens, positions, segments = left_pad(prompts, v.pad)
        ids = np.asarray(self._jitted(params, tokens, positions, segments,
                                      int(self.cfg.max_text_len), "text",
                                      float(self.cfg.temperature_text),
                                      int(self.cfg.top_k_text), 1.0, key))
        out = []
        for row in ids.tolist():
            out.append(row[:row.index(v.eos)] if v.eos in row else row)
        return out

    def _generate(self, params, tokens, positions, segments, steps, kind, temperature,
                  top_k, guidance, key):
        """`steps` constrained tokens after each prompt row. With guidance != 1 the second
        half of the rows are the unconditional twins of the first half."""
        model = self.model_state.merge(params)
        allowed = jnp.asarray(self._allowed[kind])
        rows, plen = tokens.shape

        def pick(logits, step_key):
            logits = logits[:, -1].astype(jnp.float32)
            if guidance != 1.0:
                cond, uncond = jnp.split(logits, 2)
                logits = uncond + guidance * (cond - uncond)
            tok = _pick(logits, allowed, step_key, temperature, top_k)
            return jnp.tile(tok, 2) if guidance != 1.0 else tok

        cache = model.init_cache(rows, plen + steps)
        logits, cache = model.decode(tokens, positions, segments, cache)
        first_key, key = jax.random.split(key)
        first = pick(logits, first_key)
        seg = jnp.ones((rows, 1), jnp.int32)

        def body(carry, step_key):
            tok, pos, cache = carry
            step_model = self.model_state.merge(params)  # NNX modules do not cross traces
            logits, cache = step_model.decode(tok[:, None], pos[:, None], seg, cache)
            return (pick(logits, step_key), pos + 1, cache), tok

        (last, _, _), fed = jax.lax.scan(body, (first, positions[:, -1] + 1, cache),
                                         jax.random.split(key, steps - 1))
        out = jnp.concatenate([fed.T, last[:, None]], axis=1)
        return out[:rows // 2] if guidance != 1.0 else out
