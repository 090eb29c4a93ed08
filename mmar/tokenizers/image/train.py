"""Training the image tokenizer through the one trainer, and encoding images with it.

`mmar tokenizer-train` writes `<workdir>/tokenizer/` (checkpoints, metrics.jsonl, TensorBoard
events, summary.json); the decoder job then encodes its images with that checkpoint.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx

from mmar.data import pipeline
from mmar.parallel import mesh as mesh_lib
from mmar.tokenizers.image import autoencoder, codebooks, losses, quantizers
from mmar.train import optim
from mmar.train import step as step_lib
from mmar.train import trainer

SUBDIR = "tokenizer"


def tokenizer_task(cfg) -> step_lib.Task:
    tok_cfg = cfg.image_tokenizer
    size = cfg.data.image_size

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
        tokens_per_example=(size // tok_cfg.downsample) ** 2 * _depth(tok_cfg),
        make_optimizer=(None if set(jax.tree.leaves(labels)) == {"params"} else
                        lambda train_cfg: tokenizer_optimizer(train_cfg, labels)),
    )


def _depth(tok_cfg) -> int:
    return int(tok_cfg.get("rq_depth", 2)) if tok_cfg.quantizer == "rq" else 1


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


def run(cfg, workdir, log=print) -> trainer.Result:
    workdir = epath.Path(workdir) / SUBDIR
    source = pipeline.ImageArraySource(pipeline.shapes_split(cfg.data, "train"), log=log)
    batches = pipeline.image_batches(source, global_batch=cfg.image_tokenizer.batch_size,
                                     seed=cfg.seed, num_workers=cfg.data.num_workers)
    mesh, rule_table = mesh_lib.from_config(cfg.mesh)
    result = trainer.train(tokenizer_task(cfg), cfg=cfg.image_tokenizer, mesh=mesh,
                           rule_table=rule_table,
                           data_iter=batches, workdir=workdir, config=cfg, seed=cfg.seed,
                           checkpoint_every=cfg.image_tokenizer.steps, log=log)
    trainer.write_summary(workdir / "summary.json", result, log=log)
    return result


class ImageTokenizer:
    """A trained tokenizer: uint8 images <-> integer codes, jitted, in batches."""

    def __init__(self, cfg, workdir, devices=None):
        """`devices`: the mesh's devices (default all; `mmar pretokenize` gives each process
        its local ones, so that every host encodes its own images alone)."""
        task = tokenizer_task(cfg)
        mesh, rule_table = mesh_lib.from_config(cfg.mesh, devices)
        self.model_state, self.params, self.step = trainer.load_params(
            task, mesh, epath.Path(workdir) / SUBDIR, rule_table=rule_table)
        self.num_codes = quantizers.num_codes_of(cfg.image_tokenizer)
        self.depth = _depth(cfg.image_tokenizer)
        self._encode = jax.jit(lambda p, x: self.model_state.merge(p).encode(
            autoencoder.to_model_range(x)))
        self._decode = jax.jit(lambda p, c: autoencoder.to_uint8(
            self.model_state.merge(p).decode_codes(c)))

    def encode(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8 [N, H, W, 3] -> codes [N, h*w*depth] (raster order; RQ: the depth codes of
        one position next to each other, each depth in its own id range)."""
        out = [np.asarray(self._encode(self.params, images[i:i + batch_size]))
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out).reshape(len(images), -1)

    def decode(self, codes: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """codes [N, h*w*depth] -> uint8 [N, H, W, 3]."""
        codes = np.asarray(codes)
        side = int(round(np.sqrt(codes.shape[1] // self.depth)))
        codes = codes.reshape(len(codes), side, side, *([self.depth] if self.depth > 1 else []))
        out = [np.asarray(self._decode(self.params, codes[i:i + batch_size]))
               for i in range(0, len(codes), batch_size)]
        return np.concatenate(out)


def encode_source(tokenizer: ImageTokenizer, source, log=print, batch_size: int = 512):
    """(captions, codes [N, n]) for every record of a shapes split, with progress."""
    t0, captions, codes = time.perf_counter(), [], []
    for start in range(0, len(source), batch_size):
        records = [source[i] for i in range(start, min(start + batch_size, len(source)))]
        captions += [r["caption"] for r in records]
        codes.append(tokenizer.encode(np.stack([r["image"] for r in records])))
    rate = len(source) / max(time.perf_counter() - t0, 1e-9)
    log(f"[tokenize] {len(source)} images -> codes ({rate:,.0f} images/s)")
    return captions, np.concatenate(codes)
