"""What every decoder shares: prompts, the one logits warp, guidance, allowed ids, batches.

The decoders (mmar/sample/plain.py, sjd.py, zipar.py, randar.py) depend on this module and on
nothing of each other.

* Prompts: lists of ids are left-padded (`left_pad`): pad slots have segment id 0, so no query
  attends to them, and positions start at 0 at each prompt's first real token. The padded
  length is a multiple of `PROMPT_BUCKET`, so a new caption length compiles only when it
  crosses a bucket.
* Sampling settings are separate for text and image tokens (`temperature_*`, `top_k_*`,
  `top_p_*`; temperature 0 = greedy, top-k 0 and top-p 1 = off) and are traced values
  ("knobs"), so changing them does not recompile. `warp` applies them: top-k first, then
  top-p on the renormalised rest (the order of Hugging Face's warpers). Decoders that draw
  use `sample_logits`, decoders that need the distribution itself (SJD's acceptance test)
  use `warped_probs`; both are the same warp.
* Every sampler reads the `sample` config section, completed at its constructor (a
  hand-built partial section gets the schema's defaults, mmar/schema.py), and takes per-call
  overrides of its fields (`section`); `settings` gives what a sample record stores.
* Classifier-free guidance for images (`sample.cfg_scale_image` = s): every caption row gets
  a twin prompt without the caption, `<bos> <boi>` (`unconditional_prompt`), exactly how
  image-first training rows begin (and what caption dropout trains, `data.caption_dropout`).
  Both streams run in one batch (rows B..2B-1 are the twins); a code is drawn from
  `uncond + s * (cond - uncond)` (`cfg_mix`) and fed to both, so s = 0 is the unconditional
  model and s = 1 the conditional one. `sample.cfg_interval_image = (a, b)` guides only codes
  whose decoded fraction lies in [a, b); elsewhere the conditional logits are used.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmar import schema
from mmar.vocab import Vocab

PROMPT_BUCKET = 16


# ---- prompts ---------------------------------------------------------------------------------

def left_pad(prompts, pad_id: int, positions=None, bucket: int = PROMPT_BUCKET):
    """Lists of ids -> (tokens, positions, segment_ids) [B, P], right-aligned. Positions are
    0, 1, ... per prompt unless given (lists as long as the prompts).

    P is the longest prompt rounded up to a multiple of `bucket`: the extra slots are left
    padding (segment 0, seen by no query), so batches whose longest prompts differ by less
    than a bucket reuse one compiled program instead of compiling per prompt length."""
    length = -(-max(len(p) for p in prompts) // bucket) * bucket
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    segments = np.zeros((len(prompts), length), np.int32)
    pos = np.zeros((len(prompts), length), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, length - len(p):] = p
        segments[i, length - len(p):] = 1
        pos[i, length - len(p):] = np.arange(len(p)) if positions is None else positions[i]
    return tokens, pos, segments


def image_prompt(caption, vocab: Vocab) -> list[int]:
    """`<bos> caption <boi>`: a text-to-image prompt (caption ids without specials)."""
    return [vocab.bos, *caption, vocab.boi]


def unconditional_prompt(vocab: Vocab, tail=(), negative=()) -> list[int]:
    """`<bos> <boi> tail`: the caption-free twin of a guided image prompt (tail: what the
    image already has, e.g. codes drawn so far, an image's size, or RandAR's known pairs).
    `negative`: text ids in the caption's place (`sample.negative_prompt`, as Emu3's
    release guides: away from "lowres, bad anatomy, ...")."""
    return [vocab.bos, *negative, vocab.boi, *tail]


def with_twins(prompts, tails, vocab: Vocab, guided: bool, negative=()) -> list[list[int]]:
    """The prompts, followed when `guided` by one unconditional twin per prompt."""
    prompts = [list(p) for p in prompts]
    return prompts + [unconditional_prompt(vocab, t, negative) for t in tails] if guided else (
        prompts)


def raster_image_prompt(codes, vocab: Vocab) -> tuple[list[int], list[int]]:
    """RandAR vocabulary: `<bos> <boi> P_0 c_0 ... P_{n-1} c_{n-1} <eoi>` and its positions
    (an image-to-text prompt: the image as P c pairs in raster order, training positions)."""
    codes = np.asarray(codes)
    n = len(codes)
    pairs = np.stack([vocab.position_ids(np.arange(n)), vocab.image_ids(codes)], 1)
    ids = [vocab.bos, vocab.boi, *pairs.reshape(-1).tolist(), vocab.eoi]
    positions = [0, 1, *np.repeat(np.arange(2, n + 2), 2).tolist(), n + 2]
    return ids, positions


def twin_rows(x, guided: bool):
    """Guided batches: the unconditional twins follow the same inputs as their rows."""
    return jnp.concatenate([x, x]) if guided else x


# ---- allowed ids and modality ----------------------------------------------------------------

def id_masks(vocab: Vocab, vocab_rows: int) -> dict[str, np.ndarray]:
    """Bool masks [vocab_rows] of the ids a decoder may draw: "image" (the image codes) and
    "text" (text ids and `<eos>`)."""
    ids = np.arange(vocab_rows)
    return {"image": (ids >= vocab.image_offset) & (ids < vocab.image_offset +
                                                    vocab.num_image_codes),
            "text": vocab.is_text(ids) | (ids == vocab.eos)}


def modality(tokens, vocab: Vocab):
    """0 text / 1 image per token, as in training data (mmar/data/sequences.py: image codes
    are 1, `<boi>` / `<eoi>` and text 0); Mixture-of-Transformers decoders route by it.
    RandAR position ids (after the codes; none in a raster vocabulary) are image too."""
    return ((tokens >= vocab.image_offset) & (tokens < vocab.image_stop)).astype(jnp.int32)


# ---- sampling settings -----------------------------------------------------------------------

def section(sample_cfg, **overrides) -> ml_collections.ConfigDict:
    """A `sample` config section completed (mmar/schema.py: older names moved, missing fields
    at their defaults), with per-call overrides, checked.

    An override names a field of the section (`temperature_image=0.0`) or gives a decoder's
    options as a partial section (`sjd=dict(window=4)`: the other `sjd` options stay); an
    unknown name or a bad value raises ConfigError naming the field (`sample.sjd.window`)."""
    tree = schema.complete(sample_cfg, section="sample").to_dict()
    for name, value in overrides.items():
        if name not in tree:
            raise schema.unknown_field_error(f"sample.{name}")
        if isinstance(tree[name], dict):
            if not isinstance(value, Mapping):
                raise schema.ConfigError(f"sample.{name}={value!r}: must be a section (fields "
                                         f"{', '.join(sorted(tree[name]))})")
            value = {**tree[name], **value}
        tree[name] = value
    out = schema.complete(tree, section="sample")
    schema.check(out, section="sample")
    return out


def sampling_settings(c) -> dict:
    """Temperature / top-k / top-p per modality and guidance of a completed `sample` section,
    as plain numbers (what a sample record stores)."""
    return {"temperature_text": float(c.temperature_text),
            "temperature_image": float(c.temperature_image),
            "top_k_text": int(c.top_k_text),
            "top_k_image": int(c.top_k_image),
            "top_p_text": float(c.top_p_text),
            "top_p_image": float(c.top_p_image),
            "cfg_scale_image": float(c.cfg_scale_image),
            "cfg_interval_image": [float(x) for x in c.cfg_interval_image]}


def warp_knobs(s: dict, modality_name: str) -> dict:
    """The traced warp settings of one modality ("text" | "image") from a settings dict."""
    return {"temperature": np.asarray(s[f"temperature_{modality_name}"], np.float32),
            "top_k": np.asarray(s[f"top_k_{modality_name}"], np.int32),
            "top_p": np.asarray(s[f"top_p_{modality_name}"], np.float32)}


def image_knobs(s: dict) -> dict:
    """The image warp settings plus guidance (`scale`, `interval`), traced."""
    return {**warp_knobs(s, "image"), "scale": np.float32(s["cfg_scale_image"]),
            "interval": np.asarray(s["cfg_interval_image"], np.float32)}


# ---- the logits warp -------------------------------------------------------------------------

class Warped(NamedTuple):
    greedy: jax.Array   # [...] argmax of the allowed logits
    scaled: jax.Array   # [..., V] allowed logits / temperature (-inf where not allowed)
    keep: jax.Array     # [..., V] bool: the ids top-k and top-p keep
    probs: jax.Array    # [..., V] the distribution drawn from (a point mass at temperature 0)


def _unsort(x, order):
    """Values given in `order` (ids sorted per row) back in id order, along the last axis."""
    return jnp.take_along_axis(x, jnp.argsort(order, axis=-1), axis=-1)


def warp(logits, allowed, temperature, top_k, top_p) -> Warped:
    """Temperature, top-k, top-p of logits [..., V] among the `allowed` ids [..., V];
    temperature, top_k, top_p broadcast against logits[..., 0].

    Temperature 0 is argmax; top_k 0 keeps all; top_p >= 1 keeps all. Among the allowed ids,
    top-k keeps the k largest, then top-p keeps the smallest prefix (by probability, largest
    first) whose mass reaches p, always at least one id. (Whatever a caller leaves unused
    is dropped by jit.)"""
    temperature, top_k, top_p = (jnp.asarray(x) for x in (temperature, top_k, top_p))
    logits = jnp.where(allowed, logits.astype(jnp.float32), -jnp.inf)
    vocab = logits.shape[-1]
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits / jnp.maximum(temperature, 1e-6)[..., None]
    sorted_logits, order = jax.lax.top_k(scaled, vocab)  # descending
    rank = jnp.arange(vocab)
    k = jnp.where(top_k > 0, top_k, vocab)[..., None]
    sorted_logits = jnp.where(rank < k, sorted_logits, -jnp.inf)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the ids ranked above
    keep = (rank < k) & ((before < top_p[..., None]) | (top_p[..., None] >= 1.0) |
                         (rank == 0))
    probs = jnp.where(keep, probs, 0.0)
    probs = _unsort(probs / probs.sum(-1, keepdims=True), order)
    point = jax.nn.one_hot(greedy, vocab, dtype=jnp.float32)
    return Warped(greedy=greedy, scaled=scaled, keep=_unsort(keep, order),
                  probs=jnp.where((temperature == 0)[..., None], point, probs))


# Gumbel noise of every step drawn before a decoding loop when it takes at most this many
# bytes (`gumbel_ahead`); beyond it each step draws its own.
NOISE_AHEAD_BYTES = 64 << 20


def gumbel_ahead(keys, shape, span=None):
    """The Gumbel noise [steps, *shape] that `sample_logits(key=keys[t])` would draw at step
    t (`span=(offset, width)`: drawn at the full width, kept for the logits' columns), all
    in one call before the loop, or None when it would exceed NOISE_AHEAD_BYTES.

    Why: on CPU, JAX's threefry runs as a small loop of its own; inside a decoding loop it
    cost about a third of a tiny model's step. The same keys give the same noise here
    (tests/sample/test_warp.py), so the draws do not change."""
    width = shape[-1] if span is None else span[1]
    if keys.shape[0] * np.prod(shape[:-1]) * width * 4 > NOISE_AHEAD_BYTES:
        return None
    return jax.vmap(lambda k: _gumbel(k, shape, span))(keys)


def _gumbel(key, shape, span=None):
    """The Gumbel noise of one draw over logits of `shape` [..., V]: what
    `jax.random.categorical(key, logits)` adds before its argmax; with `span=(offset,
    width)` drawn at the full width and sliced to the V columns from `offset`."""
    if span is None:
        return jax.random.gumbel(key, shape)
    offset, width = span
    return jax.random.gumbel(key, (*shape[:-1], width))[..., offset:offset + shape[-1]]


def sample_logits(logits, allowed, key, temperature, top_k, top_p, span=None, noise=None):
    """One id per row of logits [..., V] under `warp`'s settings (`allowed` None: all).

    The draw is in id order (the kept set scattered back), so that with no filter the draws
    are exactly those of a plain categorical over the logits (same keys, same ids). When no
    row filters (top-k 0 and top-p >= 1 everywhere, decided at run time) the sort that
    top-k / top-p need is skipped (`lax.cond`): the same draws, without sorting the
    vocabulary at every step.

    `span=(offset, width)`: the logits are those of ids offset .. offset + V - 1 of a
    `width`-id vocabulary whose other ids are not allowed (a decoder that computes only the
    image codes' logits, `Decoder.decode(logits_ids=...)`); the Gumbel noise of the draw is
    made at the full width and sliced, so the draws are exactly those over the whole
    vocabulary, and the result is an index into the V logits. `noise`: this draw's noise
    from `gumbel_ahead` (then `key` is not used)."""
    temperature, top_k, top_p = (jnp.asarray(x) for x in (temperature, top_k, top_p))
    if allowed is None:
        allowed = jnp.ones(logits.shape[-1:], bool)
    allowed = jnp.broadcast_to(allowed, logits.shape)
    masked = jnp.where(allowed, logits.astype(jnp.float32), -jnp.inf)
    greedy = jnp.argmax(masked, axis=-1).astype(jnp.int32)

    def filtered(_):
        w = warp(logits, allowed, temperature, top_k, top_p)
        return jnp.where(w.keep, w.scaled, -jnp.inf)

    def unfiltered(_):
        return masked / jnp.maximum(temperature, 1e-6)[..., None]

    scaled = jax.lax.cond(jnp.any(top_k > 0) | jnp.any(top_p < 1.0), filtered, unfiltered,
                          None)
    if noise is None:
        noise = _gumbel(key, scaled.shape, span)
    drawn = jnp.argmax(noise + scaled, axis=-1)
    return jnp.where(temperature == 0, greedy, drawn.astype(jnp.int32))


def warped_probs(logits, allowed, temperature, top_k, top_p):
    """The distribution [..., V] that `sample_logits` draws from."""
    return warp(logits, allowed, temperature, top_k, top_p).probs


def draw(key, probs):
    """One id per distribution [..., V] (zero-probability ids never)."""
    return jax.random.categorical(key, jnp.log(probs)).astype(jnp.int32)


# ---- guidance --------------------------------------------------------------------------------

def cfg_mix(cond, uncond, scale, interval, frac, active=True):
    """Classifier-free guidance of logits [..., V]: `uncond + scale * (cond - uncond)` where
    `active` and the image's decoded fraction `frac` [...] lies in [interval[0],
    interval[1]) (`sample.cfg_interval_image`), the conditional logits elsewhere."""
    on = active & (frac >= interval[0]) & (frac < interval[1])
    return jnp.where(on[..., None], uncond + scale * (cond - uncond), cond)


def guide(logits, batch: int, guided: bool, knobs, frac, active=True):
    """Rows' logits [R, ..., V] -> the logits codes are drawn from, [batch, ..., V] (float32):
    rows batch.. are the unconditional twins of rows ..batch when `guided` (`cfg_mix` with
    the knobs' `scale` and `interval`, at decoded fraction `frac` [batch, ...])."""
    logits = logits.astype(jnp.float32)
    cond = logits[:batch]
    if not guided:
        return cond
    return cfg_mix(cond, logits[batch:], knobs["scale"], knobs["interval"], frac, active)


# ---- batches ---------------------------------------------------------------------------------

def image_batch(caption_ids, vocab: Vocab, s: dict) -> dict:
    """A text-to-image batch: left-padded `<bos> caption <boi>` rows, plus their `<bos> <boi>`
    twins when guided (s = the settings dict), and the traced image knobs."""
    guided = s["cfg_scale_image"] != 1.0
    prompts = with_twins([image_prompt(c, vocab) for c in caption_ids],
                         [()] * len(caption_ids), vocab, guided)
    tokens, positions, segments = left_pad(prompts, vocab.pad)
    return {"tokens": tokens, "positions": positions, "segments": segments,
            "knobs": image_knobs(s), "guided": guided}
