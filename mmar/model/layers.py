"""The pieces of the mmar decoder: RMSNorm, RoPE, the attention layer, SwiGLU MLP, Embed.

The attention layer holds the projections, RoPE, QK-norm and the KV cache write; the
attention itself is one of the kernels of model/attention.py, picked by `model.attention`.

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

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mmar.model import attention
from mmar.model import lora
from mmar.model.attention import Visible
from mmar.parallel.rules import constrain


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
        return rms_norm(x, self.scale[...], self.eps, self.dtype)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float, dtype) -> jax.Array:
    """`RMSNorm`'s arithmetic on a given scale (the KV-cache step, model/kv_decode.py, holds
    its weights as arrays, not modules)."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (x32 * scale.astype(jnp.float32)).astype(dtype)


HEAD_LAYERNORM_EPS = 1e-5  # Chameleon's, fixed in its code (not its config's rms_norm_eps)


class HeadLayerNorm(nnx.Module):
    """LayerNorm over head_dim with a weight and a bias per head ([heads, head_dim]):
    Chameleon's QK-norm (`model.qk_norm_kind='head_layernorm'`). Its statistics are per
    head, as RMSNorm's; what differs is the mean subtraction and that each head has its own
    affine (the released model was trained with one per tensor-parallel shard)."""

    def __init__(self, heads: int, head_dim: int, heads_name: str, *, dtype, param_dtype,
                 rngs: nnx.Rngs):
        names = (heads_name, "head_dim")
        self.scale = param(rngs, nnx.initializers.ones, (heads, head_dim), names, param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros, (heads, head_dim), names, param_dtype)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return head_layer_norm(x, self.scale[...], self.bias[...], self.dtype)


def head_layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, dtype) -> jax.Array:
    """`HeadLayerNorm`'s arithmetic on x [..., heads, head_dim], in float32."""
    x32 = x.astype(jnp.float32)
    x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + HEAD_LAYERNORM_EPS)
    return (x32 * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(dtype)


def qk_norms(cfg, dtype, param_dtype, rngs: nnx.Rngs):
    """(q_norm, k_norm) modules of `model.qk_norm_kind`, or (None, None) without QK-norm."""
    if not cfg.qk_norm:
        return None, None
    if cfg.qk_norm_kind == "head_layernorm":
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        return (HeadLayerNorm(cfg.n_heads, cfg.head_dim, "heads", **kw),
                HeadLayerNorm(cfg.n_kv_heads, cfg.head_dim, "kv_heads", **kw))
    norm = dict(eps=cfg.norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    return RMSNorm(cfg.head_dim, **norm), RMSNorm(cfg.head_dim, **norm)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding of x [B, S, N, D] at integer `positions` [B, S] (or
    [B, S, 3]: `rope_angles`).

    Dimension i is rotated with dimension i + D/2 by angle position * theta^(-2i/D): the
    "rotate half" layout of Hugging Face Llama, so exported q/k weights need no permutation.
    Positions are explicit (not 0..S-1) because packed documents restart them.
    """
    return rotate(x, *rope_angles(positions, x.shape[-1], theta))


def rope_angles(positions: jax.Array, head_dim: int, theta: float):
    """(sin, cos) [B, S, 1, D/2] of RoPE at `positions` [B, S]: the same for every layer and
    head, so the KV-cache step (model/kv_decode.py) computes them once per call. Positions
    [B, S, 3] (sequence, row, column: mmar/model/positions.py) give frequency i the
    component i % 3; three equal components are the 1-D angles exactly."""
    half = head_dim // 2
    inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    if positions.ndim == 3:
        positions = positions[..., jnp.arange(half) % positions.shape[-1]]  # [B, S, D/2]
        angles = positions.astype(jnp.float32) * inv_freq
    else:
        angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, S, D/2]
    return jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]


def rotate(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """x [B, S, N, D] rotated by `rope_angles`' (sin, cos), in float32."""
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def project(x: jax.Array, w: jax.Array, n_contract: int = 1, out_dtype=None) -> jax.Array:
    """x [..., *c] @ w [*c, *f] -> [..., *f], computed as one [rows, k] @ [k, f] matmul.

    Same contraction as `einsum("bse,ehd->bshd")` and friends, but XLA:CPU runs a dot with
    several free dimensions on the left (batch and length) markedly slower than the same
    product of 2-D matrices (docs/performance.md). On TPU/GPU the reshapes are free; the
    merged rows keep the batch's sharding (batch is the major dimension).
    """
    lead, k = x.shape[:x.ndim - n_contract], math.prod(x.shape[x.ndim - n_contract:])
    y = jnp.dot(x.reshape(-1, k), w.reshape(k, -1), preferred_element_type=out_dtype)
    return y.reshape(*lead, *w.shape[n_contract:])


def lora_project(module: nnx.Module, name: str, x: jax.Array, dtype,
                 n_contract: int = 1) -> jax.Array:
    """`project` of x by the module's weight `name`, plus its LoRA update when it has
    adapters (model/lora.py): x @ W + lora_scale * (x @ A) @ B, every factor in `dtype`.
    x @ A is [..., rank]: the adapters cost 2 x rank x (in + out) FLOPs per token."""
    y = project(x, getattr(module, name)[...].astype(dtype), n_contract)
    a = getattr(module, name + lora.A_SUFFIX, None)
    if a is None:
        return y
    b = getattr(module, name + lora.B_SUFFIX)
    h = project(x, a[...].astype(dtype), n_contract)
    return y + module.lora_scale * project(h, b[...].astype(dtype))


class Context(NamedTuple):
    """What every block of one decoder call reads besides the residual stream, the same for
    all layers: `positions` [B, S] for RoPE (restarting at each packed document), `visible`
    (which keys each query sees) and, for Mixture-of-Transformers blocks only, `routing`
    (mot.Routing: where each token's row sits in modality order; None in a dense decoder)."""
    positions: jax.Array
    visible: Visible
    routing: Any = None


class Attention(nnx.Module):
    """Multi-head attention with GQA (n_kv_heads <= n_heads), RoPE, optional QK-norm.

    QK-norm (a norm over head_dim of each q and k head, before RoPE) is what kept
    Chameleon's mixed-modal training from diverging: it bounds the attention logits. Qwen3's
    is an RMSNorm shared by the heads, Chameleon's a LayerNorm per head (`qk_norms`).
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
        lora.add(self, cfg.lora, rngs, {"q": 1, "k": 1, "v": 1, "o": 2})
        self.q_norm, self.k_norm = qk_norms(cfg, dtype, pdt, rngs)
        self.rope_theta = cfg.rope_theta
        self.dtype = dtype
        self.kernel = attention.implementation(cfg)

    def __call__(self, x, positions, visible: Visible, cache=None):
        """x [B, S, E], positions [B, S] -> (out [B, S, E], (k, v)).

        `visible` says which keys each query sees (attention.Visible). Without a cache the
        keys are this call's own (T = S) and (k, v) are returned. With
        `cache=(k_cache, v_cache, index)` (k_cache [B, KVH, T, D], the layout of the
        attention matmuls) the new keys/values are written at slots index..index+S-1, the
        queries attend over the whole cache with `visible.mask` [B, S, T]
        (`attention.attend_cache`, whatever `model.attention` says), and (k, v) is the
        updated cache. (A dense decoder's KV-cache steps run model/kv_decode.py instead; the
        Mixture-of-Transformers blocks come here.)
        """
        dt = self.dtype
        q, k, v = (lora_project(self, name, x, dt) for name in ("q", "k", "v"))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        out, kv = self.mix(q, k, v, positions, visible, cache)
        out = lora_project(self, "o", out, dt, n_contract=2)
        return constrain(out, ("batch", "length", "act_embed")), kv

    def mix(self, q, k, v, positions, visible: Visible, cache=None):
        """RoPE, the cache write and attention of projected (and QK-normed) q, k, v
        [B, S, heads, D] -> (out [B, S, H, D] before the o projection, (k, v)).

        Shared with the Mixture-of-Transformers attention (model/mot.py), whose projections
        differ but whose attention over the whole sequence is this one.
        """
        q = constrain(apply_rope(q, positions, self.rope_theta),
                      ("batch", "length", "act_heads", None))
        k = constrain(apply_rope(k, positions, self.rope_theta),
                      ("batch", "length", "act_kv_heads", None))
        v = constrain(v, ("batch", "length", "act_kv_heads", None))
        if cache is not None:
            if visible.mask is None:
                raise ValueError("attention over a KV cache needs `visible.mask` [B, S, T]")
            k_cache, v_cache, index = cache
            k, v = (jax.lax.dynamic_update_slice(c, x.transpose(0, 2, 1, 3).astype(c.dtype),
                                                 (0, 0, index, 0))
                    for c, x in ((k_cache, k), (v_cache, v)))
            out = attention.attend_cache(q, k, v, visible.mask)
            return constrain(out, ("batch", "length", "act_heads", None)), (k, v)
        out = self.kernel(q, k, v, visible)
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
        lora.add(self, cfg.lora, rngs, {"gate": 1, "up": 1, "down": 1})
        self.dtype = jnp.dtype(cfg.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = self.dtype
        gate = lora_project(self, "gate", x, dt)
        up = lora_project(self, "up", x, dt)
        h = constrain(jax.nn.silu(gate) * up, ("batch", "length", "act_mlp"))
        out = lora_project(self, "down", h, dt)
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
