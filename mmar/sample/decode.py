"""Jitted KV-cache decoding of text, images and interleaved documents, constrained by structure.

One decoding loop serves every mode. Each row carries a small state (inside an image or not,
codes drawn so far, finished) and the state alone decides which ids may come next:

* inside an image: only image codes until the image has its `n` codes, then only `<eoi>`;
* in text: text ids or `<eos>`, and `<boi>` when images are allowed and `n + 2` steps remain
  (an image is never cut off by the step budget, so every image decodes);
* after `<eos>`: `<eos>` again (the host cuts there).

Text-to-image is a prompt that ends in `<boi>`; image-to-text a prompt that ends in `<eoi>`
with images not allowed; interleaved continues any document prefix. Prompts of different
lengths are left-padded (pad slots have segment id 0, so no query ever attends to them;
positions start at 0 at the first real token), to a multiple of `PROMPT_BUCKET` slots, so a
new caption length compiles only when it crosses a bucket (every sampler here shares this).

Sampling settings are separate for text and image tokens (`temperature_*`, `top_k_*`,
`top_p_*`; temperature 0 = greedy, top-k 0 and top-p 1 = off) and are traced values, so
changing them does not recompile. Top-k is applied first, then top-p on the renormalised
rest (the order of Hugging Face's warpers).

Classifier-free guidance for images (`sample.cfg_scale_image` = s): every caption row gets a
twin prompt without the caption, `<bos> <boi>`, exactly how image-first (image-to-text)
training rows begin (and what caption dropout trains, `data.caption_dropout`). Both streams
run in one batch (rows B..2B-1 are the twins); the next code is drawn from
`uncond + s * (cond - uncond)` and fed to both, so s = 0 is the unconditional model and s = 1
the conditional one. `sample.cfg_interval_image = (a, b)` guides only codes whose raster
fraction `k / n` lies in [a, b) (e.g. (0, 0.5): only the top half); elsewhere the conditional
logits are used. Parameters keep the shardings they were loaded with (a model sharded on the
mesh decodes sharded: jit follows its inputs).

Other image orders (mmar/data/orders.py): a RAR decoder (`target_aware=True`) samples in
raster order and is fed, with every token, the target embedding of what comes next (k + 1
while the next token is the image's code k, else 0); a raster decoder gets no targets, so
its path is unchanged. A RandAR decoder's images come from mmar/sample/randar.py; its
captions from `run` here with the prompt's own `positions` (P c pairs share a position).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmar.vocab import Vocab

NEG_INF = -1e9


PROMPT_BUCKET = 16


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


def prompt_targets(prompt, vocab: Vocab, n: int) -> np.ndarray:
    """RAR targets of a raster prompt: k + 1 on the token before an image's code k, and on
    the last token when the prompt ends inside an image with k < n codes (0 elsewhere)."""
    targets = np.zeros(len(prompt), np.int32)
    inside, k = False, 0
    for t, tok in enumerate(prompt):
        if tok == vocab.boi:
            inside, k = True, 0
        elif tok == vocab.eoi:
            inside = False
        elif inside and vocab.is_image(tok):
            targets[t - 1], k = k + 1, k + 1
    if inside and k < n and len(prompt):
        targets[-1] = k + 1
    return targets


def sample_logits(logits, allowed, key, temperature, top_k, top_p):
    """One token per row. logits [B, V]; allowed [B, V] bool; temperature, top_k, top_p [B].

    Temperature 0 is argmax; top_k 0 keeps all; top_p >= 1 keeps all. Among the allowed ids,
    top-k keeps the k largest, then top-p keeps the smallest prefix (by probability, largest
    first) whose mass reaches p, always at least one id.
    """
    logits = jnp.where(allowed, logits.astype(jnp.float32), -jnp.inf)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    vocab = logits.shape[-1]
    scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
    sorted_logits, order = jax.lax.top_k(scaled, vocab)  # descending
    rank = jnp.arange(vocab)[None]
    k = jnp.where(top_k > 0, top_k, vocab)[:, None]
    sorted_logits = jnp.where(rank < k, sorted_logits, -jnp.inf)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the ids ranked above
    keep_sorted = (rank < k) & ((before < top_p[:, None]) | (top_p[:, None] >= 1.0) |
                                (rank == 0))
    # Draw in vocabulary order (the kept set scattered back), so that with no filter the
    # draws are exactly those of a plain categorical over the logits (same keys, same ids).
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(
        keep_sorted)
    drawn = jax.random.categorical(key, jnp.where(keep, scaled, -jnp.inf)).astype(jnp.int32)
    return jnp.where(temperature == 0, greedy, drawn)


def prompt_state(prompt, vocab: Vocab):
    """(inside an image, codes so far) at the end of a prompt, from its last <boi> / <eoi>."""
    prompt = list(prompt)
    last_boi = max((i for i, t in enumerate(prompt) if t == vocab.boi), default=-1)
    last_eoi = max((i for i, t in enumerate(prompt) if t == vocab.eoi), default=-1)
    if last_boi > last_eoi:
        return True, len(prompt) - last_boi - 1
    return False, 0


def split_document(ids, vocab: Vocab) -> list[tuple[str, list[int]]]:
    """Generated ids (up to <eos>) -> [("text", ids) | ("image", codes)], a cut image last."""
    out, text, image = [], [], None
    for t in ids:
        if t == vocab.eos:
            break
        if image is not None:
            if t == vocab.eoi:
                out.append(("image", image))
                image = None
            else:
                image.append(int(t) - vocab.image_offset)
        elif t == vocab.boi:
            if text:
                out.append(("text", text))
            text, image = [], []
        else:
            text.append(int(t))
    if image:
        out.append(("image", image))
    if text:
        out.append(("text", text))
    return out


def cfg_mix(cond, uncond, scale, interval, frac, active=True):
    """Classifier-free guidance of logits [..., V]: `uncond + scale * (cond - uncond)` where
    `active` and the image's decoded fraction `frac` [...] lies in [interval[0],
    interval[1]) (`sample.cfg_interval_image`), the conditional logits elsewhere. Shared by
    every sampler (plain, RandAR, SJD / LANTERN, ZipAR)."""
    on = active & (frac >= interval[0]) & (frac < interval[1])
    return jnp.where(on[..., None], uncond + scale * (cond - uncond), cond)


def sampling_settings(c) -> dict:
    """Temperature / top-k / top-p per modality and guidance of a `sample` config section;
    fields missing from it (a config older than the field) take their defaults."""
    return {"temperature_text": float(c.get("temperature_text", 0.0)),
            "temperature_image": float(c.get("temperature_image", 1.0)),
            "top_k_text": int(c.get("top_k_text", 0)),
            "top_k_image": int(c.get("top_k_image", 0)),
            "top_p_text": float(c.get("top_p_text", 1.0)),
            "top_p_image": float(c.get("top_p_image", 1.0)),
            "cfg_scale_image": float(c.get("cfg_scale_image", 1.0)),
            "cfg_interval_image": [float(x) for x in c.get("cfg_interval_image", (0.0, 1.0))]}


class Sampler:
    """Holds the jitted generation function for one model (compiled once per shape)."""

    def __init__(self, model_state, vocab: Vocab, vocab_rows: int, sample_cfg,
                 num_codes: int | None = None, target_aware: bool = False):
        self.model_state, self.vocab, self.cfg = model_state, vocab, sample_cfg
        self.num_codes, self.target_aware = num_codes, target_aware
        ids = np.arange(vocab_rows)
        self._allowed = {
            "image": (ids >= vocab.image_offset) & (ids < vocab.image_offset + vocab.num_image_codes),
            "text": (ids < vocab.text_size) | (ids == vocab.eos),
        }
        self._jitted = jax.jit(self._generate, static_argnames=("steps", "guided", "n",
                                                                "allow_images"))

    def settings(self, **overrides) -> dict:
        """The sampling settings of the config (fields missing from it take their defaults)."""
        return {**sampling_settings(self.cfg), **overrides}

    def images(self, params, caption_ids, num_codes: int, key, **overrides) -> np.ndarray:
        """Image codes [B, num_codes] for each caption (ids without specials).

        `sample.image_decoder` "sjd" / "zipar" (config or override) decodes in parallel
        (mmar/sample/speculative.py, zipar.py); every decoder leaves the model calls the
        batch took, prefill included, in `self.last_forward_passes`."""
        from mmar.sample import speculative  # (imported here: it imports this module)

        if speculative.decoder_options(self, **overrides)["image_decoder"] != "plain":
            return speculative.parallel_images(self, params, caption_ids, num_codes, key,
                                               **overrides)
        overrides = {k: v for k, v in overrides.items() if k not in speculative.DECODER_FIELDS}
        self.last_forward_passes = num_codes
        v = self.vocab
        prompts = [[v.bos, *c, v.boi] for c in caption_ids]
        ids = self.run(params, prompts, num_codes, key, n=num_codes, allow_images=False,
                       **overrides)
        return v.codes_from_ids(ids)

    def captions(self, params, image_codes, key, **overrides) -> list[list[int]]:
        """Text ids per image (up to `<eos>`, at most sample.max_text_len). A RandAR
        vocabulary (position ids) gets the image as P c pairs in raster order."""
        v, positions = self.vocab, None
        if v.num_positions:
            from mmar.sample import randar  # that module imports this one
            prompts, positions = zip(*[randar.raster_image_prompt(c, v) for c in image_codes])
        else:
            prompts = [[v.bos, v.boi, *v.image_ids(c).tolist(), v.eoi] for c in image_codes]
        ids = self.run(params, list(prompts), int(self.cfg.max_text_len), key,
                       n=len(image_codes[0]), allow_images=False, positions=positions,
                       **overrides)
        return [row[:row.index(v.eos)] if v.eos in row else row for row in ids.tolist()]

    def continue_documents(self, params, prompts, steps: int, key, **overrides):
        """Interleaved: `steps` more tokens after each document prefix (ids, `<bos>` first);
        text and images as the model chooses, images whole. Returns the new ids per row, cut
        at `<eos>`. No guidance here (a document has no single caption to drop)."""
        if self.num_codes is None:
            raise ValueError("Sampler(num_codes=...) is needed for interleaved documents")
        ids = self.run(params, prompts, steps, key, n=self.num_codes, allow_images=True,
                       **dict(overrides, cfg_scale_image=1.0))
        v = self.vocab
        return [row[:row.index(v.eos) + 1] if v.eos in row else row for row in ids.tolist()]

    def run(self, params, prompts, steps: int, key, *, n: int, allow_images: bool,
            positions=None, **overrides) -> np.ndarray:
        """Generated ids [B, steps] after each prompt (lists of ids); see the module doc.
        `positions`: per-prompt RoPE positions (default 0, 1, ...; not with guidance)."""
        v, s = self.vocab, self.settings(**overrides)
        starts = [prompt_state(p, v) for p in prompts]
        guided = s["cfg_scale_image"] != 1.0 and any(inside for inside, _ in starts)
        if guided and positions is not None:
            raise ValueError("explicit prompt positions are for unguided prompts (captions)")
        if guided:
            prompts = list(prompts) + [[v.bos, v.boi, *p[len(p) - c:]] for p, (_, c)
                                       in zip(prompts, starts)]
        tokens, positions, segments = left_pad(prompts, v.pad, positions)
        targets = None
        if self.target_aware:
            targets = np.zeros_like(tokens)
            for i, p in enumerate(prompts):
                targets[i, tokens.shape[1] - len(p):] = prompt_targets(p, v, n)
        state = (np.array([i for i, _ in starts]), np.array([c for _, c in starts], np.int32))
        knobs = {k: np.asarray(s[k], np.float32 if "top_k" not in k else np.int32)
                 for k in s}
        return np.asarray(self._jitted(params, tokens, positions, segments, state, knobs, key,
                                       targets, steps=steps, guided=guided, n=n,
                                       allow_images=allow_images))

    def _modality(self, tokens):
        """0 text / 1 image per token, as in training data (mmar/data/sequences.py: image codes
        are 1, <boi>/<eoi> and text 0); Mixture-of-Transformers decoders route by it."""
        v = self.vocab
        # RandAR position ids (after the codes; none in a raster vocabulary) are image too.
        return ((tokens >= v.image_offset) & (tokens < v.used)).astype(jnp.int32)

    def _generate(self, params, tokens, positions, segments, state, s, key, targets, *, steps,
                  guided, n, allow_images):
        v = self.vocab
        model = self.model_state.merge(params)
        rows, plen = tokens.shape
        batch = rows // 2 if guided else rows
        image_ids, text_ids = jnp.asarray(self._allowed["image"]), jnp.asarray(self._allowed["text"])
        ids = jnp.arange(image_ids.shape[0])
        eoi_only, eos_only, boi = ids == v.eoi, ids == v.eos, ids == v.boi

        def pick(logits, st, t, step_key):
            inside, codes, done = st
            logits = logits[:, -1].astype(jnp.float32)
            cond = logits[:batch]
            if guided:
                cond = cfg_mix(cond, logits[batch:], s["cfg_scale_image"],
                               s["cfg_interval_image"], codes.astype(jnp.float32) / n,
                               inside & (codes < n))
            room = steps - t >= n + 2
            text_ok = text_ids[None] | (boi[None] & allow_images & room)
            allowed = jnp.where((inside & (codes < n))[:, None], image_ids[None],
                                jnp.where(inside[:, None], eoi_only[None], text_ok))
            allowed = jnp.where(done[:, None], eos_only[None], allowed)
            knob = {k: jnp.where(inside, s[f"{k}_image"], s[f"{k}_text"])
                    for k in ("temperature", "top_k", "top_p")}
            tok = sample_logits(cond, allowed, step_key, knob["temperature"], knob["top_k"],
                                knob["top_p"])
            is_code = (tok >= v.image_offset) & (tok < v.image_offset + v.num_image_codes)
            new_state = (jnp.where(tok == v.boi, True, jnp.where(tok == v.eoi, False, inside)),
                         jnp.where(tok == v.boi, 0, codes + is_code.astype(jnp.int32)),
                         done | (tok == v.eos))
            return (jnp.tile(tok, 2) if guided else tok), new_state

        st = (jnp.asarray(state[0], bool), jnp.asarray(state[1], jnp.int32),
              jnp.zeros((batch,), bool))
        cache = model.init_cache(rows, plen + steps)
        logits, cache = model.decode(tokens, positions, segments, cache, self._modality(tokens),
                                     targets=targets)
        first_key, rest = jax.random.split(key)  # the key stream of earlier versions
        keys = jnp.concatenate([first_key[None], jax.random.split(rest, steps - 1)])
        first, st = pick(logits, st, 0, keys[0])
        seg = jnp.ones((rows, 1), jnp.int32)

        def body(carry, xs):
            tok, pos, st, cache = carry
            t, step_key = xs
            step_model = self.model_state.merge(params)  # NNX modules do not cross traces
            target = None
            if self.target_aware:  # RAR: what comes after tok (the state after drawing it)
                inside, codes, _ = st
                target = jnp.where(inside & (codes < n), codes + 1, 0).astype(jnp.int32)
                target = (jnp.tile(target, 2) if guided else target)[:, None]
            logits, cache = step_model.decode(tok[:, None], pos[:, None], seg, cache,
                                              self._modality(tok[:, None]), targets=target)
            nxt, st = pick(logits, st, t, step_key)
            return (nxt, pos + 1, st, cache), tok

        (last, _, _, _), fed = jax.lax.scan(
            body, (first, positions[:, -1] + 1, st, cache),
            (jnp.arange(1, steps), keys[1:]))
        out = jnp.concatenate([fed.T, last[:, None]], axis=1)
        return out[:batch]
