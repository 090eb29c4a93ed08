"""A training run in its own process, for the multi-host and kill -9 tests.

    python tests/train/worker.py WORKDIR --steps=N [--devices=D] [--process_id=I
        --num_processes=P --port=PORT] [--checkpoint_every=K]

Trains the small decoder of tests/train/test_sharded_step.py on synthetic batches that are
a pure function of the batch index, so runs with any process count see the same global
batches: process I feeds rows [I*B/P, (I+1)*B/P) of each. Prints the trainer's progress.
"""
import argparse
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("workdir")
parser.add_argument("--steps", type=int, required=True)
parser.add_argument("--devices", type=int, default=8)
parser.add_argument("--process_id", type=int, default=None)
parser.add_argument("--num_processes", type=int, default=None)
parser.add_argument("--port", type=int, default=None)
parser.add_argument("--checkpoint_every", type=int, default=5)
parser.add_argument("--mesh", default="2,2,2", help="data,fsdp,tensor")
args = parser.parse_args()
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"

import grain  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from mmar import schema  # noqa: E402
from mmar.model.transformer import Decoder  # noqa: E402
from mmar.parallel import distributed  # noqa: E402
from mmar.parallel import mesh as mesh_lib  # noqa: E402
from mmar.train import loss as loss_lib  # noqa: E402
from mmar.train import step as step_lib  # noqa: E402
from mmar.train import trainer  # noqa: E402
from mmar.train.decoder import BATCH_AXES  # noqa: E402

GLOBAL_BATCH, SEQ = 8, 16
MODEL = ml_collections.ConfigDict(dict(
    vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_dim=64,
    rope_theta=10000.0, qk_norm=True, tie_embeddings=False, norm_eps=1e-5, dtype="float32",
    param_dtype="float32", remat="none", init_std=0.02))


def global_rows(index: int) -> dict:
    rng = np.random.default_rng(index)
    tokens = rng.integers(0, 256, (GLOBAL_BATCH, SEQ), dtype=np.int32)
    seg = np.ones((GLOBAL_BATCH, SEQ), np.int32)
    return {"tokens": tokens, "positions": np.tile(np.arange(SEQ, dtype=np.int32),
                                                   (GLOBAL_BATCH, 1)),
            "segment_ids": seg, "modality": (tokens % 2).astype(np.int32),
            "loss_weights": seg.astype(np.float32)}


def local_part(index: int) -> dict:
    n, i = jax.process_count(), jax.process_index()
    rows = GLOBAL_BATCH // n
    return {k: v[i * rows:(i + 1) * rows] for k, v in global_rows(index).items()}


def main():
    port = args.port
    distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}" if port else None,
        num_processes=args.num_processes, process_id=args.process_id)
    data = grain.MapDataset.range(10_000).map(local_part).to_iter_dataset()
    cfg = schema.complete(dict(
        steps=args.steps, lr=1e-2, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1,
        weight_decay=0.1, grad_clip=1.0, log_every=1), section="train")

    def loss_fn(model, batch):
        logits = model(batch["tokens"], batch["positions"], batch["segment_ids"])
        return loss_lib.decoder_loss(logits, batch, z_loss=1e-4)

    task = step_lib.Task("worker", lambda rngs: Decoder(MODEL, rngs=rngs), loss_fn,
                         BATCH_AXES, tokens_per_example=SEQ)
    sizes = dict(zip(mesh_lib.AXES, map(int, args.mesh.split(","))))
    mesh, rule_table = mesh_lib.from_config(sizes)
    result = trainer.train(task, cfg=cfg, mesh=mesh, data_iter=iter(data),
                           workdir=args.workdir, checkpoint_every=args.checkpoint_every,
                           max_to_keep=2, rule_table=rule_table,
                           log=lambda m: print(m, flush=True))
    print(f"finished at step {result.step}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
