"""Speculative Jacobi decoding (SJD) of images, with LANTERN's relaxed acceptance as an option.

    sampler = SJDSampler(model_state, vocab, vocab_rows, cfg.sample, code_vectors=vectors)
    codes, forward_passes = sampler.images(params, caption_ids, n, key, sjd=dict(window=8))

Options: `sample.sjd.{window, acceptance, lantern_k, lantern_delta}` (mmar/schema.py), or
per call as a partial section, `sjd=dict(...)`. `forward_passes` counts the model calls the
whole batch needed, prefill included; `images_rows` also gives the pass at which each row
had its n codes. Raster-order models only (mmar/sample/dispatch.py).

SJD (Teng et al. 2024). A window of `sample.sjd.window` = L draft codes follows the accepted
prefix. One forward pass runs [last accepted code, d_1 .. d_L] on the KV cache and gives the
target distribution p_i at every window position (the guided, temperature/top-k/top-p warped
distribution plain decoding samples from: mmar/sample/core.py `warped_probs`). Drafts are
checked in order: d_i is accepted with probability min(1, p_i(d_i) / q_i(d_i)), q_i being the
distribution d_i was drawn from; at the first rejection a code is drawn from
norm(max(0, p_i - q_i)) and the rest is dropped; when all L are accepted a bonus code comes
from p_{L+1}. That is speculative sampling, so each code is distributed exactly as in plain
decoding (tests/sample/test_sjd.py checks the joint law). The positions left over get new
drafts from this pass's p (the Jacobi update, q = that p); positions the pass did not reach
get uniform random codes (q = uniform; the official code calls them point masses, q = 1:
also exact, but accepts less). Every pass yields >= 1 code.
`sample.sjd.acceptance="greedy"` accepts a draft only when it is the argmax of p and takes
the argmax at a rejection: greedy decoding (temperature ignored), token for token.

LANTERN (Jang et al. 2024), `sample.sjd.lantern_delta` > 0: visual AR models spread probability
over many interchangeable codes, so exact acceptance is rare. The accept test uses
p(d) + sum of p over the largest nearest-first prefix of d's `sample.sjd.lantern_k` latent
neighbours whose added mass stays <= delta (the total-variation budget; delta > 1 is the
official code's LANTERN++ form, a budget of (delta - 1) * p(d)). This trades exactness for
acceptance; the residual at a rejection is SJD's. Neighbours come from the tokenizer's code
vectors (`code_vectors`, given to the sampler), one table per k (`neighbour_table`).

Batching: rows accept different counts, but `Decoder.decode` writes all rows at one cache
index. So the window always goes to a scratch area after the n committed slots (rewinding
`cache["index"]` there each pass), each query sees the committed prefix of its own row plus
the window causally (`visible`), and the accepted window entries are then copied, per row,
to the row's committed slots. One jitted `lax.while_loop` runs the whole image (no host
round trip per pass); it stops when every row has its n codes, and finished rows idle.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmar import schema
from mmar.sample import core
from mmar.vocab import Vocab


def code_vectors(tokenizer) -> np.ndarray:
    """[num_codes, dim] latent vector of every code of a trained runtime image tokenizer."""
    model = tokenizer.model_state.merge(tokenizer.params)
    # mmar's autoencoder has `quantizer`; an imported VQ (Chameleon, Emu3) `quantize`
    quantizer = model.quantizer if hasattr(model, "quantizer") else model.quantize
    if getattr(quantizer, "depth", 1) > 1:
        raise ValueError("sample.sjd.lantern_delta: LANTERN needs one latent vector per code id; "
                         "codes several per position (RQ, factorised FSQ) are not supported")
    return np.asarray(quantizer.codes_to_vectors(jnp.arange(tokenizer.num_codes)), np.float64)


def neighbour_table(vectors: np.ndarray, k: int, chunk: int = 256) -> np.ndarray:
    """[num_codes, k] int32: for each code, the k other codes nearest in latent space (L2),
    nearest first, ties by code index (FSQ grids have many equal distances)."""
    vectors = np.asarray(vectors, np.float64)
    n = len(vectors)
    if not 0 < k < n:
        raise schema.ConfigError(f"sample.sjd.lantern_k={k}: must be in [1, {n - 1}] "
                                     f"(the tokenizer has {n} codes)")
    out = np.empty((n, k), np.int32)
    for start in range(0, n, chunk):
        block = vectors[start:start + chunk]
        dist = ((block[:, None, :] - vectors[None]) ** 2).sum(-1)
        dist[np.arange(len(block)), start + np.arange(len(block))] = np.inf
        out[start:start + chunk] = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return out


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
    return core.draw(key, q), q


def _residual(p, q):
    """Where a rejected draft's replacement is drawn from: norm(max(0, p - q)) (p if that is
    all zero, which happens only when p == q and rejection had probability 0)."""
    r = jnp.maximum(p - q, 0.0)
    total = r.sum(-1, keepdims=True)
    return jnp.where(total > 1e-12, r / jnp.maximum(total, 1e-30), p)


class SJDSampler:
    """SJD / LANTERN image decoding for one model: its jitted loop (compiled once per shape)
    and its LANTERN neighbour tables (one per k)."""

    def __init__(self, model_state, vocab: Vocab, vocab_rows: int, sample_cfg,
                 code_vectors: np.ndarray | None = None):
        self.model_state, self.vocab = model_state, vocab
        self.cfg = schema.complete(sample_cfg, section="sample")
        self.code_vectors = code_vectors
        self._neighbours = {}
        self._jitted = jax.jit(self._decode, static_argnames=("n", "window", "guided",
                                                              "greedy"))

    def settings(self, **overrides) -> dict:
        """The warp and guidance settings and the SJD options (`sjd`: window, acceptance,
        lantern_k, lantern_delta) of the `sample` section, with per-call overrides
        (`core.section`: `sjd=dict(window=4)`), checked."""
        c = core.section(self.cfg, **overrides)
        return {**core.sampling_settings(c), "sjd": c.sjd.to_dict()}

    def neighbours(self, k: int) -> np.ndarray:
        """The LANTERN neighbour table for k, from the code vectors (computed once per k)."""
        if self.code_vectors is None:
            raise schema.ConfigError(
                "sample.sjd.lantern_delta > 0 needs the image tokenizer's code vectors: "
                "SJDSampler(code_vectors=sjd.code_vectors(tokenizer))")
        if k not in self._neighbours:
            self._neighbours[k] = neighbour_table(self.code_vectors, k)
        return self._neighbours[k]

    def images(self, params, caption_ids, num_codes: int, key,
               **overrides) -> tuple[np.ndarray, int]:
        """(Image codes [B, num_codes] int32, forward passes for the batch)."""
        codes, passes, _ = self.images_rows(params, caption_ids, num_codes, key, **overrides)
        return codes, passes

    def images_rows(self, params, caption_ids, num_codes: int, key, **overrides):
        """`images`, plus [B] the forward pass at which each row had its codes."""
        s = self.settings(**overrides)
        opts = s["sjd"]
        nbrs = None
        if opts["lantern_delta"] > 0 and opts["lantern_k"] > 0:
            nbrs = jnp.asarray(self.neighbours(opts["lantern_k"]))
        batch = core.image_batch(caption_ids, self.vocab, s)
        codes, passes, rows = self._jitted(
            params, batch["tokens"], batch["positions"], batch["segments"], batch["knobs"],
            key, nbrs, jnp.float32(opts["lantern_delta"]), n=num_codes,
            window=opts["window"], guided=batch["guided"],
            greedy=opts["acceptance"] == "greedy")
        return np.asarray(codes, np.int32), int(passes), np.asarray(rows)

    def _decode(self, params, tokens, positions, segments, knobs, key, nbrs, delta, *, n,
                window, guided, greedy):
        # Everything below is over image codes only (logits sliced to the code ids): drafts,
        # codes and distributions are code indices; the model is fed `offset + code`.
        v, L = self.vocab, window
        offset, num = v.image_offset, v.num_image_codes
        model = self.model_state.merge(params)
        rows, plen = tokens.shape
        batch = rows // 2 if guided else rows
        allowed = jnp.ones((num,), bool)
        uniform = jnp.full((num,), 1.0 / num)
        temp = jnp.where(greedy, 0.0, knobs["temperature"])
        scratch, max_len = plen + n, plen + n + L + 1
        base = positions[:, -1] + 1                      # position of code 0, per row

        def tile(x):
            return core.twin_rows(x, guided)

        def target(logits, first):                       # first: raster index of column 0
            frac = (first[:, None] + jnp.arange(logits.shape[1])) / n
            g = core.guide(logits, batch, guided, knobs, frac)
            return core.warped_probs(g, allowed, temp, knobs["top_k"], knobs["top_p"])

        code_ids = (offset, offset + num)                # the model computes codes' logits only
        weights = model.decode_weights(code_ids)         # once, outside the loop
        cache = model.init_cache(rows, max_len)
        logits, cache = model.decode(tokens, positions, segments, cache,
                                     core.modality(tokens, v), weights=weights,
                                     logits_ids=code_ids)
        cache["segment_ids"] = cache["segment_ids"].at[:, plen:].set(1)
        k0, k1, key = jax.random.split(key, 3)
        codes = jnp.zeros((batch, n + L + 1), jnp.int32)
        first = target(logits[:, -1:], jnp.zeros(batch, jnp.int32))[:, 0]
        codes = codes.at[:, 0].set(core.draw(k0, first))
        drafts, q = _initial_drafts(k1, batch, L, num)
        c = jnp.ones((batch,), jnp.int32)                # codes final so far; c-1 not cached
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
            step_model = self.model_state.merge(params)
            logits, cache = step_model.decode(tile(inp) + offset, pos, jnp.ones_like(pos),
                                              dict(cache, index=jnp.int32(scratch)),
                                              jnp.ones_like(pos), visible, weights=weights,
                                              logits_ids=code_ids)
            p = target(logits, c)                                      # [batch, L+1, codes]
            ratio = relaxed_mass(p[:, :L], drafts, nbrs, delta) / jnp.maximum(
                jnp.take_along_axis(q, drafts[..., None], -1)[..., 0], 1e-30)
            ok = jax.random.uniform(k_acc, (batch, L)) < jnp.minimum(ratio, 1.0)
            j = jnp.sum(jnp.cumprod(ok, axis=1), axis=1)                   # accepted drafts
            p_j = jnp.take_along_axis(p, j[:, None, None], 1)[:, 0]
            q_j = jnp.take_along_axis(jnp.concatenate([q, q[:, :1]], 1), j[:, None, None],
                                      1)[:, 0]
            fresh = core.draw(k_res, jnp.where((j < L)[:, None], _residual(p_j, q_j), p_j))
            # codes c .. c+j-1 = accepted drafts, code c+j = fresh (rows already done: kept)
            live = c < n
            put = c[:, None] + win
            val = jnp.where(win < j[:, None], jnp.concatenate([drafts, drafts[:, :1]], 1),
                            fresh[:, None])
            keep = (win <= j[:, None]) & live[:, None]
            codes = codes.at[jnp.arange(batch)[:, None], jnp.where(keep, put, n + L + 1)].set(
                val, mode="drop")
            # commit the KV of window entries 0..j (the cached prefix grows to c+j) per row
            dst = jnp.where(tile(keep & (c[:, None] - 1 + win < n)),
                            plen + tile(c - 1)[:, None] + win, max_len)
            r_idx = jnp.arange(rows)[:, None]
            for name in ("k", "v"):                      # per layer [rows, KVH, slots, D]
                cache[name] = tuple(
                    c.at[r_idx, :, dst].set(c[:, :, scratch:scratch + L + 1].transpose(
                        0, 2, 1, 3), mode="drop") for c in cache[name])
            new_c = jnp.where(live, c + j + 1, c)
            # next drafts: Jacobi update from this pass where it reached, random beyond
            off = (new_c - c)[:, None] + jnp.arange(L)                     # offset in window
            reach = off <= L
            p_next = jnp.take_along_axis(p, jnp.minimum(off, L)[..., None], 1)
            q_new = jnp.where(reach[..., None], p_next, uniform)
            d_new = core.draw(k_new, q_new)
            moved = (new_c != c)[:, None]
            drafts = jnp.where(moved, d_new, drafts)
            q = jnp.where(moved[..., None], q_new, q)
            passes = passes + 1
            finished_at = jnp.where(live & (new_c >= n), passes, finished_at)
            return cache, codes, new_c, drafts, q, passes, finished_at, key

        state = (cache, codes, c, drafts, q, jnp.int32(1), finished_at, key)
        _, codes, _, _, _, passes, finished_at, _ = jax.lax.while_loop(cond_fn, body, state)
        return codes[:, :n], passes, finished_at
