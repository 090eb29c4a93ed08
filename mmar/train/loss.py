"""Next-token cross-entropy with z-loss, reported per modality.

Conventions (mmar/data/sequences.py): `loss_weights[t]` and `modality[t]` belong to the
prediction *of* `tokens[t]` from the tokens before it; position 0 is never predicted.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

TEXT, IMAGE = 0, 1


def token_losses(logits, tokens):
    """Per-position next-token NLL, log-partition and whether the target is the top logit:
    logits[:, t] predicts tokens[:, t+1]; each result is [B, S - 1].

    Computed on all S positions (the last one's target is a dummy 0) and sliced after the
    vocabulary reduction: slicing the [B, S, vocab] logits first costs a copy forward and a
    pad of their gradient. "Correct" compares the target's logit with the row maximum that
    the log-partition needs anyway, instead of a separate argmax (a variadic reduce; its
    cost: docs/performance.md, "Training step"). A tie for the maximum counts as wrong (argmax
    would credit the first index), so a model with constant logits scores 0, not 1.
    """
    logits = logits.astype(jnp.float32)
    targets = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))
    top = jax.lax.stop_gradient(jnp.max(logits, axis=-1))
    log_z = top + jnp.log(jnp.sum(jnp.exp(logits - top[..., None]), axis=-1))
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    unique_top = jnp.sum(logits == top[..., None], axis=-1) == 1
    correct = (target_logit >= top) & unique_top
    return (log_z - target_logit)[:, :-1], log_z[:, :-1], correct[:, :-1]


def scored_weight(batch):
    """The total loss weight of a batch: what `decoder_loss` divides by."""
    return jnp.sum(batch["loss_weights"][:, 1:].astype(jnp.float32))


def decoder_loss(logits, batch, *, z_loss: float = 0.0):
    """(weighted mean of NLL + z_loss * log_z^2, metrics with per-modality loss/accuracy)."""
    nll, log_z, correct = token_losses(logits, batch["tokens"])
    weights = batch["loss_weights"][:, 1:].astype(jnp.float32)
    modality = batch["modality"][:, 1:]
    total = jnp.maximum(weights.sum(), 1e-9)
    loss = jnp.sum(weights * (nll + z_loss * jnp.square(log_z))) / total
    metrics = {"nll": jnp.sum(weights * nll) / total,
               "z_loss": jnp.sum(weights * jnp.square(log_z)) / total}
    scored = weights > 0
    for name, m in (("text", TEXT), ("image", IMAGE)):
        mask = (scored & (modality == m)).astype(jnp.float32)
        count = jnp.maximum(mask.sum(), 1.0)
        metrics[f"loss_{name}"] = jnp.sum(mask * nll) / count
        metrics[f"accuracy_{name}"] = jnp.sum(mask * correct) / count
    return loss, metrics
