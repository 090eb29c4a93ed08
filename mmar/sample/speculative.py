"""Speculative Jacobi decoding (SJD) of images, with LANTERN's relaxed acceptance as an option.

Entry point for every image decoder (plain, SJD, ZipAR), used by `benchmarks/decoding.py`:

    codes, forward_passes = decode_images(sampler, params, caption_ids, num_codes, key,
                                          method="sjd", sjd_window=8, lantern_delta=0.1)

`method` is `sample.image_decoder` ("plain" | "sjd" | "zipar"); the other keyword options are
any `sample.*` field (sampling knobs and the decoder options below). `codes` is [B, n] int32,
`forward_passes` the model calls the whole batch needed, prefill included (plain: n). The
same path runs when `sample.image_decoder` is set in the config: `Sampler.images` dispatches
here and leaves the count in `sampler.last_forward_passes`.

SJD (Teng et al. 2024). A window of `sample.sjd_window` = L draft codes follows the accepted
prefix. One forward pass runs [last accepted code, d_1 .. d_L] on the KV cache and gives the
target distribution p_i at every window position (the guided, temperature/top-k/top-p warped
distribution plain decoding samples from). Drafts are checked in order: d_i is accepted with
probability min(1, p_i(d_i) / q_i(d_i)), q_i being the distribution d_i was drawn from; at the
first rejection a code is drawn from norm(max(0, p_i - q_i)) and the rest is dropped; when all
L are accepted a bonus code comes from p_{L+1}. That is speculative sampling, so each code is
distributed exactly as in plain decoding (tests/sample/test_speculative.py checks the joint
law). The positions left over get new drafts from this pass's p (the Jacobi update, q = that
p); positions the pass did not reach get uniform random codes (q = uniform; the official code
calls them point masses, q = 1: also exact, but accepts less). Every pass yields >= 1 code.
`sample.sjd_acceptance="greedy"` accepts a draft only when it is the argmax of p and takes
the argmax at a rejection: greedy decoding (temperature ignored), token for token.

LANTERN (Jang et al. 2024), `sample.lantern_delta` > 0: visual AR models spread probability
over many interchangeable codes, so exact acceptance is rare. The accept test uses
p(d) + sum of p over the largest nearest-first prefix of d's `sample.lantern_k` latent
neighbours whose added mass stays <= delta (the total-variation budget; delta > 1 is the
official code's LANTERN++ form, a budget of (delta - 1) * p(d)). This trades exactness for
acceptance; the residual at a rejection is SJD's. Neighbours come from the tokenizer's code
vectors (`neighbour_table`), computed once per k.

Batching: rows accept different counts, but `Decoder.decode` writes all rows at one cache
index. So the window always goes to a scratch area after the n committed slots (rewinding
`cache["index"]` there each pass), each query sees the committed prefix of its own row plus
the window causally (`visible`), and the accepted window entries are then copied, per row,
to the row's committed slots. One jitted `lax.while_loop` runs the whole image (no host
round trip per pass); it stops when every row has its n codes, and finished rows idle.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mmar import config as config_lib
from mmar.sample.decode import cfg_mix, left_pad

DECODER_FIELDS = {"image_decoder": "plain", "sjd_window": 8,
                  "sjd_acceptance": "probabilistic", "lantern_k": 6, "lantern_delta": 0.0,
                  "zipar_window": 2}


def decoder_options(sampler, **overrides) -> dict:
    """The decoder options of the sampler's config (defaults above), with overrides, checked."""
    opts = {k: sampler.cfg.get(k, v) for k, v in DECODER_FIELDS.items()}
    opts.update({k: v for k, v in overrides.items() if k in DECODER_FIELDS})
    config_lib.check_image_decoder(opts)
    return opts


def decode_images(sampler, params, caption_ids, num_codes: int, key, method: str = "plain",
                  **options) -> tuple[np.ndarray, int]:
    """(codes [B, num_codes] int32, forward passes for the batch); see the module doc."""
    codes = sampler.images(params, caption_ids, num_codes, key, image_decoder=method,
                           **options)
    return np.asarray(codes, np.int32), int(sampler.last_forward_passes)


def parallel_images(sampler, params, caption_ids, num_codes: int, key, **overrides):
    """`Sampler.images` for image_decoder != "plain": codes [B, n]; sets the pass count."""
    opts = decoder_options(sampler, **overrides)
    if sampler.target_aware:
        raise ValueError(f"sample.image_decoder={opts['image_decoder']!r} decodes raster-order "
                         "models only; a RAR decoder (data.image_order='rar') needs its target "
                         "embeddings fed, which these decoders do not do: use 'plain'")
    s = sampler.settings(**{k: v for k, v in overrides.items() if k not in DECODER_FIELDS})
    batch = image_batch(sampler, caption_ids, s)
    if opts["image_decoder"] == "zipar":
        from mmar.sample import zipar
        ids, passes = zipar.decode(sampler, params, batch, num_codes, key, opts["zipar_window"])
        sampler.last_row_forward_passes = np.full(len(caption_ids), passes)
    else:
        nbrs = None
        if opts["lantern_delta"] > 0 and opts["lantern_k"] > 0:
            nbrs = sampler_neighbours(sampler, opts["lantern_k"])
        ids, passes, rows = sjd(sampler, params, batch, num_codes, key, opts["sjd_window"],
                                opts["sjd_acceptance"] == "greedy", nbrs,
                                float(opts["lantern_delta"]))
        sampler.last_row_forward_passes = rows
    sampler.last_forward_passes = int(passes)
    return np.asarray(ids, np.int32)


# ---- shared by SJD and ZipAR -----------------------------------------------------------------

def image_batch(sampler, caption_ids, s) -> dict:
    """Left-padded `<bos> caption <boi>` rows, plus `<bos> <boi>` twins when guided (as
    `Sampler.run`), and the traced sampling knobs."""
    v = sampler.vocab
    prompts = [[v.bos, *c, v.boi] for c in caption_ids]
    guided = s["cfg_scale_image"] != 1.0
    if guided:
        prompts += [[v.bos, v.boi]] * len(caption_ids)
    tokens, positions, segments = left_pad(prompts, v.pad)
    knobs = {k: np.asarray(s[f"{k}_image"], np.int32 if k == "top_k" else np.float32)
             for k in ("temperature", "top_k", "top_p")}
    knobs["scale"] = np.float32(s["cfg_scale_image"])
    knobs["interval"] = np.asarray(s["cfg_interval_image"], np.float32)
    return {"tokens": tokens, "positions": positions, "segments": segments, "knobs": knobs,
            "guided": guided}


def guide(logits, batch: int, guided: bool, knobs, frac):
    """Rows' logits [R, T, V] -> the logits codes are drawn from, [batch, T, V]: guided
    (uncond + s * (cond - uncond)) where the raster fraction `frac` [batch, T] is inside
    `sample.cfg_interval_image`, conditional elsewhere (as plain decoding)."""
    logits = logits.astype(jnp.float32)
    cond = logits[:batch]
    if not guided:
        return cond
    return cfg_mix(cond, logits[batch:], knobs["scale"], knobs["interval"], frac)


def warped_probs(logits, allowed, temperature, top_k, top_p):
    """The distribution `decode.sample_logits` draws from, [..., V] (same top-k then top-p
    rule; temperature 0 is a point mass on the argmax)."""
    logits = jnp.where(allowed, logits, -jnp.inf)
    vocab = logits.shape[-1]
    scaled = logits / jnp.maximum(temperature, 1e-6)
    sorted_logits, order = jax.lax.top_k(scaled, vocab)
    rank = jnp.arange(vocab)
    k = jnp.where(top_k > 0, top_k, vocab)
    sorted_logits = jnp.where(rank < k, sorted_logits, -jnp.inf)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    keep = (rank < k) & ((before < top_p) | (top_p >= 1.0) | (rank == 0))
    probs = jnp.where(keep, probs, 0.0)
    probs = probs / probs.sum(-1, keepdims=True)
    probs = jnp.take_along_axis(probs, jnp.argsort(order, axis=-1), axis=-1)
    greedy = jax.nn.one_hot(jnp.argmax(logits, -1), vocab, dtype=jnp.float32)
    return jnp.where(temperature == 0, greedy, probs)


def draw(key, probs):
    """One id per distribution [..., V] (zero-probability ids never)."""
    return jax.random.categorical(key, jnp.log(probs)).astype(jnp.int32)


# ---- LANTERN neighbours ----------------------------------------------------------------------

def code_vectors(tokenizer) -> np.ndarray:
    """[num_codes, dim] latent vector of every code of a trained `ImageTokenizer`."""
    quantizer = tokenizer.model_state.merge(tokenizer.params).quantizer
    if getattr(quantizer, "depth", 1) > 1:
        raise ValueError("sample.lantern_delta: LANTERN needs one latent vector per code id; "
                         "residual (rq) codes are depth-major ids, not supported")
    return np.asarray(quantizer.codes_to_vectors(jnp.arange(tokenizer.num_codes)), np.float64)


def neighbour_table(vectors: np.ndarray, k: int, chunk: int = 256) -> np.ndarray:
    """[num_codes, k] int32: for each code, the k other codes nearest in latent space (L2),
    nearest first, ties by code index (FSQ grids have many equal distances)."""
    vectors = np.asarray(vectors, np.float64)
    n = len(vectors)
    if not 0 < k < n:
        raise config_lib.ConfigError(f"sample.lantern_k={k}: must be in [1, {n - 1}] "
                                     f"(the tokenizer has {n} codes)")
    out = np.empty((n, k), np.int32)
    for start in range(0, n, chunk):
        block = vectors[start:start + chunk]
        dist = ((block[:, None, :] - vectors[None]) ** 2).sum(-1)
        dist[np.arange(len(block)), start + np.arange(len(block))] = np.inf
        out[start:start + chunk] = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return out


def sampler_neighbours(sampler, k: int) -> np.ndarray:
    """The sampler's neighbour table for k (cached); needs `sampler.code_vectors`."""
    vectors = getattr(sampler, "code_vectors", None)
    if vectors is None:
        raise config_lib.ConfigError(
            "sample.lantern_delta > 0 needs the image tokenizer's code vectors: set "
            "sampler.code_vectors = speculative.code_vectors(tokenizer) (generate.Models does)")
    cache = sampler.__dict__.setdefault("_neighbours", {})
    if k not in cache:
        cache[k] = neighbour_table(vectors, k)
    return cache[k]


def relaxed_mass(p, drafts, nbrs, delta):
    """LANTERN's p(d) + neighbour mass. p [..., codes]; drafts [...] and nbrs [codes, k] code
    indices. The added mass is the largest nearest-first prefix sum <= the budget."""
    px = jnp.take_along_axis(p, drafts[..., None], -1)[..., 0]
    if nbrs is None:
        return px
    near = jnp.take_along_axis(p, nbrs[drafts], -1)                    # [..., k]
    csum = jnp.cumsum(near, -1)
    budget = jnp.where(delta > 1.0, (delta - 1.0) * px, delta)
    added = jnp.max(jnp.where(csum <= budget[..., None], csum, 0.0), -1)
    return px + added


def _initial_drafts(key, batch, window, num):
    """The drafts of the first window and their q: uniform random codes (SJD's default;
    tests put known drafts here)."""
    q = jnp.full((batch, window, num), 1.0 / num)
    return draw(key, q), q


def _residual(p, q):
    """Where a rejected draft's replacement is drawn from: norm(max(0, p - q)) (p if that is
    all zero, which happens only when p == q and rejection had probability 0)."""
    r = jnp.maximum(p - q, 0.0)
    total = r.sum(-1, keepdims=True)
    return jnp.where(total > 1e-12, r / jnp.maximum(total, 1e-30), p)


# ---- SJD -------------------------------------------------------------------------------------

def sjd(sampler, params, batch, n, key, window, greedy, nbrs, delta):
    """Image codes [B, n], forward passes for the batch, and per row."""
    fn = _jitted(sampler)
    ids, passes, rows = fn(params, batch["tokens"], batch["positions"], batch["segments"],
                           batch["knobs"], key, None if nbrs is None else jnp.asarray(nbrs),
                           jnp.float32(delta), n=n, window=window, guided=batch["guided"],
                           greedy=greedy)
    return np.asarray(ids), int(passes), np.asarray(rows)


def _jitted(sampler):
    if "_sjd_jit" not in sampler.__dict__:
        sampler._sjd_jit = jax.jit(functools.partial(_sjd, sampler),
                                   static_argnames=("n", "window", "guided", "greedy"))
    return sampler._sjd_jit


def _sjd(sampler, params, tokens, positions, segments, knobs, key, nbrs, delta, *, n,
         window, guided, greedy):
    # Everything below is over image codes only (logits sliced to the code ids): drafts,
    # codes and distributions are code indices; the model is fed `offset + code`.
    v, L = sampler.vocab, window
    offset, num = v.image_offset, v.num_image_codes
    model = sampler.model_state.merge(params)
    rows, plen = tokens.shape
    batch = rows // 2 if guided else rows
    allowed = jnp.ones((num,), bool)
    uniform = jnp.full((num,), 1.0 / num)
    temp = jnp.where(greedy, 0.0, knobs["temperature"])
    scratch, max_len = plen + n, plen + n + L + 1
    base = positions[:, -1] + 1                      # position of code 0, per row
    tile = (lambda x: jnp.concatenate([x, x])) if guided else (lambda x: x)

    def target(logits, first):                       # first: raster index of column 0 [batch]
        frac = (first[:, None] + jnp.arange(logits.shape[1])) / n
        g = guide(logits[..., offset:offset + num], batch, guided, knobs, frac)
        return warped_probs(g, allowed, temp, knobs["top_k"], knobs["top_p"])

    cache = model.init_cache(rows, max_len)
    logits, cache = model.decode(tokens, positions, segments, cache, sampler._modality(tokens))
    cache["segment_ids"] = cache["segment_ids"].at[:, plen:].set(1)
    k0, k1, key = jax.random.split(key, 3)
    codes = jnp.zeros((batch, n + L + 1), jnp.int32)
    codes = codes.at[:, 0].set(draw(k0, target(logits[:, -1:], jnp.zeros(batch, jnp.int32))[:, 0]))
    drafts, q = _initial_drafts(k1, batch, L, num)
    c = jnp.ones((batch,), jnp.int32)                # codes final so far; code c-1 not cached
    finished_at = jnp.full((batch,), 1 if n <= 1 else 0, jnp.int32)   # pass a row got n
    slots, win = jnp.arange(max_len), jnp.arange(L + 1)

    def cond_fn(state):
        return jnp.any(state[2] < n)

    def body(state):
        cache, codes, c, drafts, q, passes, finished_at, key = state
        key, k_acc, k_res, k_new = jax.random.split(key, 4)
        last = jnp.take_along_axis(codes, (c - 1)[:, None], 1)
        inp = jnp.concatenate([last, drafts], 1)                       # [batch, L+1]
        pos = base[:, None] + tile(c - 1)[:, None] + win                 # [rows, L+1]
        committed = (slots >= plen) & (slots < plen + tile(c)[:, None] - 1)
        visible = ((slots < plen)[None, None] | committed[:, None, :] |
                   ((slots[None, :] >= scratch) & (slots[None, :] <= scratch + win[:, None]))
                   [None])
        step_model = sampler.model_state.merge(params)
        logits, cache = step_model.decode(tile(inp) + offset, pos, jnp.ones_like(pos),
                                          dict(cache, index=jnp.int32(scratch)),
                                          jnp.ones_like(pos), visible)
        p = target(logits, c)                                      # [batch, L+1, codes]
        ratio = relaxed_mass(p[:, :L], drafts, nbrs, delta) / jnp.maximum(
            jnp.take_along_axis(q, drafts[..., None], -1)[..., 0], 1e-30)
        ok = jax.random.uniform(k_acc, (batch, L)) < jnp.minimum(ratio, 1.0)
        j = jnp.sum(jnp.cumprod(ok, axis=1), axis=1)                   # accepted drafts
        p_j = jnp.take_along_axis(p, j[:, None, None], 1)[:, 0]
        q_j = jnp.take_along_axis(jnp.concatenate([q, q[:, :1]], 1), j[:, None, None], 1)[:, 0]
        fresh = draw(k_res, jnp.where((j < L)[:, None], _residual(p_j, q_j), p_j))
        # codes c .. c+j-1 = accepted drafts, code c+j = fresh (rows already done: unchanged)
        live = c < n
        put = c[:, None] + win
        val = jnp.where(win < j[:, None], jnp.concatenate([drafts, drafts[:, :1]], 1),
                        fresh[:, None])
        keep = (win <= j[:, None]) & live[:, None]
        codes = codes.at[jnp.arange(batch)[:, None], jnp.where(keep, put, n + L + 1)].set(
            val, mode="drop")
        # commit the KV of window entries 0..j (the cached prefix grows to c+j) per row
        dst = jnp.where(tile(keep & (c[:, None] - 1 + win < n)), plen + tile(c - 1)[:, None] + win,
                        max_len)
        r_idx = jnp.arange(rows)[:, None]
        for name in ("k", "v"):
            src = cache[name][:, :, scratch:scratch + L + 1]
            cache[name] = cache[name].at[:, r_idx, dst].set(src, mode="drop")
        new_c = jnp.where(live, c + j + 1, c)
        # next drafts: Jacobi update from this pass where it reached, random beyond
        off = (new_c - c)[:, None] + jnp.arange(L)                     # offset in this window
        reach = off <= L
        p_next = jnp.take_along_axis(p, jnp.minimum(off, L)[..., None], 1)
        q_new = jnp.where(reach[..., None], p_next, uniform)
        d_new = draw(k_new, q_new)
        moved = (new_c != c)[:, None]
        drafts = jnp.where(moved, d_new, drafts)
        q = jnp.where(moved[..., None], q_new, q)
        passes = passes + 1
        finished_at = jnp.where(live & (new_c >= n), passes, finished_at)
        return cache, codes, new_c, drafts, q, passes, finished_at, key

    state = (cache, codes, c, drafts, q, jnp.int32(1), finished_at, key)
    _, codes, _, _, _, passes, finished_at, _ = jax.lax.while_loop(cond_fn, body, state)
    return codes[:, :n], passes, finished_at
