"""Plain KV-cache decoding, one token per forward pass: images, captions and documents.

One jitted decoding loop serves every mode. Each row carries a small state (inside an image
or not, codes drawn so far, finished) and the state alone decides which ids may come next:

* inside an image: only image codes until the image has its `n` codes, then only `<eoi>`;
* in text: text ids or `<eos>`, and `<boi>` when images are allowed and `n + 2` steps remain
  (an image is never cut off by the step budget, so every image decodes);
* after `<eos>`: `<eos>` again (the host cuts there).

Emu3's layout (`Vocab.emu3`: an imported Emu3) writes `<boi> h*w <image token>` (its size
as text), the same rows, then `<eof> <eoi>`; text-to-image gives the size in its prompt and
draws the rows as keep-aspect does (`prefix_length` ids before them instead of 2).
A keep-aspect vocabulary (`Vocab.grid_sides`, `data.keep_aspect`) writes an image as
`<boi> <h> <w>` then h rows of w codes, each followed by `<eol>`, then `<eoi>`: the state
adds the grid (h, w), and inside an image the count of ids after `<boi>` decides the slot:
a size id for the rows (any side), one for the columns (h * w at most the `n` codes of the
square), a code, `<eol>` at the end of a row, `<eoi>` after the last. Text-to-image asks
for a shape by ending its prompt in `<boi> <h> <w>` (`Sampler.images(grid=...)`); in
interleaved documents the model chooses the shape.

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
from mmar.vocab import Vocab, square_grid


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
    """(inside an image, ids after its <boi>: the codes so far of a square vocabulary) at
    the end of a prompt, from its last <boi> / <eoi>."""
    prompt = list(prompt)
    last_boi = max((i for i, t in enumerate(prompt) if t == vocab.boi), default=-1)
    last_eoi = max((i for i, t in enumerate(prompt) if t == vocab.eoi), default=-1)
    if last_boi > last_eoi:
        return True, len(prompt) - last_boi - 1
    return False, 0


def prompt_grid(prompt, vocab: Vocab) -> tuple[int, int]:
    """Keep-aspect: the (h, w) size ids of the image a prompt ends inside (0 where not yet
    given, or outside an image). Emu3's layout: its whole size prefix, or (0, 0)."""
    inside, k = prompt_state(prompt, vocab)
    tail = list(prompt[len(prompt) - k:]) if inside else []
    if vocab.emu3:
        prefix = vocab.parse_image_prefix(tail) if inside else None
        return (0, 0) if prefix is None else prefix[:2]
    sides = [int(t) - vocab.layout_offset for t in tail[:2]]
    return tuple(sides + [0] * (2 - len(sides)))


def prefix_length(vocab: Vocab, grid) -> int:
    """Ids between <boi> and an image's first row (`Vocab.image_prefix`): 2 size ids with
    keep-aspect; Emu3's "h*w" text and <image token>."""
    return len(vocab.image_prefix(*grid)) if vocab.emu3 else 2


def image_prompt(caption, vocab: Vocab, grid=None) -> list[int]:
    """`<bos> caption <boi>`, then with rows (keep-aspect, Emu3) the size of `grid` (h, w),
    which it needs (`Vocab.image_prefix`)."""
    prompt = core.image_prompt(caption, vocab)
    if vocab.has_rows:
        prompt += vocab.image_prefix(*grid)
    return prompt


def layout_slots(k, gh, gw, lead: int = 2):
    """Rows, inside an image with `k` ids after its <boi>, `lead` of them its size, and grid
    (gh, gw): which id comes next (code, <eol> or <eoi>; k < lead: a size id) and the codes
    drawn so far."""
    j = k - lead
    row_len = jnp.maximum(gw, 0) + 1
    r, c = j // row_len, j % row_len
    body = k >= lead
    code = body & (r < gh) & (c < gw)
    eol = body & (r < gh) & (c == gw)
    eoi = body & (r >= gh)
    drawn = jnp.where(body, jnp.minimum(r, gh) * gw + jnp.where(r < gh, jnp.minimum(c, gw), 0),
                      0)
    return code, eol, eoi, drawn


def split_document(ids, vocab: Vocab) -> list[tuple[str, list[int]]]:
    """Generated ids (up to <eos>) -> [("text", ids) | ("image", codes)], a cut image last.
    Keep-aspect images: codes [h, w] (an array with its grid; a cut one: its codes, flat)."""
    out, text, image = [], [], None
    for t in ids:
        if t == vocab.eos:
            break
        if image is not None:
            if t == vocab.eoi:
                if vocab.grid_sides:
                    codes, grid = vocab.parse_image_body(image)
                    out.append(("image", codes.reshape(grid)))
                else:
                    out.append(("image", image))
                image = None
            elif vocab.grid_sides:
                image.append(int(t))
            else:
                image.append(int(t) - vocab.image_offset)
        elif t == vocab.boi:
            if text:
                out.append(("text", text))
            text, image = [], []
        else:
            text.append(int(t))
    if image:
        if vocab.grid_sides:
            image = vocab.codes_from_ids([t for t in image if vocab.is_image(t)]).tolist()
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
        self._jitted = jax.jit(self._generate, static_argnames=(
            "steps", "guided", "n", "allow_images", "codes_only", "lead"))

    def settings(self, **overrides) -> dict:
        """The warp and guidance settings of the `sample` section, with per-call overrides
        of its fields (`core.section`)."""
        return core.sampling_settings(core.section(self.cfg, **overrides))

    def images(self, params, caption_ids, num_codes: int, key, grid=None, negative=(),
               **overrides) -> tuple[np.ndarray, int]:
        """(Image codes [B, num_codes] for each caption (ids without specials), forward passes
        for the batch: one per code, the prefill included). Keep-aspect: codes [B, h * w] of
        `grid` (h, w) (default: the square of `num_codes`), one pass per code and <eol>.
        `negative`: text ids of the guidance twin (`core.unconditional_prompt`)."""
        v = self.vocab
        if not v.has_rows:
            prompts = [core.image_prompt(c, v) for c in caption_ids]
            ids = self.run(params, prompts, num_codes, key, n=num_codes, allow_images=False,
                           negative=negative, **overrides)
            return v.codes_from_ids(ids), num_codes
        h, w = grid if grid is not None else square_grid(num_codes)
        if h * w > num_codes:
            raise ValueError(f"a {h}x{w} grid has more than the {num_codes} codes the model "
                             "was trained to draw (mmar.derived.grid_for)")
        steps = h * (w + 1)
        prompts = [image_prompt(c, v, (h, w)) for c in caption_ids]
        ids = self.run(params, prompts, steps, key, n=num_codes, allow_images=False,
                       negative=negative, **overrides)
        rows = ids.reshape(len(ids), h, w + 1)[:, :, :w]
        return v.codes_from_ids(rows.reshape(len(ids), -1)), steps

    def captions(self, params, image_codes, key, grid=None, **overrides) -> list[list[int]]:
        """Text ids per image (up to `<eos>`, at most sample.max_text_len). A RandAR
        vocabulary (position ids) gets the image as P c pairs in raster order; a
        keep-aspect one its grid (`grid` (h, w) of every image, default square)."""
        v, positions = self.vocab, None
        if v.num_positions:
            prompts, positions = zip(*[core.raster_image_prompt(c, v) for c in image_codes])
        else:
            prompts = [[v.bos, v.boi, *v.image_body(c, grid).tolist(), v.eoi]
                       for c in image_codes]
        n = self.num_codes if v.grid_sides and self.num_codes else len(image_codes[0])
        ids = self.run(params, list(prompts), int(self.cfg.max_text_len), key,
                       n=n, allow_images=False, positions=positions, **overrides)
        return [row[:row.index(v.eos)] if v.eos in row else row for row in ids.tolist()]

    def continue_documents(self, params, prompts, steps: int, key, **overrides):
        """Interleaved: `steps` more tokens after each document prefix (ids, `<bos>` first);
        text and images as the model chooses, images whole. Returns the new ids per row, cut
        at `<eos>`. No guidance here (a document has no single caption to drop)."""
        if self.num_codes is None:
            raise ValueError("Sampler(num_codes=...) is needed for interleaved documents")
        if self.vocab.emu3:
            raise ValueError("interleaved documents with Emu3's image layout (the model "
                             "choosing an image's size as text) are not built yet")
        ids = self.run(params, prompts, steps, key, n=self.num_codes, allow_images=True,
                       **dict(overrides, cfg_scale_image=1.0))
        v = self.vocab
        return [row[:row.index(v.eos) + 1] if v.eos in row else row for row in ids.tolist()]

    def run(self, params, prompts, steps: int, key, *, n: int, allow_images: bool,
            positions=None, negative=(), **overrides) -> np.ndarray:
        """Generated ids [B, steps] after each prompt (lists of ids); see the module doc.
        `positions`: per-prompt RoPE positions (default 0, 1, ...; not with guidance)."""
        v, s = self.vocab, self.settings(**overrides)
        starts = [prompt_state(p, v) for p in prompts]
        grids = np.array([prompt_grid(p, v) if v.has_rows else (0, 0) for p in prompts],
                         np.int32).reshape(len(prompts), 2)
        # ids of each image's size before its rows (the same for every prompt that needs it)
        leads = {prefix_length(v, g) for (inside, _), g in zip(starts, grids.tolist())
                 if inside and min(g) > 0} if v.has_rows else set()
        if len(leads) > 1:
            raise ValueError("one call draws images whose sizes take the same number of ids")
        lead = leads.pop() if leads else 2
        guided = s["cfg_scale_image"] != 1.0 and any(inside for inside, _ in starts)
        if guided and positions is not None:
            raise ValueError("explicit prompt positions are for unguided prompts (captions)")
        prompts = core.with_twins(prompts, [p[len(p) - c:] for p, (_, c) in zip(prompts, starts)],
                                  v, guided, negative)
        tokens, positions, segments = core.left_pad(prompts, v.pad, positions)
        targets = None
        if self.target_aware:
            targets = np.zeros_like(tokens)
            for i, p in enumerate(prompts):
                targets[i, tokens.shape[1] - len(p):] = prompt_targets(p, v, n)
        state = (np.array([i for i, _ in starts]), np.array([c for _, c in starts], np.int32),
                 grids[:, 0], grids[:, 1])
        # Every drawn token an image code (text-to-image, and any prompts whose images all
        # need at least `steps` more codes): the model computes only the codes' logits.
        # Keep-aspect: every drawn token a code or an <eol> (which is set, not drawn).
        if v.has_rows:
            codes_only = all(
                inside and c >= lead and h * (w + 1) - (c - lead) >= steps
                for (inside, c), (h, w) in zip(starts, grids.tolist()))
            if v.emu3 and not codes_only and any(inside for inside, _ in starts):
                raise ValueError("Emu3's layout: a prompt inside an image must hold its whole "
                                 "size (h*w <image token>), and every row is drawn in one "
                                 "call")
        else:
            codes_only = all(inside and n - c >= steps for inside, c in starts)
        knobs = {"text": core.warp_knobs(s, "text"), "image": core.image_knobs(s)}
        return np.asarray(self._jitted(params, tokens, positions, segments, state, knobs, key,
                                       targets, steps=steps, guided=guided, n=n,
                                       allow_images=allow_images, codes_only=codes_only,
                                       lead=lead))

    def _generate(self, params, tokens, positions, segments, state, knobs, key, targets, *,
                  steps, guided, n, allow_images, codes_only, lead):
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

        # keep-aspect ids (mmar/vocab.py): <eol>, and size ids saying how many rows / columns
        sides = ids - v.layout_offset
        size_ids = (sides >= 1) & (sides <= v.grid_sides) & (sides <= n)
        eol_only = ids == (v.layout_offset if v.grid_sides else -1)

        def pick_layout_code(logits, st, step_key, noise):
            """codes_only, keep-aspect: a code where the row has room, else <eol> / <eoi>."""
            inside, k, gh, gw, done = st
            code, eol, _, drawn = layout_slots(k, gh, gw, lead)
            cond = core.guide(logits[:, -1], batch, guided, knobs["image"],
                              drawn.astype(jnp.float32) / jnp.maximum(gh * gw, 1))
            kn = knobs["image"]
            drawn_id = v.image_offset + core.sample_logits(
                cond, None, step_key, kn["temperature"], kn["top_k"], kn["top_p"], span=span,
                noise=noise)
            tok = jnp.where(code, drawn_id, jnp.where(eol, v.eol, v.eoi))
            return core.twin_rows(tok, guided), (inside, k + 1, gh, gw, done)

        def pick_layout(logits, st, t, step_key, noise):
            """Keep-aspect (module doc): the slot after <boi> decides the allowed ids."""
            inside, k, gh, gw, done = st
            code, eol, eoi, drawn = layout_slots(k, gh, gw)
            code, eol, eoi = code & inside, eol & inside, eoi & inside
            cond = core.guide(logits[:, -1], batch, guided, knobs["image"],
                              drawn.astype(jnp.float32) / jnp.maximum(gh * gw, 1), code)
            room = steps - t >= n + v.grid_sides + 4   # <boi> <h> <w> codes, <eol>s, <eoi>
            text_ok = text_ids[None] | (boi[None] & allow_images & room)
            rows_ok = jnp.broadcast_to(size_ids[None], (batch, size_ids.shape[0]))
            cols_ok = size_ids[None] & (sides[None] * gh[:, None] <= n)
            allowed = jnp.where(
                code[:, None], image_ids[None], jnp.where(
                    eol[:, None], eol_only[None], jnp.where(
                        eoi[:, None], eoi_only[None], jnp.where(
                            (inside & (k == 0))[:, None], rows_ok, jnp.where(
                                (inside & (k == 1))[:, None], cols_ok, text_ok)))))
            allowed = jnp.where(done[:, None], eos_only[None], allowed)
            knob = {key_: jnp.where(inside, knobs["image"][key_], knobs["text"][key_])
                    for key_ in ("temperature", "top_k", "top_p")}
            tok = core.sample_logits(cond, allowed, step_key, knob["temperature"],
                                     knob["top_k"], knob["top_p"], noise=noise)
            side = tok - v.layout_offset
            new_state = (jnp.where(tok == v.boi, True, jnp.where(tok == v.eoi, False, inside)),
                         jnp.where(tok == v.boi, 0, k + inside.astype(jnp.int32)),
                         jnp.where(inside & (k == 0), side, gh),
                         jnp.where(inside & (k == 1), side, gw),
                         done | (tok == v.eos))
            return core.twin_rows(tok, guided), new_state

        def pick(logits, st, t, step_key, noise):
            if v.has_rows and codes_only:
                return pick_layout_code(logits, st, step_key, noise)
            if v.grid_sides:
                return pick_layout(logits, st, t, step_key, noise)
            # Emu3's rows outside an image: text only (images are drawn codes_only)
            st = st[:2] + st[4:]   # a square vocabulary needs no grid
            tok, (inside, codes, done) = pick_square(logits, st, t, step_key, noise)
            return tok, (inside, codes, jnp.zeros_like(codes), jnp.zeros_like(codes), done)

        def pick_square(logits, st, t, step_key, noise):
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
              jnp.asarray(state[2], jnp.int32), jnp.asarray(state[3], jnp.int32),
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
                inside, codes = st[:2]
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
