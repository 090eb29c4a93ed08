"""Plain KV-cache decoding, one token per forward pass: images, captions and documents.

One jitted decoding loop serves every mode. Each row carries a small state (inside an image
or not, codes drawn so far, finished) and the state alone decides which ids may come next:

* inside an image: only image codes until the image has its `n` codes, then only `<eoi>`;
* in text: text ids or `<eos>`, and `<boi>` when images are allowed and `n + 2` steps remain
  (an image is never cut off by the step budget, so every image decodes);
* after `<eos>`: `<eos>` again (the host cuts there).

Text-to-image is a prompt that ends in `<boi>`; image-to-text a prompt that ends in `<eoi>`
with images not allowed; interleaved continues any document prefix. Prompts are left-padded
to a bucket (mmar/sample/core.py); so are the sampling settings, guidance and its interval,
which apply to image codes: each prompt that ends inside an image gets an unconditional twin
`<bos> <boi> <codes so far>`, and a code's guidance fraction is its raster fraction `k / n`.
Parameters keep the shardings they were loaded with (a model sharded on the mesh decodes
sharded: jit follows its inputs).

Image orders (mmar/data/orders.py): a RAR decoder (`target_aware=True`) samples in raster
order and is fed, with every token, the target embedding of what comes next (k + 1 while the
next token is the image's code k, else 0); a raster decoder gets no targets, so its path is
unchanged. A RandAR decoder's images come from mmar/sample/randar.py; its captions from here,
with the image as P c pairs in raster order at the training positions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmar import schema
from mmar.sample import core
from mmar.vocab import Vocab


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


class Sampler:
    """Plain decoding for one model: its jitted loop (compiled once per shape)."""

    def __init__(self, model_state, vocab: Vocab, vocab_rows: int, sample_cfg,
                 num_codes: int | None = None, target_aware: bool = False, depth: int = 1):
        """`depth`: codes per latent position of a residual (RQ) tokenizer: the k-th code of
        an image is then drawn from depth k % depth's id range only (mmar/vocab.py)."""
        self.model_state, self.vocab = model_state, vocab
        self.cfg = schema.complete(sample_cfg, section="sample")
        self.num_codes, self.target_aware = num_codes, target_aware
        if vocab.num_image_codes % depth:
            raise ValueError(f"{vocab.num_image_codes} image codes do not split into {depth} "
                             "depths")
        self.depth = depth
        self.allowed = core.id_masks(vocab, vocab_rows)
        self._jitted = jax.jit(self._generate, static_argnames=("steps", "guided", "n",
                                                                "allow_images", "codes_only"))

    def settings(self, **overrides) -> dict:
        """The warp and guidance settings of the `sample` section, with per-call overrides
        of its fields (`core.section`)."""
        return core.sampling_settings(core.section(self.cfg, **overrides))

    def images(self, params, caption_ids, num_codes: int, key,
               **overrides) -> tuple[np.ndarray, int]:
        """(Image codes [B, num_codes] for each caption (ids without specials), forward passes
        for the batch: one per code, the prefill included)."""
        v = self.vocab
        prompts = [core.image_prompt(c, v) for c in caption_ids]
        ids = self.run(params, prompts, num_codes, key, n=num_codes, allow_images=False,
                       **overrides)
        return v.codes_from_ids(ids), num_codes

    def captions(self, params, image_codes, key, **overrides) -> list[list[int]]:
        """Text ids per image (up to `<eos>`, at most sample.max_text_len). A RandAR
        vocabulary (position ids) gets the image as P c pairs in raster order."""
        v, positions = self.vocab, None
        if v.num_positions:
            prompts, positions = zip(*[core.raster_image_prompt(c, v) for c in image_codes])
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
        prompts = core.with_twins(prompts, [p[len(p) - c:] for p, (_, c) in zip(prompts, starts)],
                                  v, guided)
        tokens, positions, segments = core.left_pad(prompts, v.pad, positions)
        targets = None
        if self.target_aware:
            targets = np.zeros_like(tokens)
            for i, p in enumerate(prompts):
                targets[i, tokens.shape[1] - len(p):] = prompt_targets(p, v, n)
        state = (np.array([i for i, _ in starts]), np.array([c for _, c in starts], np.int32))
        # Every drawn token an image code (text-to-image, and any prompts whose images all
        # need at least `steps` more codes): the model computes only the codes' logits.
        codes_only = all(inside and n - c >= steps for inside, c in starts)
        knobs = {"text": core.warp_knobs(s, "text"), "image": core.image_knobs(s)}
        return np.asarray(self._jitted(params, tokens, positions, segments, state, knobs, key,
                                       targets, steps=steps, guided=guided, n=n,
                                       allow_images=allow_images, codes_only=codes_only))

    def _generate(self, params, tokens, positions, segments, state, knobs, key, targets, *,
                  steps, guided, n, allow_images, codes_only):
        v = self.vocab
        model = self.model_state.merge(params)
        rows, plen = tokens.shape
        batch = rows // 2 if guided else rows
        image_ids = jnp.asarray(self.allowed["image"])
        text_ids = jnp.asarray(self.allowed["text"])
        ids = jnp.arange(image_ids.shape[0])
        eoi_only, eos_only, boi = ids == v.eoi, ids == v.eos, ids == v.boi
        code_ids = (v.image_offset, v.image_offset + v.num_image_codes)
        logits_ids = code_ids if codes_only else None
        span = (v.image_offset, image_ids.shape[0]) if codes_only else None
        weights = model.decode_weights(logits_ids)     # once, outside the loop
        per_depth = v.num_image_codes // self.depth
        code_depth = (ids - v.image_offset) // per_depth   # an id's RQ depth (codes only)

        def depth_ok(codes, width_ids):
            """Ids of `width_ids` that the next code of each row may be: all image codes, or
            with RQ those of depth `codes % depth` ([batch, width] bool; None: no limit)."""
            if self.depth == 1:
                return None
            return width_ids[None] == (codes % self.depth)[:, None]

        def pick_code(logits, st, step_key, noise):
            """codes_only: logits [rows, 1, codes] -> the next code ids of every row."""
            inside, codes, done = st
            cond = core.guide(logits[:, -1], batch, guided, knobs["image"],
                              codes.astype(jnp.float32) / n)
            k = knobs["image"]
            tok = v.image_offset + core.sample_logits(
                cond, depth_ok(codes, code_depth[code_ids[0]:code_ids[1]]), step_key,
                k["temperature"], k["top_k"], k["top_p"], span=span, noise=noise)
            return core.twin_rows(tok, guided), (inside, codes + 1, done)

        def pick(logits, st, t, step_key, noise):
            if codes_only:
                return pick_code(logits, st, step_key, noise)
            inside, codes, done = st
            in_image = inside & (codes < n)
            cond = core.guide(logits[:, -1], batch, guided, knobs["image"],
                              codes.astype(jnp.float32) / n, in_image)
            room = steps - t >= n + 2
            text_ok = text_ids[None] | (boi[None] & allow_images & room)
            in_range = depth_ok(codes, code_depth)
            image_ok = image_ids[None] if in_range is None else image_ids[None] & in_range
            allowed = jnp.where(in_image[:, None], image_ok,
                                jnp.where(inside[:, None], eoi_only[None], text_ok))
            allowed = jnp.where(done[:, None], eos_only[None], allowed)
            knob = {k: jnp.where(inside, knobs["image"][k], knobs["text"][k])
                    for k in ("temperature", "top_k", "top_p")}
            tok = core.sample_logits(cond, allowed, step_key, knob["temperature"],
                                     knob["top_k"], knob["top_p"], noise=noise)
            is_code = (tok >= v.image_offset) & (tok < v.image_offset + v.num_image_codes)
            new_state = (jnp.where(tok == v.boi, True, jnp.where(tok == v.eoi, False, inside)),
                         jnp.where(tok == v.boi, 0, codes + is_code.astype(jnp.int32)),
                         done | (tok == v.eos))
            return core.twin_rows(tok, guided), new_state

        st = (jnp.asarray(state[0], bool), jnp.asarray(state[1], jnp.int32),
              jnp.zeros((batch,), bool))
        cache = model.init_cache(rows, plen + steps)
        logits, cache = model.decode(tokens, positions, segments, cache,
                                     core.modality(tokens, v), targets=targets,
                                     weights=weights, logits_ids=logits_ids)
        first_key, rest = jax.random.split(key)  # code k gets keys[k] (ZipAR's stream too)
        keys = jnp.concatenate([first_key[None], jax.random.split(rest, steps - 1)])
        noise = core.gumbel_ahead(keys, (batch, logits.shape[-1]), span)
        first, st = pick(logits, st, 0, keys[0], None if noise is None else noise[0])
        seg = jnp.ones((rows, 1), jnp.int32)

        def body(carry, xs):
            tok, pos, st, cache = carry
            t, step_key, step_noise = xs
            step_model = self.model_state.merge(params)  # NNX modules do not cross traces
            target = None
            if self.target_aware:  # RAR: what comes after tok (the state after drawing it)
                inside, codes, _ = st
                target = jnp.where(inside & (codes < n), codes + 1, 0).astype(jnp.int32)
                target = core.twin_rows(target, guided)[:, None]
            logits, cache = step_model.decode(tok[:, None], pos[:, None], seg, cache,
                                              core.modality(tok[:, None], v), targets=target,
                                              weights=weights, logits_ids=logits_ids)
            nxt, st = pick(logits, st, t, step_key, step_noise)
            return (nxt, pos + 1, st, cache), tok

        (last, _, _, _), fed = jax.lax.scan(
            body, (first, positions[:, -1] + 1, st, cache),
            (jnp.arange(1, steps), keys[1:], None if noise is None else noise[1:]))
        out = jnp.concatenate([fed.T, last[:, None]], axis=1)
        return out[:batch]
