"""Multi-scale residual quantization (VAR, Tian et al. 2024): an image as token maps of
growing side, each quantising what the coarser ones left.

With the encoder's latent f [B, G, G, C] and scales k_1 < ... < k_K = G (`msrq.scales`):

    f_hat = 0
    for each scale k:   r_k = area_{G->k}(f - f_hat)       (the residual, resized down)
                        c_k = nearest code of each of the k x k vectors of r_k
                        f_hat += bilinear_{k->G}(e[c_k])     (one codebook e for every scale)

and the decoder reconstructs from f_hat. Codes come out flat, [B, N] with N = sum k^2, the
maps coarse to fine, each in raster order: the order the next-scale decoder writes them
(mmar/model/next_scale.py, which uses the same resize matrices). Reconstructing from the
first m scales only (`vectors_from_codes(codes, scales_used=m)`) is the coarse image the
decoder has after m passes; the tokenizer job reports its PSNR per m.

Differences from VAR's tokenizer, on purpose: no phi convolutions after the upsampling
(VAR's "quant_resi"; here f_hat is exactly the sum of the resized codes), bilinear rather
than bicubic upsampling, and a Euclidean codebook trained by gradient (residuals shrink with
scale, so no l2 norm). Loss, VAR's: `|f_hat - sg(f)|^2` (the codebook, through every scale's
codes) plus `commitment * |f - sg(f_hat)|^2`; the encoder gets f_hat's gradient straight
through.
Depth is 1: one id range of `codebook_size` ids serves every scale.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmar.model import next_scale
from mmar.tokenizers.image.codebooks import VQ


class MultiScaleRQ(nnx.Module):
    """The quantizer interface of quantizers.py, with codes [B, N] per image (module doc)."""

    def __init__(self, scales, codebook_size: int, dim: int, *, commitment: float = 0.25,
                 rngs: nnx.Rngs):
        self.scales = tuple(int(k) for k in scales)
        if list(self.scales) != sorted(set(self.scales)) or self.scales[0] < 1:
            raise ValueError(f"image_tokenizer.msrq.scales={self.scales}: must be increasing "
                             "positive sides, the last the code grid side")
        self.dim, self.depth, self.commitment = int(dim), 1, float(commitment)
        self.codebook_size = int(codebook_size)
        self.vq = VQ(codebook_size, dim, l2_norm=False, commitment=0.0, rngs=rngs)

    def _matrices(self):
        """(area down G -> k, bilinear up k -> G) per scale, numpy constants."""
        g = self.scales[-1]
        return [(next_scale.area_matrix(g, k).astype(np.float32),
                 next_scale.bilinear_matrix(k, g).astype(np.float32)) for k in self.scales]

    @property
    def num_codes(self) -> int:
        return self.codebook_size

    @property
    def codes_per_image(self) -> int:
        return next_scale.num_codes(self.scales)

    def _check(self, z: jax.Array) -> None:
        g = self.scales[-1]
        if z.ndim != 4 or z.shape[1:] != (g, g, self.dim):
            raise ValueError(f"multi-scale quantization expects latents [B, {g}, {g}, "
                             f"{self.dim}] (the last of image_tokenizer.msrq.scales="
                             f"{self.scales} is the code grid side), got {z.shape}")

    def _resize(self, x, matrix):
        return jnp.einsum("ih,bhwc,jw->bijc", matrix, x, matrix)

    def quantize(self, f: jax.Array):
        """f [B, G, G, C] -> (f_hat with codebook gradients, codes [B, N])."""
        f_hat, codes = jnp.zeros_like(f), []
        for k, (down, up) in zip(self.scales, self._matrices()):
            r = self._resize(f - jax.lax.stop_gradient(f_hat), down)       # [B, k, k, C]
            _, e_k, c, _ = self.vq.lookup(r.reshape(-1, self.dim))
            f_hat = f_hat + self._resize(e_k.reshape(r.shape), up)
            codes.append(c.reshape(len(f), k * k))
        return f_hat, jnp.concatenate(codes, 1)

    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, Any]]:
        self._check(z)
        f = z.astype(jnp.float32)
        f_hat, codes = self.quantize(f)
        # VAR's terms: the codebook learns to make the *sum* of the maps match f (one term
        # per scale pulled one shared code towards residuals of very different sizes: the
        # codebook loss grew without bound on the shapes data), the encoder commits to it.
        book = jnp.mean(jnp.square(f_hat - jax.lax.stop_gradient(f)))
        commit = jnp.mean(jnp.square(f - jax.lax.stop_gradient(f_hat)))
        z_q = f + jax.lax.stop_gradient(f_hat - f)
        return z_q, codes, {"loss": book + self.commitment * commit, "codebook": book,
                            "commitment": commit}

    def codes_to_vectors(self, codes: jax.Array, scales_used: int | None = None) -> jax.Array:
        """codes [B, N] -> f_hat [B, G, G, C] from the first `scales_used` scales (all:
        None)."""
        codes = jnp.asarray(codes, jnp.int32)
        e, off, g = self.vq.vectors(), next_scale.offsets(self.scales), self.scales[-1]
        out = jnp.zeros((codes.shape[0], g, g, self.dim), jnp.float32)
        for s, (k, (_, up)) in enumerate(zip(self.scales, self._matrices())):
            if scales_used is not None and s >= scales_used:
                break
            vec = e[codes[:, off[s]:off[s + 1]]].reshape(-1, k, k, self.dim)
            out = out + self._resize(vec, up)
        return out

    def vectors_to_codes(self, z_q: jax.Array) -> jax.Array:
        """Latents [B, G, G, C] -> codes [B, N] (the greedy coarse-to-fine encoding)."""
        self._check(z_q)
        return self.quantize(z_q.astype(jnp.float32))[1]
