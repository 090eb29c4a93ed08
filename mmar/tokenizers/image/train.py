"""The image tokenizer as a task of the one trainer (mmar/train/step.py `Task`).

`tokenizer_task` is what `mmar tokenizer-train` trains (mmar/jobs/tokenizer_train.py) and what
a run directory's tokenizer checkpoint is loaded as (mmar/rundir.py); its optimizer gives
codebook buffers and the discriminator their own groups.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mmar import derived
from mmar.tokenizers.image import autoencoder, codebooks, losses
from mmar.train import optim
from mmar.train import step as step_lib


def tokenizer_task(cfg) -> step_lib.Task:
    tok_cfg = cfg.image_tokenizer

    def loss_fn(model, batch):
        return losses.reconstruction_loss(model, autoencoder.to_model_range(batch["images"]),
                                          tok_cfg)

    make_module = lambda rngs: autoencoder.Autoencoder(tok_cfg, rngs=rngs)
    labels = param_groups(make_module)
    return step_lib.Task(
        name="tokenizer",
        make_module=make_module,
        loss_fn=loss_fn,
        batch_axes={"images": ("batch", None, None, None)},
        tokens_per_example=derived.codes_per_image(cfg),
        make_optimizer=(None if set(jax.tree.leaves(labels)) == {"params"} else
                        lambda train_cfg: tokenizer_optimizer(train_cfg, labels)),
    )


def param_groups(make_module) -> dict:
    """Pure dict of group labels: "buffer" (codebooks.Buffer: set through ``assign``),
    "disc" (the discriminator) or "params" (everything else)."""
    module = nnx.eval_shape(lambda: make_module(nnx.Rngs(0)))
    state = nnx.state(module, nnx.Param)

    def label(path, var):
        if isinstance(var, codebooks.Buffer):
            return "buffer"
        return "disc" if path and path[0] == "discriminator" else "params"

    return nnx.to_pure_dict(nnx.map_state(label, state))


def tokenizer_optimizer(cfg, labels) -> optax.GradientTransformation:
    """AdamW (optim.make_optimizer) per group: the autoencoder and the discriminator get
    separate Adam moments and clipping; buffers get SGD with learning rate 1, which makes
    ``assign`` set them exactly (codebooks.py). Used only when the model has buffers or a
    discriminator, so FSQ runs keep the default optimizer (and checkpoint layout).

    Not ``optax.multi_transform``: its masked state leaves do not mirror the parameters, which
    the trainer's optimizer sharding (``optax.tree_map_params``) needs. Each Adam here keeps a
    full-tree state and sees zero gradients outside its group (its updates there are dropped),
    so the price is one extra copy of the moments when a discriminator is on."""
    groups = sorted(set(jax.tree.leaves(labels)) - {"buffer"})
    inner = {g: optim.make_optimizer(cfg) for g in groups}

    def only(tree, group):
        return jax.tree.map(lambda x, l: x if l == group else jnp.zeros_like(x), tree, labels)

    def init(params):
        return tuple(inner[g].init(params) for g in groups)

    def update(grads, state, params=None):
        out, new_state = jax.tree.map(lambda g: -g, grads), []   # buffers: SGD, lr 1
        for g, s in zip(groups, state):
            u, s = inner[g].update(only(grads, g), s, params)
            out = jax.tree.map(lambda o, x, l: x if l == g else o, out, u, labels)
            new_state.append(s)
        return out, tuple(new_state)

    return optax.GradientTransformation(init, update)
