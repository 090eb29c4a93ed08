"""Losses for training the image tokenizer.

``reconstruction_loss`` is a pure function of ``(model, images, cfg)``: use it inside
``nnx.value_and_grad(..., has_aux=True)`` and ``nnx.jit`` (``cfg`` is read in Python, at trace
time). Pixel losses, the quantizer's aux loss, its buffer updates (``aux["assign"]``,
zero-valued: codebooks.py) and, when the model has a discriminator, the adversarial terms
(discriminator.py). There is no perceptual loss: it would need downloaded weights.

Config fields (the ``image_tokenizer`` section, completed with the schema's defaults):
``loss`` in ``LOSSES``; ``aux_loss_weight``, the weight of the quantizer's aux loss (0 for
FSQ); ``disc.weight`` and ``disc.start`` (steps before the adversarial terms switch on).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mmar import schema
from mmar.tokenizers.image import discriminator as disc_lib
from mmar.tokenizers.image.codebooks import assign
from mmar.tokenizers.image.quantizers import codebook_usage

LOSSES = ("l1", "l2", "l1+l2")


def psnr_from_mse(mse: jax.Array) -> jax.Array:
    """PSNR in dB for images in [-1, 1] (peak-to-peak 2), i.e. the same as on [0, 1] pixels."""
    return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))


def reconstruction_loss(model, images: jax.Array, cfg: Any) -> tuple[jax.Array, dict]:
    """Pixel reconstruction loss plus the quantizer's aux loss.

    Args:
      model: an ``Autoencoder`` (``model(images) -> (recon, codes, aux)``).
      images: float ``[B, H, W, 3]`` in [-1, 1].
      cfg: the ``image_tokenizer`` config section.

    Returns:
      ``(loss, metrics)``; metrics: ``loss, recon_loss, l1, mse, psnr, aux_loss,
      usage_fraction, perplexity`` (all scalars; codebook stats are of this batch).
    """
    cfg = schema.complete(cfg, section="image_tokenizer")
    kind = cfg.loss
    if kind not in LOSSES:
        raise ValueError(f"image_tokenizer.loss: unknown loss {kind!r}; allowed values: {LOSSES}")
    aux_weight = float(cfg.aux_loss_weight)

    images = images.astype(jnp.float32)
    recon, codes, aux = model(images)
    diff = recon.astype(jnp.float32) - images
    l1 = jnp.mean(jnp.abs(diff))
    mse = jnp.mean(jnp.square(diff))
    recon_loss = {"l1": l1, "l2": mse, "l1+l2": l1 + mse}[kind]
    aux_loss = jnp.asarray(aux.get("loss", 0.0), jnp.float32)
    loss = recon_loss + aux_weight * aux_loss + aux.get("assign", 0.0)
    adversarial = {}
    if getattr(model, "discriminator", None) is not None:
        adv, adversarial = _adversarial(model, images, recon, cfg)
        loss = loss + adv

    metrics = {
        "loss": loss,
        "recon_loss": recon_loss,
        "l1": l1,
        "mse": mse,
        "psnr": psnr_from_mse(jax.lax.stop_gradient(mse)),
        "aux_loss": aux_loss,
    }
    metrics.update(codebook_usage(codes, model.num_codes))
    metrics.update(adversarial)
    for k, v in aux.items():
        if k not in ("loss", "assign"):
            metrics[f"aux/{k}"] = v
    return loss, metrics


def _adversarial(model, images, recon, cfg) -> tuple[jax.Array, dict]:
    """Generator + discriminator hinge terms, gated by the warm-up (discriminator.py)."""
    step = model.step[...]
    gate = (step >= float(cfg.disc.start)).astype(jnp.float32)
    weight = float(cfg.disc.weight)
    g_loss = disc_lib.hinge_g(disc_lib.frozen(model.discriminator)(recon))
    real = model.discriminator(images)
    fake = model.discriminator(jax.lax.stop_gradient(recon))
    d_loss = disc_lib.hinge_d(real, fake)
    total = gate * (weight * g_loss + d_loss) + assign(step, step + 1.0)
    return total, {"g_loss": g_loss, "d_loss": d_loss, "disc_on": gate,
                   "d_real": jnp.mean(real), "d_fake": jnp.mean(fake)}
