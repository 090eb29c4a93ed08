"""The dense decoder's KV-cache step, laid out for decoding speed (the samplers' inner loop).

A decoding step moves one token per row through every layer: the matmuls are thin (a few
rows), so on a CPU the step costs about as much in the number of operations and in bytes
copied as in arithmetic. The training forward (`Decoder.__call__`, model/layers.py) is laid
out for sharding and autodiff instead; this module computes the same function with:

* weights prepared once per sampler call, outside its loop (`prepare`): q, k and v
  concatenated into one [E, (H + 2 KVH) D] matrix, gate and up into one [E, 2 M] (one matmul
  each instead of three and two), every weight cast to the compute dtype once (not at every
  use), each layer's weights its own array, and the output head restricted to the ids the
  caller draws from (`logits_ids`: inside an image only the image codes, contiguous ids),
  so the head costs E x codes instead of E x vocabulary;
* one KV cache array per layer, [B, KVH, T, D] (KV heads before slots, as the attention
  matmuls read it: no transpose of the cache per step), updated in place
  (`dynamic_update_slice` on a buffer the sampler's loop carries); a scan over stacked
  layers would instead read each layer's cache as a slice and write all of them back as
  a new stacked array, a copy of the whole cache per step;
* RoPE's sin / cos computed once per call for all layers, and the layer loop unrolled
  (a Python loop: decoders here are a few to a few dozen layers).

The checkpoint format does not change (the fused matrices exist only inside a sampler
call). `Decoder.decode` runs this for dense decoders, so every test of the KV cache (equal to
the full forward, left padding, out-of-order `visible` masks, sharded == one device) covers
it; Mixture-of-Transformers decoders keep their block path.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mmar.model import lora
from mmar.model.attention import attend_cache
from mmar.model.layers import head_layer_norm, project, rms_norm, rotate


@dataclasses.dataclass(frozen=True)
class Spec:
    """The static shape of a dense decoder, for the step."""
    n_heads: int
    n_kv_heads: int
    head_dim: int
    mlp_dim: int
    eps: float
    rope_theta: float
    dtype: jnp.dtype
    qk_norm: bool
    qk_norm_kind: str = "rms"   # or "head_layernorm" (layers.HeadLayerNorm)
    swin: bool = False          # model.norm_placement == "swin"


class Layer(NamedTuple):
    attn_norm: jax.Array     # [E] float32
    qkv: jax.Array           # [E, (H + 2 KVH) * D]
    q_norm: jax.Array        # [D] float32 ([H, D] head_layernorm), or [0] without QK-norm
    k_norm: jax.Array
    q_bias: jax.Array        # head_layernorm: [H, D] float32, else [0]
    k_bias: jax.Array
    o: jax.Array             # [H * D, E]
    mlp_norm: jax.Array      # [E] float32
    gate_up: jax.Array       # [E, 2 M]
    down: jax.Array          # [M, E]


class Weights(NamedTuple):
    embedding: jax.Array           # [V, E] as stored (looked up, then cast, as `Embed`)
    target_embed: jax.Array | None  # RAR target embeddings [num_targets, E], or None
    layers: tuple                  # Layer per block
    final_norm: jax.Array          # [E] float32
    head: jax.Array                # [E, V'] compute dtype: the `logits_ids` columns


def prepare(model, spec: Spec, logits_ids: tuple[int, int] | None = None) -> Weights:
    """The decode weights of a dense `Decoder` (values already merged): see the module doc.
    `logits_ids=(start, stop)` keeps only those output ids: `decode`'s logits are then
    [..., stop - start], column j being id start + j. LoRA adapters (model/lora.py) are
    folded into their weights here (W + alpha / rank * A @ B, `lora.folded`), so the step
    itself costs what it costs without them."""
    dt, b = spec.dtype, model.blocks
    n_layers = b.attn.q.shape[0]
    q, k, v, o = (lora.folded(b.attn, name) for name in ("q", "k", "v", "o"))
    gate, up, down = (lora.folded(b.mlp, name) for name in ("gate", "up", "down"))

    def flat(w):  # [L, E, heads, D] -> [L, E, heads * D]
        return w.reshape(n_layers, w.shape[1], -1)

    qkv = jnp.concatenate([flat(q), flat(k), flat(v)], -1).astype(dt)
    gate_up = jnp.concatenate([gate, up], -1).astype(dt)
    o = o.reshape(n_layers, -1, o.shape[-1]).astype(dt)
    down = down.astype(dt)
    f32 = lambda x: x[...].astype(jnp.float32)  # noqa: E731
    none = jnp.zeros((n_layers, 0), jnp.float32)
    q_norm = f32(b.attn.q_norm.scale) if spec.qk_norm else none
    k_norm = f32(b.attn.k_norm.scale) if spec.qk_norm else none
    biased = spec.qk_norm and spec.qk_norm_kind == "head_layernorm"
    q_bias = f32(b.attn.q_norm.bias) if biased else none
    k_bias = f32(b.attn.k_norm.bias) if biased else none
    layers = tuple(Layer(f32(b.attn_norm.scale)[i], qkv[i], q_norm[i], k_norm[i], q_bias[i],
                         k_bias[i], o[i], f32(b.mlp_norm.scale)[i], gate_up[i], down[i])
                   for i in range(n_layers))
    head = (model.embed.embedding[...].T if model.head is None else model.head[...])
    if logits_ids is not None:
        head = head[:, logits_ids[0]:logits_ids[1]]
    target = None if model.target_embed is None else model.target_embed[...]
    return Weights(model.embed.embedding[...], target, layers,
                   f32(model.final_norm.scale), head.astype(dt))


def run(spec: Spec, w: Weights, x, sin, cos, mask, ks, vs, index):
    """Every layer over embedded tokens x [B, S, E] against the per-layer caches `ks`, `vs`
    ([B, KVH, T, D] each), the new keys and values written at slots index.. -> (logits
    [B, S, V'] float32, new ks, new vs)."""
    b, s, _ = x.shape
    h, kvh, d, eps, dt = spec.n_heads, spec.n_kv_heads, spec.head_dim, spec.eps, spec.dtype
    new_ks, new_vs = [], []
    for layer, k_cache, v_cache in zip(w.layers, ks, vs):
        qkv = project(x if spec.swin else rms_norm(x, layer.attn_norm, eps, dt), layer.qkv)
        qkv = qkv.reshape(b, s, h + 2 * kvh, d)
        q, k, v = qkv[:, :, :h], qkv[:, :, h:h + kvh], qkv[:, :, h + kvh:]
        if spec.qk_norm and spec.qk_norm_kind == "head_layernorm":
            q = head_layer_norm(q, layer.q_norm, layer.q_bias, dt)
            k = head_layer_norm(k, layer.k_norm, layer.k_bias, dt)
        elif spec.qk_norm:
            q, k = rms_norm(q, layer.q_norm, eps, dt), rms_norm(k, layer.k_norm, eps, dt)
        q, k = rotate(q, sin, cos), rotate(k, sin, cos)
        k_cache, v_cache = (jax.lax.dynamic_update_slice(
            c, new.transpose(0, 2, 1, 3).astype(c.dtype), (0, 0, index, 0))
            for c, new in ((k_cache, k), (v_cache, v)))
        out = attend_cache(q, k_cache, v_cache, mask)
        attn = project(out.reshape(b, s, h * d), layer.o)
        x = x + (rms_norm(attn, layer.attn_norm, eps, dt) if spec.swin else attn)
        gate_up = project(x if spec.swin else rms_norm(x, layer.mlp_norm, eps, dt),
                          layer.gate_up)
        gate, up = gate_up[..., :spec.mlp_dim], gate_up[..., spec.mlp_dim:]
        mlp = project(jax.nn.silu(gate) * up, layer.down)
        x = x + (rms_norm(mlp, layer.mlp_norm, eps, dt) if spec.swin else mlp)
        new_ks.append(k_cache)
        new_vs.append(v_cache)
    logits = project(rms_norm(x, w.final_norm, eps, dt), w.head, out_dtype=jnp.float32)
    return logits, tuple(new_ks), tuple(new_vs)


def embed(spec: Spec, w: Weights, tokens, targets):
    """Token embeddings (plus RAR target embeddings), as `Decoder._embed` for dense models."""
    x = jnp.take(w.embedding, tokens, axis=0).astype(spec.dtype)
    if w.target_embed is not None:
        x = x + jnp.take(w.target_embed, targets, axis=0).astype(x.dtype)
    return x
