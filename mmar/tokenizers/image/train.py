"""Training the image tokenizer through the one trainer, and encoding images with it.

`mmar tokenizer-train` writes `<workdir>/tokenizer/` (checkpoints, metrics.jsonl, TensorBoard
events, summary.json); the decoder job then encodes its images with that checkpoint.
"""
from __future__ import annotations

import time

import jax
import numpy as np
from etils import epath

from mmar.data import pipeline
from mmar.parallel import mesh as mesh_lib
from mmar.tokenizers.image import autoencoder, losses
from mmar.train import step as step_lib
from mmar.train import trainer

SUBDIR = "tokenizer"


def tokenizer_task(cfg) -> step_lib.Task:
    tok_cfg = cfg.image_tokenizer
    size = cfg.data.image_size

    def loss_fn(model, batch):
        return losses.reconstruction_loss(model, autoencoder.to_model_range(batch["images"]),
                                          tok_cfg)

    return step_lib.Task(
        name="tokenizer",
        make_module=lambda rngs: autoencoder.Autoencoder(tok_cfg, rngs=rngs),
        loss_fn=loss_fn,
        batch_axes={"images": ("batch", None, None, None)},
        tokens_per_example=(size // tok_cfg.downsample) ** 2,
    )


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

    def __init__(self, cfg, workdir):
        task = tokenizer_task(cfg)
        mesh, rule_table = mesh_lib.from_config(cfg.mesh)
        self.model_state, self.params, self.step = trainer.load_params(
            task, mesh, epath.Path(workdir) / SUBDIR, rule_table=rule_table)
        self.num_codes = int(np.prod(cfg.image_tokenizer.levels))
        self._encode = jax.jit(lambda p, x: self.model_state.merge(p).encode(
            autoencoder.to_model_range(x)))
        self._decode = jax.jit(lambda p, c: autoencoder.to_uint8(
            self.model_state.merge(p).decode_codes(c)))

    def encode(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8 [N, H, W, 3] -> codes [N, h*w] (raster order)."""
        out = [np.asarray(self._encode(self.params, images[i:i + batch_size]))
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out).reshape(len(images), -1)

    def decode(self, codes: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """codes [N, h*w] -> uint8 [N, H, W, 3]."""
        codes = np.asarray(codes)
        side = int(round(np.sqrt(codes.shape[1])))
        codes = codes.reshape(len(codes), side, side)
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
