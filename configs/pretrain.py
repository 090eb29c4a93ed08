r"""Decoder pretraining at real scale: about 100M, 1B and 7B parameters (Llama-family shapes).

The data is the built-in mixture (shape captions, shape stories, digits), packed into long
rows; point `data.mixture` at your own prepared data (docs/data.md) for a real run. The
image tokenizer is a conv FSQ with a 15,360-code codebook (levels 8,8,8,6,5). The mesh
defaults to FSDP over every device; see docs/training.md for the strategies.

Check memory and sharding first (compiles for 256 fake devices, allocates nothing):

    mmar train --config=configs/pretrain.py:1b --dry-run --dry_run_devices=256

Then on a pod, each stage runs as one command on every host (JAX finds its peers):

    mmar tokenizer-train --config=configs/pretrain.py:1b --workdir=gs://BUCKET/runs/1b --distributed
    mmar train --config=configs/pretrain.py:1b --workdir=gs://BUCKET/runs/1b --distributed

`mmar launch` starts a stage on every host of a TPU pod, a GKE JobSet or a SLURM job and
adds `--distributed` (docs/pods.md), e.g.

    mmar launch tpu --zone=us-east5-a --accelerator_type=v5p-256 -- train --config=configs/pretrain.py:1b --workdir=gs://BUCKET/runs/1b

Parameter counts (decoder, embeddings included; checked by tests/test_configs.py):
    100m: 99,700,992    1b: 1,008,294,912    7b: 7,108,571,136

Training FLOPs per token at data.seq_len (model/flops.py; checked by tests/test_configs.py):
    100m: 0.64e9    1b: 6.36e9    7b: 45.48e9
"""
import pathlib

import ml_collections

from mmar import config as config_lib

PRESETS = ("100m", "1b", "7b")

# (d_model, n_layers, n_heads, n_kv_heads, head_dim, mlp_dim, seq_len, global batch, lr)
SHAPES = {
    "100m": (768, 12, 12, 4, 64, 2048, 2048, 256, 6e-4),
    "1b": (2048, 20, 16, 8, 128, 5632, 2048, 512, 3e-4),
    "7b": (4096, 32, 32, 8, 128, 14336, 4096, 512, 3e-4),
}


def get_config(arg: str = "100m") -> ml_collections.ConfigDict:
    if arg not in PRESETS:
        raise ValueError(f"unknown preset {arg!r} for configs/pretrain.py; one of {PRESETS}")
    c = config_lib.load(f"{pathlib.Path(__file__).with_name('t2i_shapes.py')}:tiny_flat")
    d, layers, heads, kv, hd, mlp, seq_len, batch, lr = SHAPES[arg]
    with c.unlocked():
        c.preset = arg
        c.data.update(seq_len=seq_len, pack=True, mixture="shapes:0.6,stories:0.3,digits:0.1",
                      num_workers=4, caption_dropout=0.1)
        c.image_tokenizer.update(arch="conv", channels=64, num_res_blocks=1)
        c.image_tokenizer.fsq.levels = (8, 8, 8, 6, 5)
        c.image_tokenizer.train.update(steps=20000, batch_size=256, lr=1e-3)
        c.model.update(vocab_size=0, d_model=d, n_layers=layers, n_heads=heads,
                       n_kv_heads=kv, head_dim=hd, mlp_dim=mlp, qk_norm=True,
                       dtype="bfloat16", param_dtype="float32", remat="full",
                       attention="blockwise")   # on GPUs, "cudnn" (docs/training.md)
        c.train.update(steps=100_000, batch_size=batch, lr=lr, warmup_steps=2000,
                       min_lr_ratio=0.1, weight_decay=0.1, log_every=100)
        c.mesh.update(data=1, fsdp=-1, tensor=1, strategy="fsdp")
        c.checkpoint.update(every_steps=1000, max_to_keep=3)
    return c
