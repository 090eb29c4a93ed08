"""Quantizers for the image tokenizer.

Every quantizer is an ``nnx.Module`` with the same interface, so the autoencoder, the tokenizer
trainer and the pretokenize job never look at which one they hold:

- ``dim``: the size of the latent vector it quantizes (the encoder's output channels);
- ``num_codes``: the number of integer codes (the image part of the vocabulary);
- ``__call__(z [..., dim]) -> (z_q [..., dim], codes int32 [...], aux)``: the training path.
  ``z_q`` carries gradients back to ``z`` (straight-through or the quantizer's own estimator),
  ``aux`` is a dict with at least ``"loss"`` (a scalar added to the reconstruction loss:
  commitment / codebook / entropy terms for VQ and LFQ; 0 for FSQ) and may add more metrics;
- ``codes_to_vectors(codes int [...]) -> z_q [..., dim]``: what the decoder consumes;
- ``vectors_to_codes(z_q [..., dim]) -> codes int32 [...]``;
- ``depth``: codes per latent position (1, the RQ depth, or FSQ's sub-codebooks). With
  ``depth > 1`` every ``codes`` array above has a trailing ``[..., depth]`` axis, and depth
  ``d``'s codes are offset by ``d * codes_per_depth``, so ``num_codes`` still bounds all of
  them and maps straight into the vocabulary (one id range per depth; docs/tokenizers.md);
- ``aux["assign"]`` (optional): a zero-valued term that updates ``Buffer``s (codebooks.py).

FSQ is here; VQ, LFQ and RQ are in codebooks.py. ``make_quantizer`` is the one place that
maps the config to a class; ``mmar.derived.num_image_codes`` sizes the vocabulary from the
config alone (validation needs it before anything is built).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmar import schema
from mmar import derived
from mmar.derived import QUANTIZERS
from mmar.tokenizers.image import codebooks
from mmar.tokenizers.image.multiscale import MultiScaleRQ


def round_ste(x: jax.Array) -> jax.Array:
    """Round to the nearest integer with a straight-through (identity) gradient."""
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


class FSQ(nnx.Module):
    """Finite Scalar Quantization (Mentzer et al. 2023, "FSQ: VQ-VAE Made Simple").

    Each latent dim ``i`` is bounded with ``tanh`` to an interval that holds exactly
    ``levels[i]`` integers, rounded (straight-through) and divided by ``levels[i] // 2``, so an
    odd level count gives the symmetric grid ``{-1, ..., 0, ..., 1}`` and an even one gives
    ``{-1, ..., 0, ..., 1 - 2/L}`` (the half-offset trick of the paper's reference code: the
    bounded value is shifted by 0.5 so that an even number of integers fits, with the shift
    inside the tanh chosen so that ``bound(0) == 0``; a level of 2 gets no shift: its values are
    -1 and 0, and z = 0 lies on the boundary between them).

    The implicit codebook is the product grid; a code index is the mixed-radix number whose
    digit ``i`` (least significant first) is the level index of dim ``i``. No parameters, no aux
    loss. ``eps`` keeps the tanh range strictly inside the outermost rounding cells.

    ``groups > 1`` factorises the code (Open-MAGVIT2's asymmetric token factorisation, applied
    to FSQ): the channels split into ``groups`` consecutive slices of equal size and equal
    level product ``K``, each slice is a sub-codebook of ``K`` codes, and a position gets one
    code per slice (``depth = groups``; slice ``g``'s code offset by ``g * K``). The vectors
    are the same; only the indexing changes, so a decoder model predicts sub-tokens of ``K``
    ids instead of one token of ``K ** groups``, and a combination of sub-codes it has seen
    apart is one it can write together (docs/tokenizers.md, "Factorised codes").

    Deviation from the paper's listing: the listing uses ``tan(offset / half_l)`` for the inner
    shift; ``arctanh`` is the value that makes ``bound(0) == 0`` exactly (the later reference
    implementations use it). The grid and the code indices are identical either way.
    """

    def __init__(self, levels: Sequence[int], eps: float = 1e-3, groups: int = 1):
        levels = tuple(int(l) for l in levels)
        groups = int(groups)
        if not levels or any(l < 2 for l in levels):
            raise ValueError(f"image_tokenizer.fsq.levels: every FSQ level must be an integer "
                             f">= 2, got {levels}")
        if math.prod(levels) > np.iinfo(np.int32).max:
            raise ValueError(f"image_tokenizer.fsq.levels: prod(levels) = {math.prod(levels)} "
                             "does not fit int32")
        slices = derived.fsq_slices(levels, groups)
        self.levels = levels
        self.eps = float(eps)
        self.depth = groups
        self.codes_per_depth = math.prod(slices[0])   # ids per sub-codebook

    # ---- static properties -------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return len(self.levels)

    @property
    def num_codes(self) -> int:
        return self.depth * self.codes_per_depth

    def _levels(self) -> np.ndarray:
        return np.asarray(self.levels, np.float32)

    def _half_width(self) -> np.ndarray:
        return np.asarray([l // 2 for l in self.levels], np.float32)

    def _basis(self) -> np.ndarray:
        """Mixed-radix place value of each channel inside its sub-codebook."""
        size = len(self.levels) // self.depth
        out = []
        for g in range(self.depth):
            part = self.levels[g * size:(g + 1) * size]
            out.append(np.concatenate([[1], np.cumprod(part[:-1])]))
        return np.concatenate(out).astype(np.int32)

    def _group_of_channel(self) -> np.ndarray:
        return np.repeat(np.arange(self.depth), len(self.levels) // self.depth)

    def _offsets(self) -> np.ndarray:
        return (np.arange(self.depth) * self.codes_per_depth).astype(np.int32)

    # ---- quantization ------------------------------------------------------------------------

    def bound(self, z: jax.Array) -> jax.Array:
        """Map ``z`` to a range holding ``levels[i]`` integers (before rounding)."""
        levels = self._levels()
        half_l = (levels - 1.0) * (1.0 - self.eps) / 2.0
        offset = np.where(np.asarray(self.levels) % 2 == 1, 0.0, 0.5).astype(np.float32)
        ratio = offset / half_l
        # Level 2 has no integer inside its open range; z = 0 then sits on the decision boundary.
        # (the minimum only keeps arctanh finite on the discarded branch; even levels >= 4 have
        # ratio <= 1/3.)
        shift = np.where(ratio < 1.0, np.arctanh(np.minimum(ratio, 0.5)), 0.0).astype(np.float32)
        return jnp.tanh(z + shift) * half_l - offset

    def quantize(self, z: jax.Array) -> jax.Array:
        """Bounded, rounded (straight-through) and normalised to [-1, 1]."""
        return round_ste(self.bound(z)) / self._half_width()

    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, Any]]:
        if z.shape[-1] != self.dim:
            raise ValueError(f"FSQ expects a last axis of size {self.dim}, got shape {z.shape}")
        z_q = self.quantize(z.astype(jnp.float32))
        codes = self.vectors_to_codes(z_q)
        return z_q, codes, {"loss": jnp.zeros((), jnp.float32)}

    # ---- code <-> vector ---------------------------------------------------------------------

    def vectors_to_codes(self, z_q: jax.Array) -> jax.Array:
        """Quantized vectors in [-1, 1] -> int32 code indices in ``[0, num_codes)`` (``[...,
        groups]`` with each group's offset when factorised)."""
        half = self._half_width()
        digits = jnp.round(jax.lax.stop_gradient(z_q) * half + half).astype(jnp.int32)
        place = digits * self._basis()
        if self.depth == 1:
            return jnp.sum(place, axis=-1).astype(jnp.int32)
        place = place.reshape(*place.shape[:-1], self.depth, -1)
        return (jnp.sum(place, axis=-1) + self._offsets()).astype(jnp.int32)

    def codes_to_vectors(self, codes: jax.Array) -> jax.Array:
        """int code indices ``[...]`` (``[..., groups]`` when factorised) -> quantized vectors
        ``[..., dim]`` (exact inverse)."""
        codes = jnp.asarray(codes).astype(jnp.int32)
        if self.depth == 1:
            codes = codes[..., None]
        else:   # each channel reads its own group's code, less the group's offset
            codes = (codes - self._offsets())[..., self._group_of_channel()]
        digits = (codes // self._basis()) % np.asarray(self.levels, np.int32)
        half = self._half_width()
        return (digits.astype(jnp.float32) - half) / half

    def implicit_codebook(self) -> jax.Array:
        """All ``num_codes`` vectors, ``[num_codes, dim]``, row ``k`` is code ``k`` (flat
        codebooks only: a factorised code is a tuple, not a row)."""
        if self.depth > 1:
            raise ValueError("a factorised FSQ (fsq.groups > 1) has no flat codebook")
        return self.codes_to_vectors(jnp.arange(self.num_codes, dtype=jnp.int32))


def codebook_usage(codes: jax.Array, num_codes: int) -> dict[str, jax.Array]:
    """Fraction of codes used and the perplexity (exp entropy) of the code histogram.

    ``num_codes`` must be static (a Python int); works under jit.
    """
    counts = jnp.bincount(jnp.ravel(codes).astype(jnp.int32), length=num_codes)
    total = jnp.maximum(jnp.sum(counts), 1)
    probs = counts.astype(jnp.float32) / total
    entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0))
    return {
        "usage_fraction": jnp.mean((counts > 0).astype(jnp.float32)),
        "perplexity": jnp.exp(entropy),
    }


def make_quantizer(cfg: Any, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """Build the quantizer named by the ``image_tokenizer`` config section (completed with
    the schema's defaults, so a hand-built partial section works): ``quantizer`` picks one,
    its options are the sub-section of that name (``fsq.levels``, ``vq.*``, ``lfq.*``,
    ``rq.*``; mmar/schema.py)."""
    cfg = schema.complete(cfg, section="image_tokenizer")
    name = cfg.quantizer
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    if name == "fsq":
        return FSQ(cfg.fsq.levels, groups=cfg.fsq.groups)
    if name == "vq":
        vq = cfg.vq
        return codebooks.VQ(vq.codebook_size, vq.codebook_dim, l2_norm=vq.l2_norm,
                            commitment=vq.commitment, ema=vq.ema, ema_decay=vq.ema_decay,
                            restart=vq.dead_code_restart, rngs=rngs)
    if name == "lfq":
        lfq = cfg.lfq
        return codebooks.LFQ(lfq.bits, entropy_weight=lfq.entropy_weight,
                             gamma=lfq.entropy_gamma, temperature=lfq.entropy_temperature,
                             commitment=lfq.commitment)
    if name == "rq":
        rq = cfg.rq
        return codebooks.RQ(rq.codebook_size, rq.codebook_dim, rq.depth, shared=rq.shared,
                            commitment=rq.commitment, rngs=rngs)
    if name == "msrq":
        ms = cfg.msrq
        return MultiScaleRQ(ms.scales, ms.codebook_size, ms.codebook_dim,
                            commitment=ms.commitment, rngs=rngs)
    raise ValueError(
        f"image_tokenizer.quantizer: unknown quantizer {name!r}; allowed values: {QUANTIZERS}"
    )
