"""A PatchGAN discriminator and the hinge losses, for the optional adversarial loss.

Enabled by ``image_tokenizer.disc.weight > 0`` (the Autoencoder then owns a
``PatchDiscriminator`` and a ``Buffer`` step counter). Generator and discriminator are
trained by *one* loss and one backward pass through the one trainer:

    loss = recon + aux + gate * disc.weight * G_hinge(D_frozen(x_hat))
                 + gate * D_hinge(D(x), D(stop_gradient(x_hat)))

``D_frozen`` is the discriminator with its parameters behind ``stop_gradient``, so the
generator term moves only the autoencoder and the discriminator term only the
discriminator: the gradient of the sum is the two players' gradients side by side. The
discriminator's parameters form their own group in the tokenizer's optimizer (its own Adam
moments and clipping; ``tokenizer_optimizer`` in train.py), which is all a "second
optimizer" means here. ``gate`` is 0 before ``disc.start`` steps (the warm-up: the
autoencoder first learns to reconstruct) and 1 after.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class PatchDiscriminator(nnx.Module):
    """conv(4x4, s2) -> [conv(4x4, s2), GroupNorm, LeakyReLU] -> conv(3x3) to one logit per
    patch; each logit sees a patch of the image, not the whole image."""

    def __init__(self, channels: int = 32, layers: int = 2, *, rngs: nnx.Rngs):
        self.conv_in = nnx.Conv(3, channels, (4, 4), strides=2, padding="SAME", rngs=rngs)
        blocks, ch = [], channels
        for _ in range(layers - 1):
            blocks.append((nnx.Conv(ch, 2 * ch, (4, 4), strides=2, padding="SAME", rngs=rngs),
                           nnx.GroupNorm(2 * ch, num_groups=min(8, 2 * ch), rngs=rngs)))
            ch *= 2
        self.blocks = nnx.List([nnx.List(b) for b in blocks])
        self.conv_out = nnx.Conv(ch, 1, (3, 3), padding="SAME", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.leaky_relu(self.conv_in(x), 0.2)
        for conv, norm in self.blocks:
            x = nnx.leaky_relu(norm(conv(x)), 0.2)
        return self.conv_out(x)


def frozen(module: nnx.Module) -> nnx.Module:
    """The same module with every parameter behind ``stop_gradient``."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.tree.map(jax.lax.stop_gradient, state))


def hinge_d(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def hinge_g(fake_logits: jax.Array) -> jax.Array:
    return -jnp.mean(fake_logits)
