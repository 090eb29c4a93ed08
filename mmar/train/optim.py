"""AdamW with linear warmup then cosine decay (or constant), clipping and a decay mask."""
from __future__ import annotations

import jax
import optax


def learning_rate_schedule(cfg) -> optax.Schedule:
    """`cfg` is a complete train-like section (mmar/schema.py: `train`,
    `image_tokenizer.train`): lr, warmup_steps, steps, schedule, min_lr_ratio."""
    warmup = optax.linear_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1))
    rest = max(cfg.steps - cfg.warmup_steps, 1)
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.lr, rest, alpha=cfg.min_lr_ratio)
    else:
        decay = optax.constant_schedule(cfg.lr)
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def _decay_mask(params):
    """Weight decay on matrices only: never on norm scales or biases (by path name)."""
    def keep(path, x):
        name = jax.tree_util.keystr(path).lower()
        return x.ndim >= 2 and "norm" not in name and "scale" not in name and "bias" not in name
    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg) -> optax.GradientTransformation:
    """AdamW of the complete train-like section `cfg` (b1, b2, weight_decay, grad_clip and the
    schedule's fields)."""
    chain = []
    if cfg.grad_clip:
        chain.append(optax.clip_by_global_norm(cfg.grad_clip))
    chain.append(optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2,
                             weight_decay=cfg.weight_decay, mask=_decay_mask))
    return optax.chain(*chain)
