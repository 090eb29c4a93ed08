"""Next-token cross-entropy with z-loss, reported per modality.

Conventions (mmar/data/sequences.py): `loss_weights[t]` and `modality[t]` belong to the
prediction *of* `tokens[t]` from the tokens before it; position 0 is never predicted.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

TEXT, IMAGE = 0, 1


def token_losses(logits, tokens):
    """Per-position next-token NLL and log-partition: logits[:, t] predicts tokens[:, t+1]."""
    logits = logits[:, :-1].astype(jnp.float32)
    targets = tokens[:, 1:]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    correct = jnp.argmax(logits, axis=-1) == targets
    return log_z - target_logit, log_z, correct


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
