"""Quantizers with a codebook: VQ (LlamaGen-style l2-normalised codes), LFQ and RQ.

They follow the interface in ``quantizers.py`` (``dim``, ``num_codes``, ``depth``,
``__call__ -> (z_q, codes, aux)``, ``codes_to_vectors``, ``vectors_to_codes``).

**Buffers: state updated through the gradient path.** The trainer works on pure parameter
dicts and has one optimizer (mmar/train/step.py), so a module cannot mutate state inside the
step. EMA codebooks, usage counters for dead-code restart and the discriminator's warm-up
step counter are ``Buffer``s (an ``nnx.Param`` subclass, so they are checkpointed and
sharded like any parameter). The module computes the buffer's new value and adds
``assign(buffer, new)`` to its loss: a term whose *value is 0* (so logged losses are
unchanged) and whose gradient with respect to the buffer is ``buffer - new``. The tokenizer's
optimizer (``tokenizer_optimizer`` in train.py) applies plain SGD with learning rate 1 to
buffers, so ``buffer <- buffer - (buffer - new) = new`` exactly; gradient accumulation
averages the per-microbatch new values. Every other parameter sees a zero gradient from
these terms (the new value is behind ``stop_gradient``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


class Buffer(nnx.Param):
    """A parameter the module sets itself through ``assign`` (see the module docstring)."""


def assign(buffer: jax.Array, new: jax.Array) -> jax.Array:
    """A zero-valued loss term whose gradient w.r.t. ``buffer`` is ``buffer - new``."""
    t = 0.5 * jnp.sum(jnp.square(buffer - jax.lax.stop_gradient(new)))
    return t - jax.lax.stop_gradient(t)


def _l2(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def nearest(x: jax.Array, codebook: jax.Array) -> jax.Array:
    """Index of the nearest codebook row (squared Euclidean) for each row of ``x [N, d]``."""
    d = (jnp.sum(x * x, -1, keepdims=True) - 2.0 * x @ codebook.T
         + jnp.sum(codebook * codebook, -1)[None])
    return jnp.argmin(d, axis=-1).astype(jnp.int32)


class VQ(nnx.Module):
    """Nearest-neighbour vector quantization (VQ-VAE) with the LlamaGen recipe as an option.

    ``l2_norm``: latent and codebook vectors are l2-normalised before the nearest-neighbour
    search (cosine similarity) and the decoder gets the normalised code. LlamaGen reports
    that this with a low code dimension (8) keeps nearly every code in use.

    Loss (``aux["loss"]``): ``commitment * |z - sg(e)|^2`` plus, unless ``ema``, the codebook
    term ``|sg(z) - e|^2``. With ``ema`` the codebook is a ``Buffer`` moved towards the mean
    of its assigned latents, ``e <- decay e + (1 - decay) mean(z_k)``, for codes used in the
    batch (the per-vector form; the Laplace-smoothed cluster-size form is not needed when
    only used codes move). ``restart``: a usage EMA per code; a code whose usage falls under
    ``restart_threshold / num_codes`` is moved onto a latent drawn from the batch. Without
    ``ema`` the restart goes through a ``Buffer`` offset added to the trained codebook.
    """

    def __init__(self, num_codes: int, dim: int, *, l2_norm: bool = True,
                 commitment: float = 0.25, ema: bool = False, ema_decay: float = 0.99,
                 restart: bool = False, restart_threshold: float = 0.03,
                 rngs: nnx.Rngs):
        self.num_codes, self.dim, self.depth = int(num_codes), int(dim), 1
        self.l2_norm, self.commitment = bool(l2_norm), float(commitment)
        self.ema, self.ema_decay = bool(ema), float(ema_decay)
        self.restart, self.restart_threshold = bool(restart), float(restart_threshold)
        init = jax.random.normal(rngs.params(), (self.num_codes, self.dim), jnp.float32)
        init = _l2(init) if self.l2_norm else init / math.sqrt(self.dim)
        self.codebook = Buffer(init) if self.ema else nnx.Param(init)
        if self.restart:
            self.usage = Buffer(jnp.full((self.num_codes,), 1.0 / self.num_codes, jnp.float32))
            self.offset = None if self.ema else Buffer(jnp.zeros_like(init))

    def vectors(self) -> jax.Array:
        """The codebook the search and the decoder use ``[num_codes, dim]``."""
        e = self.codebook[...]
        if self.restart and not self.ema:
            e = e + self.offset[...]
        return _l2(e) if self.l2_norm else e

    def lookup(self, x: jax.Array):
        """Flat ``x [N, dim]`` -> (x as searched (normalised if ``l2_norm``), e_k with codebook
        gradients, codes [N], aux with ``loss`` and ``assign``)."""
        x = _l2(x) if self.l2_norm else x
        e = self.vectors()
        codes = nearest(jax.lax.stop_gradient(x), jax.lax.stop_gradient(e))
        e_k = e[codes]
        commit = jnp.mean(jnp.square(x - jax.lax.stop_gradient(e_k)))
        loss = self.commitment * commit
        aux = {"commitment": commit}
        if not self.ema:
            codebook = jnp.mean(jnp.square(jax.lax.stop_gradient(x) - e_k))
            loss = loss + codebook
            aux["codebook"] = codebook
        aux["loss"], aux["assign"] = loss, self._updates(jax.lax.stop_gradient(x), codes)
        return x, e_k, codes, aux

    def _updates(self, x: jax.Array, codes: jax.Array) -> jax.Array:
        """Assign terms for the EMA codebook and dead-code restart (0 when both are off)."""
        total = jnp.zeros((), jnp.float32)
        if not (self.ema or self.restart):
            return total
        onehot = jax.nn.one_hot(codes, self.num_codes, dtype=jnp.float32)   # [N, K]
        counts = onehot.sum(0)
        used = counts > 0
        if self.ema:
            old = self.codebook[...]
            mean = (onehot.T @ x) / jnp.maximum(counts, 1.0)[:, None]
            new = jnp.where(used[:, None], self.ema_decay * old + (1 - self.ema_decay) * mean,
                            old)
        if self.restart:
            usage = self.usage[...] * self.ema_decay + (1 - self.ema_decay) * counts / x.shape[0]
            dead = usage < self.restart_threshold / self.num_codes
            # Deterministic draw of batch latents (no RNG stream in the train step).
            pick = x[jax.random.permutation(jax.random.key(0), x.shape[0])[
                jnp.arange(self.num_codes) % x.shape[0]]]
            usage = jnp.where(dead, 1.0 / self.num_codes, usage)
            total = total + assign(self.usage[...], usage)
            if self.ema:
                new = jnp.where(dead[:, None], pick, new)
            else:
                base = jax.lax.stop_gradient(self.codebook[...])
                off = self.offset[...]
                total = total + assign(off, jnp.where(dead[:, None], pick - base, off))
        if self.ema:
            total = total + assign(self.codebook[...], new)
        return total

    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, Any]]:
        shape = z.shape[:-1]
        x, e_k, codes, aux = self.lookup(z.reshape(-1, self.dim).astype(jnp.float32))
        z_q = x + jax.lax.stop_gradient(e_k - x)            # straight-through
        return z_q.reshape(*shape, self.dim), codes.reshape(shape), aux

    def codes_to_vectors(self, codes: jax.Array) -> jax.Array:
        return self.vectors()[jnp.asarray(codes, jnp.int32)]

    def vectors_to_codes(self, z_q: jax.Array) -> jax.Array:
        x = z_q.reshape(-1, self.dim)
        return nearest(_l2(x) if self.l2_norm else x, self.vectors()).reshape(z_q.shape[:-1])


class LFQ(nnx.Module):
    """Lookup-free quantization (MAGVIT-v2): each of ``bits`` dims becomes -1 or +1.

    Code = sum_i [z_i > 0] 2^i; the implicit codebook is {-1, 1}^bits. The entropy penalty
    ``entropy_weight * (E[H(q(z))] - gamma * H(E[q(z)]))`` makes each latent confident and
    the batch use all codes, with ``q(c | z) = softmax_c(-|z - c|^2 / temperature)``. Since
    ``|z - c|^2`` splits over dims, q is a product of per-dim Bernoullis with
    ``p_i(+1) = sigmoid(4 z_i / temperature)``: the per-sample entropy is exact in O(bits);
    the codebook entropy is exact (over all 2^bits codes) up to ``EXACT_BITS`` bits and the
    sum of per-dim marginal entropies (an upper bound) beyond. Plus a commitment loss.
    """

    EXACT_BITS = 12

    def __init__(self, bits: int, *, entropy_weight: float = 0.1, gamma: float = 1.0,
                 temperature: float = 0.1, commitment: float = 0.25):
        self.bits, self.depth = int(bits), 1
        self.entropy_weight, self.gamma = float(entropy_weight), float(gamma)
        self.temperature, self.commitment = float(temperature), float(commitment)

    @property
    def dim(self) -> int:
        return self.bits

    @property
    def num_codes(self) -> int:
        return 2 ** self.bits

    def entropies(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(mean per-sample entropy, codebook entropy) in nats for flat ``z [N, bits]``."""
        logit = 4.0 * z / self.temperature
        p = jax.nn.sigmoid(logit)
        lp, lq = jax.nn.log_sigmoid(logit), jax.nn.log_sigmoid(-logit)
        per_sample = -jnp.sum(p * lp + (1 - p) * lq, -1).mean()
        if self.bits <= self.EXACT_BITS:
            signs = self.codes_to_vectors(jnp.arange(self.num_codes)) > 0      # [C, bits]
            logq = lp @ signs.T.astype(jnp.float32) + lq @ (~signs).T.astype(jnp.float32)
            avg = jnp.mean(jnp.exp(logq), 0)
            codebook = -jnp.sum(avg * jnp.log(jnp.maximum(avg, 1e-12)))
        else:
            m = jnp.mean(p, 0)
            codebook = -jnp.sum(m * jnp.log(jnp.maximum(m, 1e-12))
                                + (1 - m) * jnp.log(jnp.maximum(1 - m, 1e-12)))
        return per_sample, codebook

    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, Any]]:
        z = z.astype(jnp.float32)
        q = jnp.where(z > 0, 1.0, -1.0)
        z_q = z + jax.lax.stop_gradient(q - z)
        flat = z.reshape(-1, self.bits)
        per_sample, codebook = self.entropies(flat)
        commit = jnp.mean(jnp.square(z - q))
        loss = (self.commitment * commit
                + self.entropy_weight * (per_sample - self.gamma * codebook))
        aux = {"loss": loss, "commitment": commit, "sample_entropy": per_sample,
               "codebook_entropy": codebook}
        return z_q, self.vectors_to_codes(q), aux

    def vectors_to_codes(self, z_q: jax.Array) -> jax.Array:
        bits = (jax.lax.stop_gradient(z_q) > 0).astype(jnp.int32)
        return jnp.sum(bits * (2 ** jnp.arange(self.bits, dtype=jnp.int32)), -1)

    def codes_to_vectors(self, codes: jax.Array) -> jax.Array:
        codes = jnp.asarray(codes, jnp.int32)[..., None]
        bits = (codes >> jnp.arange(self.bits, dtype=jnp.int32)) & 1
        return bits.astype(jnp.float32) * 2.0 - 1.0


class RQ(nnx.Module):
    """Residual quantization (RQ-VAE): ``depth`` rounds of VQ on what is left to explain.

    ``r_0 = z; k_d = NN(r_d, C_d); r_{d+1} = r_d - C_d[k_d]; z_q = sum_d C_d[k_d]`` with one
    codebook per depth or one ``shared`` by all. Codes come out as ``[..., depth]`` with depth
    ``d``'s code offset by ``d * codebook_size``, so ``num_codes = depth * codebook_size`` and
    each depth has its own id range in the vocabulary (docs/tokenizers.md); flattened
    position-major, an image is ``c(p1,d0) c(p1,d1) ... c(p2,d0) ...``. Loss (RQ-VAE):
    codebook terms per depth plus ``commitment * sum_d |z - sg(sum_{<=d} e)|^2``. Codebooks
    are plain Euclidean, trained by gradient (no l2 norm: residuals shrink with depth).
    """

    def __init__(self, codebook_size: int, dim: int, depth: int, *, shared: bool = False,
                 commitment: float = 0.25, rngs: nnx.Rngs):
        self.codebook_size, self.dim, self.depth = int(codebook_size), int(dim), int(depth)
        self.shared, self.commitment = bool(shared), float(commitment)
        make = lambda: VQ(codebook_size, dim, l2_norm=False, commitment=0.0, rngs=rngs)
        self.levels = nnx.List([make() for _ in range(1 if shared else self.depth)])

    @property
    def num_codes(self) -> int:
        return self.depth * self.codebook_size

    def _vq(self, d: int) -> VQ:
        return self.levels[0 if self.shared else d]

    def quantize(self, x: jax.Array):
        """Flat ``x [N, dim]`` -> (z_q with codebook grads, codes [N, depth] (no offset),
        per-depth codebook loss, commitment loss)."""
        residual, total = x, jnp.zeros_like(x)
        codes, book_loss, commit = [], 0.0, 0.0
        for d in range(self.depth):
            _, e_k, k, aux = self._vq(d).lookup(residual)
            residual = residual - jax.lax.stop_gradient(e_k)
            total = total + e_k
            codes.append(k)
            book_loss = book_loss + aux["codebook"]
            commit = commit + jnp.mean(jnp.square(x - jax.lax.stop_gradient(total)))
        return total, jnp.stack(codes, -1), book_loss, commit

    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, Any]]:
        shape = z.shape[:-1]
        x = z.reshape(-1, self.dim).astype(jnp.float32)
        total, codes, book, commit = self.quantize(x)
        # Straight-through for the encoder; each codebook gets its own term's gradient.
        z_q = x + jax.lax.stop_gradient(total - x)
        offsets = jnp.arange(self.depth, dtype=jnp.int32) * self.codebook_size
        aux = {"loss": book + self.commitment * commit, "codebook": book, "commitment": commit}
        return (z_q.reshape(*shape, self.dim),
                (codes + offsets).reshape(*shape, self.depth), aux)

    def codes_to_vectors(self, codes: jax.Array) -> jax.Array:
        """``[..., depth]`` codes (with per-depth offsets) -> ``[..., dim]``."""
        codes = jnp.asarray(codes, jnp.int32)
        out = 0.0
        for d in range(self.depth):
            out = out + self._vq(d).vectors()[codes[..., d] - d * self.codebook_size]
        return out

    def vectors_to_codes(self, z_q: jax.Array) -> jax.Array:
        """Greedy residual encoding of any vectors (for a sum of codes this need not give the
        codes back: greedy search can find a different decomposition)."""
        shape = z_q.shape[:-1]
        _, codes, _, _ = self.quantize(z_q.reshape(-1, self.dim))
        offsets = jnp.arange(self.depth, dtype=jnp.int32) * self.codebook_size
        return (codes + offsets).reshape(*shape, self.depth)
