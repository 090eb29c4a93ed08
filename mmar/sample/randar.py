"""RandAR sampling: images in any order, m codes per forward pass, inpainting, outpainting.

A RandAR decoder (`data.image_order="randar"`, mmar/data/orders.py) reads an image as
`<boi> P_{o_0} c_{o_0} P_{o_1} c_{o_1} ...`: the position instruction P_j says "the next code
is the one at grid index j", and the code is predicted at P_j's slot. The sampler, not the
model, picks the order (random per row by default, `order="raster"`, or given).

Parallel decoding (RandAR, Pang et al. 2024, sec. 3.3): a query P_j depends only on the
committed pairs before it, so m queries can be asked at once. Step s feeds, at the end of
the committed cache,

    P_a c_a P_b c_b ...   (the previous step's queries with the codes drawn for them)
    Q_1 ... Q_m           (P tokens of the next m grid indices of the order)

The pairs attend causally (they are committed: their keys/values are now what a sequential
decode would hold); each query sees the committed cache and itself only, not the other
queries (`visible` of Decoder.decode), so each query is exactly a P token at the next
committed slot, and its logits are those of a single-query forward on the committed prefix
(tests/sample/test_randar.py checks this). The queries' cache slots are then rewound
(`index`) and overwritten by the pairs in the next step, as RandAR's code re-feeds them.
Positions are the training ones: P_j and c_j both at `pos(<boi>) + 1 + j`. Prefill is
merged with the first step, so an image of n codes in S steps costs S forward passes
(`RandarResult.forward_passes`); m = 1 in raster order costs n, like the raster sampler.

m follows `sample.randar.schedule`: "constant" (`sample.randar.tokens_per_step` per step)
or "cosine" (RandAR's: `sample.randar.steps` steps, 1 code first, then the count decoded
so far follows n (1 - cos(pi/2 (s+1)/S)) + 1). The step sizes are static (shapes follow
them): one jit per schedule, batch and prompt bucket, in which consecutive steps of equal
sizes run as one `lax.scan` and the others are unrolled (`runs`).

Inpainting / outpainting: `known` codes at the grid indices where `known_mask` is True go
first, as P c pairs in the prompt (every row the same number of them); only the rest is
generated and the known codes are returned exactly as given.

Classifier-free guidance as in mmar/sample/core.py: each caption row has a twin prompt
`<bos> <boi>` (plus the same known pairs) in the same batch; every query's code is drawn
from `uncond + s * (cond - uncond)` (s = `sample.cfg_scale_image`, only for codes whose
decoding fraction (codes so far / n) lies in `sample.cfg_interval_image`) and fed to both.

    sampler = RandarSampler(model_state, vocab, vocab_rows, cfg.sample)
    codes, forward_passes = sampler.images(params, caption_ids, n, key)   # as every decoder
    result = sampler.generate(params, caption_ids, n, key, order="raster", known=...,
                              randar=dict(tokens_per_step=4))   # per-call options
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from mmar import schema
from mmar.sample import core
from mmar.vocab import Vocab

SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass
class RandarResult:
    codes: np.ndarray        # [B, n] in raster (grid) layout
    orders: np.ndarray       # [B, n] the grid indices in the order they were decoded
    forward_passes: int      # decoder forward passes for the whole batch, prefill included


def group_sizes(n: int, *, schedule: str, tokens_per_step: int,
                steps: int) -> tuple[int, ...]:
    """Codes decoded at each step (they sum to n), from the options of `sample.randar`
    (`group_sizes(n, **sample_cfg.randar)`)."""
    if n <= 0:
        return ()
    if schedule == "constant":
        if tokens_per_step < 1:
            raise ValueError(f"sample.randar.tokens_per_step={tokens_per_step}: must be >= 1")
        return tuple(min(tokens_per_step, n - i) for i in range(0, n, tokens_per_step))
    if schedule != "cosine":
        raise ValueError(f"sample.randar.schedule={schedule!r}: one of {SCHEDULES}")
    if steps < 1:
        raise ValueError(f"sample.randar.steps={steps}: must be >= 1 for 'cosine'")
    sizes, done, s = [1], 1, 0
    while done < n:  # RandAR's calculate_num_query_tokens_for_parallel_decoding
        target = min(int((1.0 - math.cos(math.pi / 2.0 * (s + 1) / steps)) * n + 1), n)
        m = min(max(target - done, 1), n - done)
        sizes.append(m)
        done, s = done + m, s + 1
    return tuple(sizes)


def step_visible(rows: int, start, num_pairs: int, num_queries: int,
                 max_len: int) -> jax.Array:
    """`visible` [rows, T, max_len] for one step written at slot `start` (an int or a traced
    scalar): T = num_pairs committed tokens (causal), then num_queries queries that see the
    committed cache and themselves."""
    t = num_pairs + num_queries
    slots = start + jnp.arange(t)
    keys = jnp.arange(max_len)
    causal = keys[None, :] <= slots[:, None]
    committed = keys[None, :] < start + num_pairs
    query = (jnp.arange(t) >= num_pairs)[:, None]
    vis = jnp.where(query, committed | (keys[None, :] == slots[:, None]), causal)
    return jnp.broadcast_to(vis, (rows, t, max_len))


def runs(sizes) -> list[tuple[int, int, int]]:
    """Steps 1.. of a schedule grouped into runs of equal (previous m, m): (m_prev, m, count).
    Each run is one `lax.scan` (a constant schedule compiles three step bodies, not n)."""
    out = []
    for prev, m in zip(sizes[:-1], sizes[1:]):
        if out and out[-1][:2] == (prev, m):
            out[-1] = (prev, m, out[-1][2] + 1)
        else:
            out.append((prev, m, 1))
    return out


class RandarSampler:
    """Jitted RandAR image sampling for one model (compiled once per shape and schedule)."""

    def __init__(self, model_state, vocab: Vocab, vocab_rows: int, sample_cfg,
                 num_codes: int | None = None):
        if vocab.num_positions == 0:
            raise ValueError("RandarSampler needs a RandAR vocabulary (data.image_order="
                             "'randar': position-instruction ids)")
        self.model_state, self.vocab, self.num_codes = model_state, vocab, num_codes
        self.cfg = schema.complete(sample_cfg, section="sample")
        self.allowed = core.id_masks(vocab, vocab_rows)
        self._jitted = jax.jit(self._generate, static_argnames=("sizes", "guided", "known"))

    def settings(self, **overrides) -> dict:
        """The image warp and guidance settings and the RandAR schedule (`randar`: schedule,
        tokens_per_step, steps) of the `sample` section, with per-call overrides
        (`core.section`: `randar=dict(tokens_per_step=4)`), checked."""
        c = core.section(self.cfg, **overrides)
        s = {k: v for k, v in core.sampling_settings(c).items() if not k.endswith("_text")}
        return {**s, "randar": c.randar.to_dict()}

    def images(self, params, caption_ids, num_codes: int, key,
               **overrides) -> tuple[np.ndarray, int]:
        """(Image codes [B, num_codes] per caption, forward passes for the batch), in random
        orders and the configured schedule (as every image decoder's `images`)."""
        result = self.generate(params, caption_ids, num_codes, key, **overrides)
        return result.codes, result.forward_passes

    def generate(self, params, caption_ids, num_codes: int, key, *, order=None, known=None,
                 known_mask=None, sizes=None, **overrides) -> RandarResult:
        """Codes for each caption (ids without specials), with the forward-pass count.

        order: None (a random order per row from `key`), "raster", or grid indices [n] or
        [B, n]. known / known_mask: codes [B, n] and bool [n] or [B, n] (the same count per
        row): those codes are given (inpainting / outpainting), the rest generated.
        sizes: codes per pass, explicitly (summing to the unknown count); default: from
        the schedule (`sample.randar`, per call `randar=dict(...)`).
        """
        v, s, n, b = self.vocab, self.settings(**overrides), num_codes, len(caption_ids)
        order_key, key = jax.random.split(key)
        orders = self._orders(order, b, n, order_key)
        mask = np.zeros((b, n), bool) if known_mask is None else np.broadcast_to(
            np.asarray(known_mask, bool), (b, n))
        known = np.zeros((b, n), np.int32) if known is None else np.asarray(known, np.int32)
        counts = mask.sum(1)
        if len(set(counts.tolist())) != 1 or counts[0] >= n:
            raise ValueError(f"known_mask: every row needs the same number (< {n}) of known "
                             f"positions, got {sorted(set(counts.tolist()))}")
        k = int(counts[0])
        # Known grid indices first (raster), then the rest in each row's order.
        full = np.stack([np.concatenate([np.flatnonzero(m), o[~m[o]]])
                         for m, o in zip(mask, orders)]).astype(np.int32)
        guided = s["cfg_scale_image"] != 1.0
        prompts = core.with_twins([core.image_prompt(c, v) for c in caption_ids], [()] * b, v,
                                  guided)
        positions = [list(range(len(p))) for p in prompts]
        for i in range(len(prompts)):
            row, boi_pos = i % b, positions[i][-1]
            g = full[row, :k]
            pairs = np.stack([v.position_ids(g), v.image_ids(known[row, g])], 1).reshape(-1)
            prompts[i] += pairs.tolist()
            positions[i] += np.repeat(boi_pos + 1 + g, 2).tolist()
        tokens, pos, segments = core.left_pad(prompts, v.pad, positions)  # bucketed
        boi_pos = np.array([p[len(p) - 2 * k - 1] for p in positions])  # before the pairs
        sizes = tuple(int(m) for m in sizes) if sizes is not None else group_sizes(
            n - k, **s["randar"])
        if sum(sizes) != n - k or min(sizes) < 1:
            raise ValueError(f"sizes={sizes}: positive counts summing to {n - k} (the codes "
                             "to generate)")
        knobs = core.image_knobs(s)
        drawn = np.asarray(self._jitted(params, tokens, pos, segments, boi_pos, full[:, k:],
                                        knobs, key, sizes=sizes, guided=guided,
                                        known=(k, n)))
        codes = np.where(mask, known, 0).astype(np.int32)
        np.put_along_axis(codes, full[:, k:], v.codes_from_ids(drawn), axis=1)
        return RandarResult(codes=codes, orders=full, forward_passes=len(sizes))

    def _orders(self, order, b: int, n: int, key) -> np.ndarray:
        if order is None:
            return np.stack([np.asarray(jax.random.permutation(kk, n))
                             for kk in jax.random.split(key, b)]).astype(np.int32)
        if isinstance(order, str):
            if order != "raster":
                raise ValueError(f"order={order!r}: None (random), 'raster' or grid indices")
            order = np.arange(n)
        order = np.broadcast_to(np.asarray(order, np.int32), (b, n))
        if any(sorted(o.tolist()) != list(range(n)) for o in order):
            raise ValueError(f"order: each row must be a permutation of range({n})")
        return np.array(order)

    def _generate(self, params, tokens, positions, segments, boi_pos, order, knobs, key, *,
                  sizes, guided, known):
        """Code ids [B, n - k] for the grid indices `order` [B, n - k], step by step."""
        v, (k, n) = self.vocab, known
        rows, plen = tokens.shape
        b = rows // 2 if guided else rows
        max_len = plen + 2 * (n - k)
        code_ids = (v.image_offset, v.image_offset + v.num_image_codes)
        span = (v.image_offset, self.allowed["image"].shape[0])
        # the model computes only the codes' logits; its decode weights are prepared once
        weights = self.model_state.merge(params).decode_weights(code_ids)

        def tile(x):  # guided: the unconditional twins follow the same order and codes
            return core.twin_rows(x, guided)

        order_rows, boi = tile(order), jnp.asarray(boi_pos)

        def queries(first, m):  # P tokens (and positions) of order[first:first + m]
            g = jax.lax.dynamic_slice_in_dim(order_rows, first, m, axis=1)
            return v.position_offset + g, boi[:, None] + 1 + g

        def step(cache, step_tokens, step_pos, step_seg, start, num_pairs, first, m, step_key):
            """One forward pass at slot `start`; draws the codes of the m queries at the end."""
            model = self.model_state.merge(params)  # NNX modules do not cross traces
            cache = dict(cache, index=jnp.asarray(start, jnp.int32))
            logits, cache = model.decode(step_tokens, step_pos, step_seg, cache,
                                         core.modality(step_tokens, v),
                                         visible=step_visible(rows, start, num_pairs, m,
                                                              max_len),
                                         weights=weights, logits_ids=code_ids)
            frac = jnp.broadcast_to((k + first + jnp.arange(m)) / n, (b, m))
            cond = core.guide(logits[:, -m:], b, guided, knobs, frac)   # [b, m, V]
            flat = cond.reshape(b * m, -1)
            knob = [jnp.full((b * m,), knobs[name]) for name in ("temperature", "top_k",
                                                                 "top_p")]
            drawn = v.image_offset + core.sample_logits(flat, None, step_key, *knob,
                                                        span=span).reshape(b, m)
            return cache, drawn

        def later_step(carry, step_key, m_prev, m):
            """This step's input: the previous queries as committed P c pairs, then the
            next m queries."""
            cache, drawn_prev, first_prev, start = carry
            p_tok, p_pos = queries(first_prev, m_prev)
            pair_tok = jnp.stack([p_tok, tile(drawn_prev)], 2).reshape(rows, 2 * m_prev)
            first = first_prev + m_prev
            q_tok, q_pos = queries(first, m)
            cache, drawn = step(cache, jnp.concatenate([pair_tok, q_tok], 1),
                                jnp.concatenate([jnp.repeat(p_pos, 2, axis=1), q_pos], 1),
                                jnp.ones((rows, 2 * m_prev + m), jnp.int32), start,
                                2 * m_prev, first, m, step_key)
            return (cache, drawn, first, start + 2 * m_prev), drawn

        keys = jax.random.split(key, len(sizes))
        q_tok, q_pos = queries(0, sizes[0])   # prefill: the prompt, then the first queries
        cache = self.model_state.merge(params).init_cache(rows, max_len)
        cache, drawn = step(cache, jnp.concatenate([tokens, q_tok], 1),
                            jnp.concatenate([positions, q_pos], 1),
                            jnp.concatenate([segments, jnp.ones_like(q_tok)], 1),
                            0, plen, 0, sizes[0], keys[0])
        carry, out, done = (cache, drawn, jnp.int32(0), jnp.int32(plen)), [drawn], 1
        for m_prev, m, count in runs(sizes):
            if count == 1:
                carry, drawn = later_step(carry, keys[done], m_prev, m)
                out.append(drawn)
            else:
                carry, drawn = jax.lax.scan(
                    lambda c, kk, mp=m_prev, mm=m: later_step(c, kk, mp, mm), carry,
                    keys[done:done + count])                      # [count, B, m]
                out.append(drawn.transpose(1, 0, 2).reshape(b, count * m))
            done += count
        return jnp.concatenate(out, 1)
