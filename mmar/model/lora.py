"""LoRA adapters (Hu et al. 2021) on the block projections, and merging them back.

With `model.lora.rank` = r > 0 every projection named in `model.lora.targets` (q, k, v, o of
the attention, gate, up, down of the MLP: `TARGETS`) gets two parameters beside its weight
W [*in, *out] (q: in (embed,), out (heads, head_dim); o: in (heads, head_dim), out (embed,)):

    <name>_lora_a  [*in, r]   uniform(+-1/sqrt(fan_in)), as peft (kaiming-uniform, a=sqrt(5))
    <name>_lora_b  [r, *out]  zeros, so a fresh adapter leaves the model as it was

and the projection computes y = x @ W + (alpha / r) * (x @ A) @ B (model/layers.py
`lora_project`). The adapters are `LoRAParam`s, a subclass of `nnx.Param`: they are saved,
sharded and restored like every parameter (axis `lora_rank`, replicated, the other axis as
its weight's), and the decoder task trains only them (mmar/train/decoder.py: the task's
`trainable` filter; the base weights are frozen and have no optimizer state).

The KV-cache step folds them into its fused weights once per sampler call (`folded`,
model/kv_decode.py); `merge` folds them into the parameters for good (export), and
`merged_weight` is the same arithmetic on one weight, numpy or JAX arrays alike.
A model with rank 0 has no adapters at all: the parameters of a model without LoRA.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmar.config_fields import LORA_TARGETS

TARGETS = LORA_TARGETS
RANK_AXIS = "lora_rank"
A_SUFFIX, B_SUFFIX = "_lora_a", "_lora_b"


class LoRAParam(nnx.Param):
    """A LoRA adapter matrix: the parameters a LoRA run trains (filter by this type)."""


def scale(lora_cfg) -> float:
    """alpha / rank of a `model.lora` section (0.0 when LoRA is off)."""
    return float(lora_cfg.alpha) / lora_cfg.rank if lora_cfg.rank else 0.0


def _a_init(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def add(module: nnx.Module, lora_cfg, rngs: nnx.Rngs, weights: dict[str, int]) -> None:
    """Gives `module` the adapters of `lora_cfg` (a `model.lora` section) for each of its
    weights in `weights` (attribute name -> how many leading dims of that weight are inputs)
    that `lora_cfg.targets` names, and `lora_scale` (alpha / rank). Adds no parameter when
    `lora_cfg.rank` is 0."""
    module.lora_scale = scale(lora_cfg)
    if not lora_cfg.rank:
        return
    r = lora_cfg.rank
    for name, n_in in weights.items():
        if name not in lora_cfg.targets:
            continue
        w = getattr(module, name)
        names = tuple(w.get_metadata()["out_sharding"])
        shape, dtype = tuple(w.shape), w.dtype
        a_init = nnx.with_partitioning(_a_init(math.prod(shape[:n_in])),
                                       (*names[:n_in], RANK_AXIS), eager_sharding=False)
        b_init = nnx.with_partitioning(nnx.initializers.zeros,
                                       (RANK_AXIS, *names[n_in:]), eager_sharding=False)
        setattr(module, name + A_SUFFIX,
                LoRAParam(a_init(rngs.params(), (*shape[:n_in], r), dtype)))
        setattr(module, name + B_SUFFIX,
                LoRAParam(b_init(rngs.params(), (r, *shape[n_in:]), dtype)))


def _matmul(x, y):
    if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
        return x @ y
    return jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST)


def merged_weight(w, a, b, scale: float):
    """W + scale * A @ B for one weight W [*lead, *in, *out] and its adapters
    A [*lead, *in, r], B [*lead, r, *out] (numpy or JAX arrays; `*lead` is the stacked
    `layers` axis of a decoder's block weights, or nothing), computed in float32 and
    returned in W's dtype.

    For the export of a LoRA run: the checkpoint's block weights sit at
    `blocks/attn/{q,k,v,o}` and `blocks/mlp/{gate,up,down}`, each targeted one with its
    adapters beside it as `<name>_lora_a` and `<name>_lora_b` (e.g. `blocks/attn/q_lora_a`
    [layers, embed, r], `blocks/attn/q_lora_b` [layers, r, heads, head_dim];
    `blocks/attn/o_lora_a` [layers, heads, head_dim, r], `blocks/attn/o_lora_b`
    [layers, r, embed]); `scale` is model.lora.alpha / r (r = A's last dimension).
    """
    n_lead = a.ndim + b.ndim - w.ndim - 2
    r = a.shape[-1]
    lead, n_in = tuple(w.shape[:n_lead]), a.ndim - 1 - n_lead
    if (n_lead < 0 or n_in < 1 or b.shape[n_lead] != r or tuple(a.shape[:-1]) !=
            tuple(w.shape[:n_lead + n_in]) or tuple(b.shape[:n_lead]) != lead
            or tuple(b.shape[n_lead + 1:]) != tuple(w.shape[n_lead + n_in:])):
        raise ValueError(f"LoRA adapters of shapes A {tuple(a.shape)}, B {tuple(b.shape)} do "
                         f"not fit a weight of shape {tuple(w.shape)}")
    k = math.prod(a.shape[n_lead:-1])
    delta = _matmul(a.reshape(*lead, k, r).astype(np.float32),
                    b.reshape(*lead, r, -1).astype(np.float32))
    return (w.astype(np.float32) + scale * delta.reshape(w.shape)).astype(w.dtype)


def folded(module: nnx.Module, name: str):
    """`module.<name>`'s value with its adapters folded in (`merged_weight` with the module's
    `lora_scale`); the weight itself when it has none."""
    w = getattr(module, name)[...]
    a = getattr(module, name + A_SUFFIX, None)
    if a is None:
        return w
    return merged_weight(w, a[...], getattr(module, name + B_SUFFIX)[...], module.lora_scale)


def merge(params: dict, *, alpha: float) -> dict:
    """Plain parameters of a LoRA run's pure params dict (as the trainer and the checkpoints
    hold them: nested dicts of arrays): every `<name>` with `<name>_lora_a` and
    `<name>_lora_b` beside it becomes `merged_weight(W, A, B, alpha / r)` (r read off A's
    shape) and the adapters are dropped. `alpha` is the run's model.lora.alpha. The result
    is the params tree of the same model with model.lora.rank=0; other leaves pass as they
    are (the same arrays)."""
    out = {}
    for key, value in params.items():
        if isinstance(key, str) and key.endswith((A_SUFFIX, B_SUFFIX)):
            continue
        if isinstance(value, dict):
            out[key] = merge(value, alpha=alpha)
        elif isinstance(key, str) and key + A_SUFFIX in params:
            a, b = params[key + A_SUFFIX], params[key + B_SUFFIX]
            out[key] = merged_weight(value, a, b, float(alpha) / a.shape[-1])
        else:
            out[key] = value
    return out


def adapter_names(params: dict, prefix: Sequence[str] = ()) -> list[str]:
    """The '/'-joined paths of every adapter in a pure params dict."""
    names = []
    for key, value in params.items():
        path = (*prefix, str(key))
        if isinstance(value, dict):
            names += adapter_names(value, path)
        elif str(key).endswith((A_SUFFIX, B_SUFFIX)):
            names.append("/".join(path))
    return names
