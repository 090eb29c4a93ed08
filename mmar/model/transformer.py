"""The mmar decoder: a Llama-family transformer over the unified text + image token space.

    tokens -> Embed -> n_layers x Block -> RMSNorm -> logits (tied embedding or own head)
    Block: x + Attention(RMSNorm(x)), then x + MLP(RMSNorm(x))
           (norm_placement='swin': x + RMSNorm(Attention(x)), then x + RMSNorm(MLP(x)))

`model.mot.enabled=True` swaps Block for model/mot.py's MoTBlock (per-modality weights, global
attention); the call then needs the `modality` array, and the residual stream runs in
modality order from the embedding to the final norm. `model.num_targets` > 0 (RAR, see
mmar/data/orders.py) adds a target embedding; the call then needs `targets`.

The blocks are one stacked module (every block parameter has a leading `layers` axis),
created with `nnx.vmap` and run with `nnx.scan`, so XLA compiles one block whatever the
depth. `scan_layers=False` (MaxText's flag of the same name) unrolls that scan in the
training forward: the same parameters, compile time growing with depth, and no stacking
and slicing of every layer's saved activations (a faster CPU step, docs/performance.md).
`remat="full"` recomputes each block's activations in the backward pass, keeping only the
residual stream between blocks.

`__call__` is the training/eval forward over packed rows; `init_cache` and `decode` are the
static-shape KV cache path used by the sampler (prefill and single steps alike). A dense
decoder's `decode` runs model/kv_decode.py (fused projections, per-layer caches updated in
place, weights prepared once per sampler call by `decode_weights`); a Mixture-of-Transformers
decoder's runs its blocks. The blocks' paths build one `layers.Context` (positions, which
keys each query sees, the MoT routing) that every block reads, and share the embedding
(`_embed`) and the output head (`_logits`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mmar import schema
from mmar.model import attention, kv_decode
from mmar.model import mot as mot_lib
from mmar.model import next_scale
from mmar.model import positions as positions_lib
from mmar.model.attention import Visible, attention_mask
from mmar.model.layers import (MLP, Attention, Context, Embed, RMSNorm, param, project,
                               rope_angles)
from mmar.parallel.rules import constrain

# "full" keeps only the residual stream between blocks; "dots" also keeps every matmul output
# (less recompute, more memory: the usual middle ground on TPUs).
REMAT_POLICIES = {"full": jax.checkpoint_policies.nothing_saveable,
                  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
STACKED = {nnx.PARTITION_NAME: "layers"}  # stacked params get the `layers` name at axis 0


def validate(cfg: ml_collections.ConfigDict) -> None:
    """The checks of a complete `model` section `cfg`: each field's own rule (mmar/schema.py)
    and the structural ones a built model needs (a vocabulary, GQA groups, RoPE pairs, at
    least two MoT modalities); raises ValueError naming the first bad `model.<field>`.
    `Decoder` runs it before building anything."""
    schema.check(cfg, section="model")
    if cfg.vocab_size <= 0:
        raise ValueError(f"model.vocab_size must be a positive int, got {cfg.vocab_size!r} "
                         "(0 is derived by mmar.config.validate)")
    if cfg.n_heads % cfg.n_kv_heads:
        raise ValueError(f"model.n_kv_heads={cfg.n_kv_heads} must divide "
                         f"model.n_heads={cfg.n_heads} (grouped-query attention)")
    if cfg.head_dim % 2:
        raise ValueError(f"model.head_dim={cfg.head_dim} must be even (RoPE rotates pairs)")
    if cfg.mot.enabled and (cfg.norm_placement != "pre" or (
            cfg.qk_norm and cfg.qk_norm_kind != "rms")):
        field = "norm_placement" if cfg.norm_placement != "pre" else "qk_norm_kind"
        raise ValueError(f"model.{field}={cfg[field]!r}: Mixture-of-Transformers blocks "
                         "(model.mot.enabled) have pre-norm and RMS QK-norm only")
    if cfg.lora.rank and cfg.mot.enabled:
        raise schema.ConfigError(f"model.lora.rank={cfg.lora.rank}: LoRA adapters are built for the "
                         "dense blocks only, not with model.mot.enabled=True (set "
                         "model.lora.rank=0)")
    if cfg.mot.num_modalities < 2:
        raise ValueError(f"model.mot.num_modalities must be an int >= 2, "
                         f"got {cfg.mot.num_modalities!r}")


class Block(nnx.Module):
    """One transformer layer: pre-norm (Llama), or with `model.norm_placement='swin'` the
    norms on the branch outputs, x + norm(f(x)) (Chameleon-30B's swin_norm, which it needed
    on top of QK-norm to keep the residual stream bounded). The two norms keep their names
    either way (they are transformers' input_layernorm / post_attention_layernorm)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        norm = dict(eps=cfg.norm_eps, dtype=jnp.dtype(cfg.dtype),
                    param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.attn_norm = RMSNorm(cfg.d_model, **norm)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.d_model, **norm)
        self.mlp = MLP(cfg, rngs=rngs)
        self.swin = cfg.norm_placement == "swin"

    def __call__(self, x, ctx: Context, cache=None):
        """Returns (x, (k, v)); see `Attention.__call__` for the cache."""
        if self.swin:
            h, kv = self.attn(x, ctx.positions, ctx.visible, cache)
            x = x + self.attn_norm(h)
            x = x + self.mlp_norm(self.mlp(x))
        else:
            h, kv = self.attn(self.attn_norm(x), ctx.positions, ctx.visible, cache)
            x = x + h
            x = x + self.mlp(self.mlp_norm(x))
        return constrain(x, ("batch", "length", "act_embed")), kv


class Decoder(nnx.Module):
    """Decoder-only transformer; `cfg` is the `model` section of the config."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        # Completed here (idempotent) so that a partial, hand-built section gets the schema's
        # defaults: tests, `mmar import` and the benchmarks build decoders that way.
        cfg = schema.complete(cfg, section="model")
        validate(cfg)
        self.embed = Embed(cfg, rngs=rngs)
        # RAR's target embedding (mmar/data/orders.py): row k + 1 says "the next token is the
        # code at grid index k", row 0 "not an image code". Derived from data.image_order.
        self.num_targets = cfg.num_targets
        self.target_embed = param(
            rngs, nnx.initializers.normal(cfg.init_std), (self.num_targets, cfg.d_model),
            ("targets", "embed"), jnp.dtype(cfg.param_dtype)) if self.num_targets else None

        @nnx.split_rngs(splits=cfg.n_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata=STACKED)
        def make_blocks(rngs):
            return (mot_lib.MoTBlock if cfg.mot.enabled else Block)(cfg, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=jnp.dtype(cfg.dtype),
                                  param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.head = None if cfg.tie_embeddings else param(
            rngs, nnx.initializers.normal(cfg.init_std), (cfg.d_model, cfg.vocab_size),
            ("embed", "vocab"), jnp.dtype(cfg.param_dtype))
        self.n_layers, self.n_kv_heads, self.head_dim = cfg.n_layers, cfg.n_kv_heads, cfg.head_dim
        self.dtype = jnp.dtype(cfg.dtype)
        self.remat_policy = REMAT_POLICIES.get(cfg.remat)
        self.scan_layers = cfg.scan_layers
        self.attention = attention.implementation(cfg)
        self.mot = cfg.mot.enabled
        self.image_layout = (positions_lib.ImageLayout(*(int(x) for x in cfg.image_layout))
                             if cfg.image_positions == "2d" else None)
        # Next-scale prediction (mmar/model/next_scale.py): the layout of its rows, derived
        # from data.image_order='next_scale', and one embedding per scale.
        layout = tuple(int(x) for x in cfg.scale_layout)
        self.scale_layout = (next_scale.ScaleLayout(*layout[:3], layout[3:])
                             if layout else None)
        self.scale_embed = param(
            rngs, nnx.initializers.normal(cfg.init_std), (len(layout) - 3, cfg.d_model),
            ("scales", "embed"), jnp.dtype(cfg.param_dtype)) if layout else None
        self.num_modalities, self.mot_tile = cfg.mot.num_modalities, cfg.mot.tile
        self.kv_spec = None if self.mot else kv_decode.Spec(
            cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim, cfg.norm_eps,
            cfg.rope_theta, self.dtype, cfg.qk_norm, cfg.qk_norm_kind,
            cfg.norm_placement == "swin")

    # ---- the two entry points ----

    def __call__(self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array,
                 modality: jax.Array | None = None, targets: jax.Array | None = None
                 ) -> jax.Array:
        """tokens, positions, segment_ids [B, S] int32 -> logits [B, S, vocab] float32.

        Rows may pack several documents: attention stays inside a segment id, segment 0 is
        padding, and positions restart at 0 for each document. `modality` [B, S] (0 text,
        1 image) is required with `mot.enabled=True` and ignored otherwise; `targets` [B, S] with
        `num_targets` > 0 (RAR) and ignored otherwise.
        """
        if self.image_layout is not None:
            positions, _ = positions_lib.components(tokens, positions, self.image_layout)
        if self.scale_layout is not None:   # block-causal: the kernels get the horizons
            st = next_scale.structure(tokens, positions, self.scale_layout)
            extent = self.scale_layout.scales[-1] ** 2 - 1   # the largest block's look-ahead
            ctx = Context(st.positions, self.attention.packed(segment_ids, st.horizon, extent),
                          self._route(modality))
            x = self._blocks_input(self.embed(tokens), st)
            x = x if ctx.routing is None else mot_lib.sort_rows(x, ctx.routing)
        else:
            ctx = Context(positions, self.attention.packed(segment_ids), self._route(modality))
            x = self._embed(tokens, targets, ctx)
        return self._logits(self._run_blocks(x, ctx), ctx)

    def init_cache(self, batch_size: int, max_len: int, dtype=jnp.float32) -> dict:
        """An empty KV cache: k/v, one [B, KVH, max_len, D] array per layer (tuples of L;
        model/kv_decode.py says why), segment_ids [B, max_len] (0 = empty slot) and index
        (the next slot to write, an int32 scalar); with 2-D image positions also boi_slot [B]
        (the slot of each row's last <boi>, -1 = none: mmar/model/positions.py)."""
        shape = (batch_size, self.n_kv_heads, max_len, self.head_dim)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(self.n_layers))
        cache = {"k": zeros, "v": zeros,
                 "segment_ids": jnp.zeros((batch_size, max_len), jnp.int32),
                 "index": jnp.zeros((), jnp.int32)}
        if self.image_layout is not None:   # 2-D positions: each row's last <boi> slot
            cache["boi_slot"] = jnp.full((batch_size,), -1, jnp.int32)
        return cache

    def decode_weights(self, logits_ids: tuple[int, int] | None = None):
        """What `decode(weights=...)` reads, prepared once (kv_decode.prepare: fused and
        cast weights, the head restricted to ids [start, stop) when `logits_ids` is given);
        a sampler calls it before its loop. None for a Mixture-of-Transformers decoder,
        whose `decode` runs its blocks."""
        return None if self.mot else kv_decode.prepare(self, self.kv_spec, logits_ids)

    def decode(self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array,
               cache: dict, modality: jax.Array | None = None,
               visible: jax.Array | None = None, targets: jax.Array | None = None, *,
               weights=None, logits_ids: tuple[int, int] | None = None,
               inputs: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """Runs T new tokens [B, T] against the cache -> (logits [B, T, vocab], new cache).

        The tokens are written at slots index..index+T-1 of every row; each attends to the
        filled slots up to its own whose segment id equals its own (and is not 0). Prefill is
        one call with the (left-padded, pads in segment 0) prompt; then one call per step
        with T = 1. The caller keeps index + T <= max_len (beyond it writes are clamped).
        `modality` [B, T] of the new tokens: as in `__call__` (the sampler derives it from
        the token ids: image codes are 1).

        `visible` [B, T, max_len] bool replaces the causal rule (slot j visible to new token t
        when j <= index + t) for decoders whose tokens do not enter the cache in the order
        they are conditioned on (parallel and out-of-order decoding, mmar/sample/); the
        segment rule still applies on top of it. The cache may also be rewound by setting
        `index` lower: slots at or past it are rewritten before any query can see them under
        the causal rule. `targets` [B, T]: as in `__call__` (RAR decoders only).

        `weights`: `decode_weights(logits_ids)` prepared once outside a sampler's loop
        (prepared here when not given); `logits_ids=(start, stop)` returns only the logits of
        ids [start, stop) (column j is id start + j), and must match the weights' own.

        Next-scale decoders (mmar/model/next_scale.py): a call whose images are whole (a
        prompt) gets its inputs, positions and block-causal mask from its tokens; the
        next-scale sampler instead passes one scale's `inputs` [B, T, E]
        (`next_scale.scale_inputs`), their positions [B, T, 3] and `visible`.
        """
        index = cache["index"]
        if self.scale_layout is not None and inputs is None:
            st = next_scale.structure(tokens, positions, self.scale_layout, index)
            positions = st.positions
            visible = next_scale.visible(st.horizon, cache["segment_ids"].shape[1])
        cache_segments = jax.lax.dynamic_update_slice(
            cache["segment_ids"], segment_ids.astype(jnp.int32), (0, index))
        mask = attention_mask(segment_ids, cache_segments, q_offset=index, visible=visible)
        new_cache = {"segment_ids": cache_segments, "index": index + tokens.shape[1]}
        if self.image_layout is not None:
            positions, new_cache["boi_slot"] = positions_lib.components(
                tokens, positions, self.image_layout, index, cache["boi_slot"])
        if self.kv_spec is not None:
            spec = self.kv_spec
            w = self.decode_weights(logits_ids) if weights is None else weights
            self._check_targets(targets)
            sin, cos = rope_angles(positions, spec.head_dim, spec.rope_theta)
            if inputs is None:
                inputs = kv_decode.embed(spec, w, tokens, targets)
                if self.scale_layout is not None:
                    inputs = self._blocks_input(inputs, st)
            logits, new_cache["k"], new_cache["v"] = kv_decode.run(
                spec, w, inputs.astype(spec.dtype), sin, cos, mask, cache["k"], cache["v"],
                index)
            return logits, new_cache
        ctx = Context(positions, Visible(mask=mask), self._route(modality))
        if inputs is None:
            x = self._embed(tokens, targets, ctx) if self.scale_layout is None else (
                self._blocks_input(self.embed(tokens), st))
        else:
            x = inputs.astype(self.dtype)
        if self.scale_layout is not None and ctx.routing is not None:
            x = mot_lib.sort_rows(x, ctx.routing)
        x, k, v = self._run_blocks_cached(x, ctx,
                                          jnp.stack(cache["k"]), jnp.stack(cache["v"]), index)
        new_cache["k"], new_cache["v"] = tuple(k), tuple(v)
        logits = self._logits(x, ctx)
        return (logits if logits_ids is None else
                logits[..., logits_ids[0]:logits_ids[1]]), new_cache

    # ---- the steps both share ----

    def _route(self, modality) -> mot_lib.Routing | None:
        """MoT: where each token's row goes in modality order (`mot.route`); dense: None."""
        if not self.mot:
            return None
        if modality is None:
            raise ValueError("model.mot.enabled=True: the decoder needs `modality` [B, S] (0 text, "
                             "1 image) to pick each token's weights")
        return mot_lib.route(modality, self.num_modalities, self.mot_tile)

    def _embed(self, tokens, targets, ctx: Context) -> jax.Array:
        """Token embeddings, plus the target embeddings of a RAR decoder (`targets` [B, S]);
        under MoT in modality order ([Np, E], `mot.sort_rows`)."""
        x = self.embed(tokens)
        self._check_targets(targets)
        if self.target_embed is not None:
            table = constrain(self.target_embed[...], (None, None))
            x = x + jnp.take(table, targets, axis=0).astype(x.dtype)
        return x if ctx.routing is None else mot_lib.sort_rows(x, ctx.routing)

    def _blocks_input(self, embedded, st) -> jax.Array:
        """Next-scale decoders: token embeddings [B, S, E] -> the inputs of the block slots
        (`next_scale.block_inputs`)."""
        table = constrain(self.scale_embed[...], (None, None))
        return next_scale.block_inputs(embedded, st, table, self.scale_layout)

    def scale_inputs(self, code_ids: jax.Array, scale: int) -> jax.Array:
        """The inputs [B, n_s, E] of scale `scale` (0-based, > 0) from the ids of an image's
        codes so far [B, N] (ids of that scale and later are ignored): what the next-scale
        sampler feeds `decode(inputs=...)`."""
        table = constrain(self.scale_embed[...], (None, None))
        return next_scale.scale_inputs(self.embed(code_ids), scale, table, self.scale_layout)

    def _check_targets(self, targets) -> None:
        if self.target_embed is not None and targets is None:
            raise ValueError(f"this decoder has model.num_targets={self.num_targets} (RAR, "
                             "data.image_order='rar'): it needs `targets` [B, S]")

    def _run_blocks(self, x, ctx: Context) -> jax.Array:
        """Every block over packed rows: one scanned (or unrolled) block, rematerialised per
        `model.remat`."""
        def block_fn(block, x):
            return block(x, ctx)[0]

        if self.remat_policy is not None:
            block_fn = nnx.remat(block_fn, policy=self.remat_policy)

        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, transform_metadata=STACKED,
                  unroll=1 if self.scan_layers else self.n_layers)
        def run(x, block):
            return block_fn(block, x)

        return run(x, self.blocks)

    def _run_blocks_cached(self, x, ctx: Context, k, v, index):
        """Every block against its layer of the KV cache k, v [L, B, KVH, T, D] -> (x, k, v)
        (Mixture-of-Transformers decoders; dense ones run model/kv_decode.py)."""
        @nnx.scan(in_axes=(nnx.Carry, 0, 0, 0), out_axes=(nnx.Carry, 0, 0),
                  transform_metadata=STACKED)
        def run(x, block, k, v):
            x, (k, v) = block(x, ctx, cache=(k, v, index))
            return x, k, v

        return run(x, self.blocks, k, v)

    def _logits(self, x: jax.Array, ctx: Context) -> jax.Array:
        """Back to sequence order (MoT), final norm, then the tied or own output head."""
        if ctx.routing is not None:
            x = mot_lib.unsort_rows(x, ctx.routing)
        x = self.final_norm(x)
        if self.head is None:
            return self.embed.attend(x)
        logits = project(x, self.head[...].astype(self.dtype), out_dtype=jnp.float32)
        return constrain(logits, ("batch", "length", "act_vocab"))
