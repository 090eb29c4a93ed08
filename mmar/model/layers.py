"""The pieces of the mmar decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU MLP, Embed.

Conventions shared by every layer here:

- Parameters are stored in `param_dtype` (float32 master weights) and cast to the compute
  `dtype` at use, so bfloat16 training needs no second copy of the weights.
- Every parameter names its axes logically (`embed`, `heads`, ...; see parallel/rules.py);
  the names are only metadata here: the trainer maps them onto the mesh.
- Activations are pinned with `constrain`, which does nothing outside `use_mesh`.
- Weight layouts keep heads as their own axis (q: [embed, heads, head_dim]) rather than a
  flattened [embed, heads * head_dim], so tensor parallelism can shard heads by name.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mmar.parallel.rules import active, constrain


def param(rngs: nnx.Rngs, init: Callable, shape: Sequence[int], names: Sequence[str],
          dtype) -> nnx.Param:
    """A parameter carrying logical axis names (metadata `out_sharding`).

    `eager_sharding=False`: the names are logical, not mesh axes, so nothing is placed on a
    mesh when the parameter is created; the trainer does that through parallel/rules.py.
    """
    if len(names) != len(shape):
        raise ValueError(f"{len(names)} axis names {tuple(names)} for shape {tuple(shape)}")
    init = nnx.with_partitioning(init, tuple(names), eager_sharding=False)
    return nnx.Param(init(rngs.params(), tuple(shape), dtype))


class RMSNorm(nnx.Module):
    """x / rms(x) * scale, computed in float32 (the mean of squares loses too much in bf16)."""

    def __init__(self, dim: int, *, eps: float, dtype, param_dtype, rngs: nnx.Rngs):
        self.scale = param(rngs, nnx.initializers.ones, (dim,), ("norm",), param_dtype)
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * self.scale[...].astype(jnp.float32)).astype(self.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding of x [B, S, N, D] at integer `positions` [B, S].

    Dimension i is rotated with dimension i + D/2 by angle position * theta^(-2i/D): the
    "rotate half" layout of Hugging Face Llama, so exported q/k weights need no permutation.
    Positions are explicit (not 0..S-1) because packed documents restart them.
    """
    half = x.shape[-1] // 2
    inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, S, D/2]
    sin = jnp.sin(angles)[:, :, None, :]
    cos = jnp.cos(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def project(x: jax.Array, w: jax.Array, n_contract: int = 1, out_dtype=None) -> jax.Array:
    """x [..., *c] @ w [*c, *f] -> [..., *f], computed as one [rows, k] @ [k, f] matmul.

    Same contraction as `einsum("bse,ehd->bshd")` and friends, but XLA:CPU runs a dot with
    several free dimensions on the left (batch and length) markedly slower than the same
    product of 2-D matrices: 1.6x for the forward + backward of the 25M model's MLP and
    1.3x for its output head (docs/performance.md). On TPU/GPU the reshapes are free; the
    merged rows keep the batch's sharding (batch is the major dimension).
    """
    lead, k = x.shape[:x.ndim - n_contract], math.prod(x.shape[x.ndim - n_contract:])
    y = jnp.dot(x.reshape(-1, k), w.reshape(k, -1), preferred_element_type=out_dtype)
    return y.reshape(*lead, *w.shape[n_contract:])


def attention_mask(q_segments: jax.Array, k_segments: jax.Array, q_offset=0) -> jax.Array:
    """Which keys each query may see: [B, S, T] bool.

    Query i sits at slot q_offset + i and key j at slot j (a KV cache writes new tokens at
    its index, so q_offset is that index). A query sees a key when the key is not later
    (causal), belongs to the same document (packing never mixes documents), and is not
    padding (segment 0).
    """
    q_slots = q_offset + jnp.arange(q_segments.shape[1])
    k_slots = jnp.arange(k_segments.shape[1])
    causal = k_slots[None, None, :] <= q_slots[None, :, None]
    same_doc = q_segments[:, :, None] == k_segments[:, None, :]
    return causal & same_doc & (k_segments != 0)[:, None, :]


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention: q [B, S, H, D], k/v [B, T, KVH, D], mask [B, S, T].

    Query head h reads kv head h // (H / KVH) (the grouping of Hugging Face `repeat_kv`).
    The G query heads of a KV head and their S queries are merged into one row dimension,
    so every matmul here and in its autodiff transpose is a (B, KV head)-batched product
    with a single contracted dimension: XLA:CPU runs those at matmul speed, while the
    [B, S, KVH, G, D] einsum this replaced contracted two dimensions in the backward pass
    (dK, dV) and took 1.5x as long (docs/performance.md). Logits and softmax are float32;
    the softmax subtracts a stop-gradient row max (the same gradient, one pass fewer). A
    query with no visible key (padding) gets a uniform average instead of NaN; its output
    is never used.
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
    b, s, h, d = q.shape
    t, kvh = k.shape[1], k.shape[2]
    rows = _heads_to_rows(q, kvh)
    logits = jnp.einsum("bkxd,bktd->bkxt", rows * jnp.asarray(d ** -0.5, q.dtype),
                        k.transpose(0, 2, 1, 3), preferred_element_type=jnp.float32)
    logits = jnp.where(mask[:, None, None], logits.reshape(b, kvh, h // kvh, s, t),
                       jnp.finfo(jnp.float32).min)
    return logits, rows


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


def attend_blockwise(q, k, v, segments, block: int) -> jax.Array:
    """`attend` over packed rows, one block of `block` queries at a time.

    Query block i reads only keys [0, (i + 1) * block) (causality, decided statically, so
    about half the score FLOPs of a full [S, S] matrix are never computed), builds its mask
    from the segment ids, and differentiates through `attend_saving_lse`: no [S, S] scores
    or probabilities are kept between the passes, only q, k, v, the output and each query's
    log-sum-exp. Same result as `attend` with `attention_mask(segments, segments)`.

    On a CPU without a multi-device mesh the blocks run one (row, KV head) at a time in a
    `lax.map`: each block's scores ([G x block, S] floats) then stay in cache between the
    masking, softmax and matmul passes instead of streaming [B, KVH, G, block, S] through
    memory; 1.45x faster forward + backward on the 25M model (docs/performance.md). Under a
    mesh the loop would run over a sharded dimension, so the batched form is kept there.
    """
    if jax.default_backend() == "cpu" and (active() is None or active()[0].size == 1):
        return _per_kv_head(functools.partial(_query_blocks, block=block), q, k, v, segments)
    return _query_blocks(q, k, v, segments, block)


def _query_blocks(q, k, v, segments, block: int) -> jax.Array:
    outs = []
    for start in range(0, q.shape[1], block):
        stop = min(start + block, q.shape[1])
        mask = attention_mask(segments[:, start:stop], segments[:, :stop], q_offset=start)
        outs.append(attend_saving_lse(q[:, start:stop], k[:, :stop], v[:, :stop], mask))
    return jnp.concatenate(outs, axis=1)


def _per_kv_head(fn, q, k, v, segments):
    """fn(q [1, S, G, D], k / v [1, S, 1, D], segments [1, S]) over every (row, KV head)."""
    b, s, h, d = q.shape
    kvh = k.shape[2]
    qh = q.reshape(b, s, kvh, h // kvh, d).transpose(0, 2, 1, 3, 4).reshape(b * kvh, 1, s,
                                                                             h // kvh, d)
    kh, vh = (x.transpose(0, 2, 1, 3).reshape(b * kvh, 1, s, 1, d) for x in (k, v))
    seg = jnp.repeat(segments, kvh, axis=0)[:, None]
    out = jax.lax.map(lambda a: fn(*a), (qh, kh, vh, seg))  # [B * KVH, 1, S, G, D]
    return out.reshape(b, kvh, s, h // kvh, d).transpose(0, 2, 1, 3, 4).reshape(b, s, h, d)


def attend_cudnn(q, k, v, segments) -> jax.Array:
    """`jax.nn.dot_product_attention` with cuDNN's fused (flash) kernel: GPU only.

    Causal, plus a [B, 1, S, S] mask for packing; cuDNN wants bf16/fp16 inputs.
    """
    same_doc = (segments[:, :, None] == segments[:, None, :]) & (segments != 0)[:, None, :]
    out = jax.nn.dot_product_attention(q, k, v, mask=same_doc[:, None], is_causal=True,
                                       implementation="cudnn")
    return out.astype(q.dtype)


ATTENTION = ("xla", "blockwise", "cudnn", "splash")


class Attention(nnx.Module):
    """Multi-head attention with GQA (n_kv_heads <= n_heads), RoPE, optional QK-norm.

    QK-norm (RMSNorm over head_dim of each q and k head, before RoPE) is what kept
    Chameleon's mixed-modal training from diverging: it bounds the attention logits.
    """

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        d, h, kvh, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        dtype, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        init = nnx.initializers.normal(cfg.init_std)
        # Residual-stream outputs scaled down with depth (GPT-2 / nanoGPT) so the sum of
        # 2 * n_layers branches starts at the same scale whatever the depth.
        out_init = nnx.initializers.normal(cfg.init_std / (2 * cfg.n_layers) ** 0.5)
        self.q = param(rngs, init, (d, h, hd), ("embed", "heads", "head_dim"), pdt)
        self.k = param(rngs, init, (d, kvh, hd), ("embed", "kv_heads", "head_dim"), pdt)
        self.v = param(rngs, init, (d, kvh, hd), ("embed", "kv_heads", "head_dim"), pdt)
        self.o = param(rngs, out_init, (h, hd, d), ("heads", "head_dim", "embed"), pdt)
        if cfg.qk_norm:
            norm = dict(eps=cfg.norm_eps, dtype=dtype, param_dtype=pdt, rngs=rngs)
            self.q_norm, self.k_norm = RMSNorm(hd, **norm), RMSNorm(hd, **norm)
        else:
            self.q_norm = self.k_norm = None
        self.rope_theta = cfg.rope_theta
        self.dtype = dtype
        self.impl = cfg.get("attention", "xla")
        self.block = cfg.get("attention_block", 512)

    def __call__(self, x, positions, mask, cache=None, segments=None):
        """x [B, S, E], positions [B, S], mask [B, S, T] -> (out [B, S, E], (k, v)).

        Without a cache, T = S and (k, v) are this call's keys/values; `segments` [B, S]
        (the row's segment ids) lets the `blockwise` and `cudnn` implementations build
        their masks themselves (then `mask` may be None). With
        `cache=(k_cache, v_cache, index)` (k_cache [B, T, KVH, D]) the new keys/values are
        written at slots index..index+S-1, the queries attend over the whole cache with
        `mask` (always the plain XLA path), and (k, v) is the updated cache.
        """
        dt = self.dtype
        q = project(x, self.q[...].astype(dt))
        k = project(x, self.k[...].astype(dt))
        v = project(x, self.v[...].astype(dt))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        out, kv = self.mix(q, k, v, positions, mask, cache, segments)
        out = project(out, self.o[...].astype(dt), n_contract=2)
        return constrain(out, ("batch", "length", "act_embed")), kv

    def mix(self, q, k, v, positions, mask, cache=None, segments=None):
        """RoPE, the cache write and attention of projected (and QK-normed) q, k, v
        [B, S, heads, D] -> (out [B, S, H, D] before the o projection, (k, v)).

        Shared with the Mixture-of-Transformers attention (model/mot.py), whose projections
        differ but whose attention over the whole sequence is this one.
        """
        dt = self.dtype
        q = constrain(apply_rope(q, positions, self.rope_theta),
                      ("batch", "length", "act_heads", None))
        k = constrain(apply_rope(k, positions, self.rope_theta),
                      ("batch", "length", "act_kv_heads", None))
        v = constrain(v, ("batch", "length", "act_kv_heads", None))
        if cache is not None:
            k_cache, v_cache, index = cache
            k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, index, 0, 0))
            v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, index, 0, 0))
        if cache is None and segments is not None and self.impl == "blockwise":
            out = attend_blockwise(q, k, v, segments, self.block)
        elif cache is None and segments is not None and self.impl == "cudnn":
            out = attend_cudnn(q, k, v, segments)
        elif cache is None and segments is not None and self.impl == "splash":
            from mmar.model.splash import attend_splash  # Pallas: imported when used
            out = attend_splash(q, k, v, segments, block=self.block)
        else:
            out = attend(q, k.astype(dt), v.astype(dt), mask)
        return constrain(out, ("batch", "length", "act_heads", None)), (k, v)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), as Llama."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        d, m, pdt = cfg.d_model, cfg.mlp_dim, jnp.dtype(cfg.param_dtype)
        init = nnx.initializers.normal(cfg.init_std)
        out_init = nnx.initializers.normal(cfg.init_std / (2 * cfg.n_layers) ** 0.5)
        self.gate = param(rngs, init, (d, m), ("embed", "mlp"), pdt)
        self.up = param(rngs, init, (d, m), ("embed", "mlp"), pdt)
        self.down = param(rngs, out_init, (m, d), ("mlp", "embed"), pdt)
        self.dtype = jnp.dtype(cfg.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = self.dtype
        gate = project(x, self.gate[...].astype(dt))
        up = project(x, self.up[...].astype(dt))
        h = constrain(jax.nn.silu(gate) * up, ("batch", "length", "act_mlp"))
        out = project(h, self.down[...].astype(dt))
        return constrain(out, ("batch", "length", "act_embed"))


class Embed(nnx.Module):
    """Token embedding table [vocab, embed]; `attend` reuses it as the tied output head."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.embedding = param(rngs, nnx.initializers.normal(cfg.init_std),
                               (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                               jnp.dtype(cfg.param_dtype))
        self.dtype = jnp.dtype(cfg.dtype)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        # Look up in a whole (all-gathered) table, as FSDP does for every weight: SPMD
        # cannot partition a gather from a sharded table into batch-sharded rows, and would
        # replicate the [B, S, E] result instead.
        table = constrain(self.embedding[...], (None, None))
        x = jnp.take(table, tokens, axis=0).astype(self.dtype)
        return constrain(x, ("batch", "length", "act_embed"))

    def attend(self, x: jax.Array) -> jax.Array:
        """Logits x @ E^T, accumulated and returned in float32."""
        logits = project(x, self.embedding[...].astype(self.dtype).T,
                         out_dtype=jnp.float32)
        return constrain(logits, ("batch", "length", "act_vocab"))
