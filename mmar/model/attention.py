"""Grouped-query attention and the kernels behind `model.attention`, under one signature.

Every kernel computes causal attention within the documents of packed rows, for q [B, S, H, D]
and k, v [B, T, KVH, D]: query head h reads KV head h // (H / KVH) (the grouping of Hugging
Face `repeat_kv`), and a query sees a key when the key is not later, belongs to the same
document (segment id) and is not padding (segment 0). The layers call them all the same way,

    implementation(cfg)(q, k, v, visible: Visible) -> out [B, S, H, D],

where `Visible` carries either an explicit mask (then the plain XLA path `attend` runs: the
`xla` setting, and every attention over a KV cache) or the segment ids of packed rows (then
the configured kernel builds its own mask):

- `xla`: `attend` over the [B, S, T] mask of `attention_mask`, built once per forward and
  shared by every layer. Float32 logits and softmax.
- `blockwise`: `attend_blockwise`, one block of queries at a time against the keys before
  it, with a flash-style backward pass (`attend_saving_lse`): no [S, S] scores are kept.
- `cudnn`: `jax.nn.dot_product_attention` with cuDNN's fused kernel (GPU only).
- `splash`: the Pallas splash kernel (model/splash.py; TPU, interpret mode elsewhere).

The choices that depend on the platform are made once, by `implementation`, when the model
is built; nothing in the hot path asks which backend it runs on.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mmar.model import splash
from mmar.parallel.rules import active

IMPLEMENTATIONS = ("xla", "blockwise", "cudnn", "splash")


def attention_mask(q_segments: jax.Array, k_segments: jax.Array, q_offset=0,
                   visible: jax.Array | None = None, horizon: jax.Array | None = None
                   ) -> jax.Array:
    """Which keys each query may see: [B, S, T] bool.

    Query i sits at slot q_offset + i and key j at slot j (a KV cache writes new tokens at
    its index, so q_offset is that index). A query sees a key when the key is not later
    (causal), belongs to the same document (packing never mixes documents), and is not
    padding (segment 0). `visible` [B, S, T], when given, replaces the causal rule (decoders
    whose tokens enter the cache in another order than they condition on); the document and
    padding rules still apply. `horizon` [B, S] (next-scale decoders, model/next_scale.py):
    the last key slot each query sees, at or after its own (block-causal).
    """
    if visible is None and horizon is not None:
        k_slots = jnp.arange(k_segments.shape[1])
        visible = k_slots[None, None, :] <= horizon[:, :, None]
    elif visible is None:
        q_slots = q_offset + jnp.arange(q_segments.shape[1])
        k_slots = jnp.arange(k_segments.shape[1])
        visible = k_slots[None, None, :] <= q_slots[None, :, None]
    same_doc = q_segments[:, :, None] == k_segments[:, None, :]
    return visible & same_doc & (k_segments != 0)[:, None, :]


class Visible(NamedTuple):
    """Which keys the queries of one attention call may see; the same for every layer.

    `mask` [B, S, T] bool: explicit (`attention_mask`): the `xla` setting, and any attention
    over a KV cache. When it is given, `attend` runs whatever the setting. `segments` [B, S]:
    the segment ids of packed rows attending to themselves (T = S), from which the other
    kernels build their masks (per query block, or inside the kernel).
    """
    segments: jax.Array | None = None
    mask: jax.Array | None = None
    # [B, S]: the last key slot each query sees (block-causal next-scale rows), with the
    # block size it may exceed its own slot by (static); None: causal
    horizon: jax.Array | None = None
    extent: int = 0


# ---- xla: the plain path, and the building blocks of `blockwise` ----

def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention: q [B, S, H, D], k/v [B, T, KVH, D], mask [B, S, T].

    The G query heads of a KV head and their S queries are merged into one row dimension,
    so every matmul here and in its autodiff transpose is a (B, KV head)-batched product
    with a single contracted dimension: XLA:CPU runs those at matmul speed, where a
    [B, S, KVH, G, D] einsum contracts two dimensions in the backward pass (dK, dV) and is
    markedly slower (docs/performance.md). Logits and softmax are float32; the softmax
    subtracts a stop-gradient row max (the same gradient, one pass fewer). A query with no
    visible key (padding) gets a uniform average instead of NaN; its output is never used.
    """
    return _attend_lse_fwd(q, k, v, mask)[0]


def _heads_to_rows(x, kvh: int):
    """[B, S, H, D] -> [B, KVH, G * S, D]: the G heads of a KV head and their queries."""
    b, s, h, d = x.shape
    return x.reshape(b, s, kvh, h // kvh, d).transpose(0, 2, 3, 1, 4).reshape(b, kvh, -1, d)


def _rows_to_heads(x, s: int):
    """[B, KVH, G * S, D] -> [B, S, H, D]."""
    b, kvh, _, d = x.shape
    return x.reshape(b, kvh, -1, s, d).transpose(0, 3, 1, 2, 4).reshape(b, s, -1, d)


def _scores(q, k, mask):
    """Masked float32 logits [B, KVH, G, S, T] of `attend`, and q as merged rows."""
    return _scores_kv_major(q, k.transpose(0, 2, 1, 3), mask)


def _scores_kv_major(q, k, mask):
    """`_scores` of keys k [B, KVH, T, D] (KV heads before slots)."""
    b, s, h, d = q.shape
    kvh, t = k.shape[1], k.shape[2]
    rows = _heads_to_rows(q, kvh)
    logits = jnp.einsum("bkxd,bktd->bkxt", rows * jnp.asarray(d ** -0.5, q.dtype), k,
                        preferred_element_type=jnp.float32)
    logits = jnp.where(mask[:, None, None], logits.reshape(b, kvh, h // kvh, s, t),
                       jnp.finfo(jnp.float32).min)
    return logits, rows


def attend_cache(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """`attend` over a KV cache: q [B, S, H, D], k/v [B, KVH, T, D], mask [B, S, T].

    The cache keeps KV heads before slots, the layout of the (row, KV head)-batched matmuls,
    so a decoding step reads it as it is: with k [B, T, KVH, D] every step would transpose
    (copy) the whole cache of every layer first. k and v are cast to q's dtype (a cache may
    be kept in another). Same arithmetic as `attend` (tests/model/test_attention.py)."""
    s, t, kvh = q.shape[1], k.shape[2], k.shape[1]
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    logits, _ = _scores_kv_major(q, k, mask)
    e = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    probs = (e / jnp.sum(e, axis=-1, keepdims=True)).astype(v.dtype).reshape(
        q.shape[0], kvh, -1, t)
    return _rows_to_heads(jnp.einsum("bkxt,bktd->bkxd", probs, v), s)


@jax.custom_vjp
def attend_saving_lse(q, k, v, mask):
    """`attend` with a hand-written backward pass that keeps only q, k, v, the output and
    the log-sum-exp of each query's scores (flash attention's residuals, no [S, T] scores):
    the probabilities are recomputed from them, and the softmax gradient is one fused pass
    (ds = p * (dp - rowsum(dout * out))) instead of autodiff's chain through max, exp, sum
    and division. Same values and gradients as `attend` (tests/model/test_layers.py)."""
    return _attend_lse_fwd(q, k, v, mask)[0]


def _attend_lse_fwd(q, k, v, mask):
    """(attention output, residuals of the hand-written backward pass); `attend` itself."""
    s, t, kvh = q.shape[1], k.shape[1], k.shape[2]
    logits, _ = _scores(q, k, mask)
    top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    e = jnp.exp(logits - top)
    z = jnp.sum(e, axis=-1, keepdims=True)
    probs = (e / z).astype(v.dtype).reshape(q.shape[0], kvh, -1, t)
    out = _rows_to_heads(jnp.einsum("bkxt,bktd->bkxd", probs, v.transpose(0, 2, 1, 3)), s)
    return out, (q, k, v, mask, out, top + jnp.log(z))


def _attend_lse_bwd(res, dout):
    q, k, v, mask, out, lse = res
    s, d = q.shape[1], q.shape[3]
    kvh, t = k.shape[2], k.shape[1]
    logits, rows = _scores(q, k, mask)
    p = jnp.exp(logits - lse).reshape(q.shape[0], kvh, -1, t)   # [B, KVH, G * S, T]
    do, o = (_heads_to_rows(x, kvh).astype(jnp.float32) for x in (dout, out))
    kt, vt = (x.transpose(0, 2, 1, 3).astype(jnp.float32) for x in (k, v))
    dv = jnp.einsum("bkxt,bkxd->bktd", p, do)
    dp = jnp.einsum("bkxd,bktd->bkxt", do, vt)
    ds = p * (dp - jnp.sum(do * o, axis=-1, keepdims=True)) * d ** -0.5
    dq = _rows_to_heads(jnp.einsum("bkxt,bktd->bkxd", ds, kt), s)
    dk = jnp.einsum("bkxt,bkxd->bktd", ds, rows.astype(jnp.float32))
    return (dq.astype(q.dtype), dk.transpose(0, 2, 1, 3).astype(k.dtype),
            dv.transpose(0, 2, 1, 3).astype(v.dtype), None)


attend_saving_lse.defvjp(_attend_lse_fwd, _attend_lse_bwd)


# ---- blockwise ----

def attend_blockwise(q, k, v, segments, block: int, per_kv_head: bool = False,
                     horizon=None, extent: int = 0) -> jax.Array:
    """`attend` over packed rows, one block of `block` queries at a time.

    Query block i reads only keys [0, (i + 1) * block) (causality, decided statically, so
    about half the score FLOPs of a full [S, S] matrix are never computed), builds its mask
    from the segment ids, and differentiates through `attend_saving_lse`: no [S, S] scores
    or probabilities are kept between the passes, only q, k, v, the output and each query's
    log-sum-exp. Same result as `attend` with `attention_mask(segments, segments)`.

    `per_kv_head` (`implementation` sets it on CPU) runs the blocks one (row, KV head) at a
    time in a `lax.map`: each block's scores ([G x block, S] floats) then stay in cache
    between the masking, softmax and matmul passes instead of streaming
    [B, KVH, G, block, S] through memory (docs/performance.md). Under a multi-device mesh
    the loop would run over a sharded dimension, so the batched form is kept there (the mesh
    is entered after the model is built, so this is checked when the call is traced).

    `horizon` [B, S] (block-causal rows): query block i then reads keys up to
    (i + 1) * block + `extent`, the furthest any of its queries may look ahead.
    """
    if horizon is None:
        horizon = jnp.broadcast_to(jnp.arange(q.shape[1], dtype=jnp.int32), segments.shape)
    fn = functools.partial(_query_blocks, block=block, extent=extent)
    if per_kv_head and not _multi_device_mesh():
        return _per_kv_head(fn, q, k, v, segments, horizon)
    return fn(q, k, v, segments, horizon)


def _multi_device_mesh() -> bool:
    """Whether a mesh of more than one device is active (`rules.use_mesh`)."""
    return active() is not None and active()[0].size > 1


def _query_blocks(q, k, v, segments, horizon, block: int, extent: int = 0) -> jax.Array:
    outs = []
    for start in range(0, q.shape[1], block):
        stop = min(start + block, q.shape[1])
        keys = min(stop + extent, q.shape[1])
        mask = attention_mask(segments[:, start:stop], segments[:, :keys],
                              horizon=horizon[:, start:stop])
        outs.append(attend_saving_lse(q[:, start:stop], k[:, :keys], v[:, :keys], mask))
    return jnp.concatenate(outs, axis=1)


def _per_kv_head(fn, q, k, v, segments, horizon):
    """fn(q [1, S, G, D], k / v [1, S, 1, D], segments [1, S], horizon [1, S]) over every
    (row, KV head)."""
    b, s, h, d = q.shape
    kvh = k.shape[2]
    qh = q.reshape(b, s, kvh, h // kvh, d).transpose(0, 2, 1, 3, 4).reshape(b * kvh, 1, s,
                                                                             h // kvh, d)
    kh, vh = (x.transpose(0, 2, 1, 3).reshape(b * kvh, 1, s, 1, d) for x in (k, v))
    seg = jnp.repeat(segments, kvh, axis=0)[:, None]
    hor = jnp.repeat(horizon, kvh, axis=0)[:, None]
    out = jax.lax.map(lambda a: fn(*a), (qh, kh, vh, seg, hor))  # [B * KVH, 1, S, G, D]
    return out.reshape(b, kvh, s, h // kvh, d).transpose(0, 2, 1, 3, 4).reshape(b, s, h, d)


# ---- cudnn ----

def attend_cudnn(q, k, v, segments, horizon=None) -> jax.Array:
    """`jax.nn.dot_product_attention` with cuDNN's fused (flash) kernel: GPU only.

    Causal, plus a [B, 1, S, S] mask for packing; cuDNN wants bf16/fp16 inputs. With a
    `horizon` (block-causal rows) the whole rule is the mask (`attention_mask`)."""
    if horizon is not None:
        out = jax.nn.dot_product_attention(
            q, k, v, mask=attention_mask(segments, segments, horizon=horizon)[:, None],
            implementation="cudnn")
        return out.astype(q.dtype)
    same_doc = (segments[:, :, None] == segments[:, None, :]) & (segments != 0)[:, None, :]
    out = jax.nn.dot_product_attention(q, k, v, mask=same_doc[:, None], is_causal=True,
                                       implementation="cudnn")
    return out.astype(q.dtype)


# ---- the setting, resolved once ----

@dataclasses.dataclass(frozen=True)
class Implementation:
    """`model.attention` resolved for this platform (`implementation`); call it as
    `impl(q, k, v, visible)`. Frozen and compared by value, so equal settings give equal
    module graphs (no recompilation between models built from the same config)."""
    name: str            # one of IMPLEMENTATIONS
    block: int           # queries per block: `blockwise`, `splash`
    per_kv_head: bool    # `blockwise`: one (row, KV head) at a time (`attend_blockwise`)
    interpret: bool      # `splash`: run the Pallas kernel in interpret mode

    def packed(self, segments: jax.Array, horizon: jax.Array | None = None,
               extent: int = 0) -> Visible:
        """The `Visible` of a forward over packed rows [B, S], built once per forward: the
        [B, S, S] mask for `xla`, only the segment ids (and a block-causal `horizon`, with
        its static `extent`) for the kernels that build their own."""
        if self.name == "splash" and horizon is not None:
            raise ValueError("model.attention='splash' has no block-causal mask (next-scale "
                             "decoders, data.image_order='next_scale'): use 'xla', "
                             "'blockwise' or 'cudnn'")
        mask = attention_mask(segments, segments, horizon=horizon) if self.name == "xla" else (
            None)
        return Visible(segments, mask, horizon, extent)

    def __call__(self, q, k, v, visible: Visible) -> jax.Array:
        """Attention of q [B, S, H, D] over k, v [B, T, KVH, D] -> [B, S, H, D]: `attend`
        over `visible.mask` when there is one (k, v cast to q's dtype: a KV cache may be
        kept in another), else this setting's kernel over `visible.segments`."""
        if visible.mask is not None:
            return attend(q, k.astype(q.dtype), v.astype(q.dtype), visible.mask)
        segments = visible.segments
        if self.name == "xla":
            return attend(q, k, v, attention_mask(segments, segments,
                                                  horizon=visible.horizon))
        if self.name == "blockwise":
            return attend_blockwise(q, k, v, segments, self.block, self.per_kv_head,
                                    visible.horizon, visible.extent)
        if self.name == "cudnn":
            return attend_cudnn(q, k, v, segments, visible.horizon)
        return splash.attend_splash(q, k, v, segments, block=self.block,
                                    interpret=self.interpret)


def implementation(cfg) -> Implementation:
    """`model.attention` (and `model.attention_block`) of the model section `cfg`, with the
    platform-dependent choices made here, once, when the model is built:

    - `blockwise` runs one (row, KV head) at a time on CPU (`attend_blockwise`), where it
      keeps each block's scores in cache (measured there); elsewhere the batched form runs.
    - `splash` compiles its Pallas kernel on TPU and runs it in Pallas' interpret mode on
      other platforms: correct (the tests compare it with `xla` on CPU) but slow.
    """
    name = cfg.attention
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"model.attention must be one of {IMPLEMENTATIONS}, got {name!r}")
    backend = jax.default_backend()
    return Implementation(name, cfg.attention_block, per_kv_head=backend == "cpu",
                          interpret=backend != "tpu")
