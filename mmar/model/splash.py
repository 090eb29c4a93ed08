"""`model.attention="splash"`: the Pallas splash-attention kernel (TPU), causal + packed.

Splash attention (jax.experimental.pallas.ops.tpu.splash_attention, the kernel MaxText uses
on TPU) skips every [block_q, block_kv] tile that the causal mask hides and keeps no S x S
scores. Its mask is static (causal here); packing comes in as `SegmentIds`, so a query sees a
key when the key is not later and has the same segment id: the rule of
`attention.attention_mask` for every real token (padding, segment 0, may attend to other
padding; its outputs are never used).

Grouped-query attention uses the MQA form of the kernel once per KV head (its G query heads
share one K/V), vmapped over KV heads and rows. A Pallas call is not partitioned by XLA, so
under a mesh (`rules.use_mesh`) the kernel runs inside `shard_map`: rows split as the batch
activations are, heads as `act_heads` / `act_kv_heads` are (both replicated when the KV heads
cannot be split evenly, so every shard keeps whole query groups).

`interpret=True` runs the kernel in Pallas' interpret mode, which works off TPU: correct (the
tests compare it with the XLA path on CPU, values and gradients) but slow; it is for checking,
not for training. `attention.implementation` sets it for every platform but TPU.
"""
from __future__ import annotations

import functools

import jax
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
from jax.sharding import PartitionSpec

from mmar.parallel import rules


@functools.lru_cache(maxsize=None)
def _kernel(seq_len: int, group: int, block: int, interpret: bool):
    """The MQA splash kernel for `group` query heads over one K/V head, causal.

    Cached across calls, so its mask arrays are built eagerly (`ensure_compile_time_eval`):
    built inside the first caller's trace they would be that trace's tracers, and a second
    jitted function (an eval step after the train step) would fail on them."""
    if block % 128 or seq_len % block:
        raise ValueError(f"model.attention='splash': the block ({block}: model.attention_block "
                         f"capped at the row length) must be a multiple of 128 (the kernel's "
                         f"lanes) and divide the row length {seq_len} (data.seq_len)")
    mask = sm.MultiHeadMask([sm.CausalMask((seq_len, seq_len)) for _ in range(group)])
    sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                          block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                          block_q_dq=block, block_kv_dq=block)
    with jax.ensure_compile_time_eval():
        return sk.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)


def _local(q, k, v, segments, block: int, interpret: bool):
    """Splash attention on one shard: q [B, S, H, D], k/v [B, S, KVH, D] -> [B, S, H, D]."""
    b, s, h, d = q.shape
    kvh = k.shape[2]
    kernel = _kernel(s, h // kvh, min(block, s), interpret)
    qg = (q * d ** -0.5).reshape(b, s, kvh, h // kvh, d).transpose(0, 2, 3, 1, 4)
    kg, vg = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, KVH, S, D]

    def one_head(qh, kh, vh, seg):
        return kernel(qh, kh, vh, segment_ids=sk.SegmentIds(seg, seg))

    per_row = jax.vmap(one_head, in_axes=(0, 0, 0, None))  # over KV heads
    out = jax.vmap(per_row)(qg, kg, vg, segments)  # [B, KVH, G, S, D]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, s, h, d).astype(q.dtype)


def attend_splash(q, k, v, segments, *, block: int, interpret: bool):
    """Causal attention within segments; q [B, S, H, D], k/v [B, S, KVH, D], segments [B, S].
    `interpret`: Pallas' interpret mode (any platform) instead of the compiled TPU kernel."""
    run = functools.partial(_local, block=block, interpret=interpret)
    active = rules.active()
    if active is None:
        return run(q, k, v, segments)
    mesh, table = active
    batch = rules.logical_to_spec(("batch",), table, shape=q.shape[:1], mesh=mesh)[0]
    heads = rules.logical_to_spec(("act_heads",), table, shape=q.shape[2:3], mesh=mesh)[0]
    kv_heads = rules.logical_to_spec(("act_kv_heads",), table, shape=k.shape[2:3],
                                     mesh=mesh)[0]
    if heads != kv_heads:  # KV heads not split evenly: keep whole query groups together
        heads = kv_heads = None
    q_spec = PartitionSpec(batch, None, heads, None)
    kv_spec = PartitionSpec(batch, None, kv_heads, None)
    return jax.shard_map(run, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec,
                                                   PartitionSpec(batch, None)),
                         out_specs=q_spec, check_vma=False)(q, k, v, segments)
