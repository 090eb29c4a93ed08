r"""Mixture-of-Transformers step time against the dense decoder with the same dimensions.

    PYTHONPATH=. python benchmarks/mot_step.py [--preset=25m] [--batch=4] [--seq=256]
        [--steps=7] [--image_fraction=0.5] [--matmuls=tiled,ragged]

Builds, in one process, the jitted train step (forward, backward, AdamW: the trainer's own
step function) of the dense decoder and of `model.mot.enabled=True` with each grouped-matmul
implementation in `--matmuls`, on the same batch: every row is text with one contiguous image
span of `image_fraction * seq` tokens (a text-image pair). After a warm-up of each, the
steps are timed round-robin (dense, mot-tiled, mot-ragged, dense, ...) so that load from
other processes hits every variant alike; reports median seconds per step and the ratio
MoT / dense (the issue's bar: <= 1.15). Also times one grouped matmul alone (forward +
gradient) against a dense matmul of the same rows. Prints one JSON line at the end.
"""
from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.train_mfu import PRESETS, batch_arrays, interleaved_seconds, mmar_step, model_config
from mmar import schema
from mmar.model import mot


def pair_modality(batch: int, seq: int, image_fraction: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    span = int(round(seq * image_fraction))
    out = np.zeros((batch, seq), np.int32)
    for row in out:
        start = rng.integers(1, max(2, seq - span))
        row[start:start + span] = 1
    return out


def matmul_fns(rows: int, k: int, f: int, modality: np.ndarray, matmuls, tile: int) -> dict:
    """Forward + gradient of one [rows, k] x [k, f] matmul: dense, and grouped per impl."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, rows, k)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(2, k, f)), jnp.float32) / k ** 0.5
    r = mot.route(jnp.asarray(modality.reshape(1, -1)[:, :rows]), 2, tile)

    def dense(x, w):
        return jnp.sum(jnp.tanh(x[0] @ w[0]))

    def grouped(impl):
        def fn(x, w):
            return jnp.sum(jnp.tanh(mot.grouped_matmul(mot.sort_rows(x, r), w, r, impl)))
        return fn

    fns = {"dense": dense, **{f"mot-{m}": grouped(m) for m in matmuls}}
    out = {}
    for name, fn in fns.items():
        g = jax.jit(jax.grad(fn, argnums=(0, 1)))
        out[name] = lambda g=g: jax.block_until_ready(g(x, w))
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="25m", choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--image_fraction", type=float, default=0.5)
    p.add_argument("--matmuls", default="tiled,ragged")
    p.add_argument("--tile", type=int, default=128)
    args = p.parse_args(argv)
    matmuls = [m for m in args.matmuls.split(",") if m]

    base = model_config(args.preset, "float32", "xla")
    batch = batch_arrays(args.batch, args.seq, base.vocab_size)
    batch["modality"] = pair_modality(args.batch, args.seq, args.image_fraction)
    fns = {"dense": mmar_step(base, batch)}
    for m in matmuls:
        cfg = schema.complete(dict(base.to_dict(), mot=dict(
            enabled=True, num_modalities=2, matmul=m, tile=args.tile)), section="model")
        fns[f"mot-{m}"] = mmar_step(cfg, batch)
    step = interleaved_seconds(fns, args.steps)
    mm = interleaved_seconds(matmul_fns(args.batch * args.seq, base.d_model, base.mlp_dim,
                                batch["modality"], matmuls, args.tile), args.steps)
    result = {"device": jax.devices()[0].device_kind, "preset": args.preset,
              "batch": args.batch, "seq": args.seq, "image_fraction": args.image_fraction,
              "tile": args.tile,
              "step_seconds": {k: round(v, 4) for k, v in step.items()},
              "step_ratio_vs_dense": {k: round(v / step["dense"], 3) for k, v in step.items()},
              "matmul_grad_ratio_vs_dense": {k: round(v / mm["dense"], 3)
                                             for k, v in mm.items()}}
    for k, v in step.items():
        print(f"{k:12s} {v * 1e3:8.1f} ms/step  x{v / step['dense']:.3f} dense   "
              f"(one matmul fwd+grad x{mm[k] / mm['dense']:.2f})")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
