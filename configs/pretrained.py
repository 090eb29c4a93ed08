r"""The released unified models' shapes, to plan a fine-tune before downloading them.

`emu3_8b` (BAAI/Emu3-Gen and -Chat: transformers `Emu3ForConditionalGeneration`) and
`chameleon_7b` (facebook/chameleon-7b, GAIR/Anole-7b: `ChameleonForConditionalGeneration`)
hold the model and image-tokenizer sections that `mmar import` writes for those checkpoints
(tests/export/test_pretrained_presets.py derives them from transformers' configs, whose
defaults are the released ones). They are for `--dry-run`: per-device memory of a full or a
LoRA fine-tune on a named mesh, with no weights on disk (docs/pretrained.md has the table):

    mmar train --config=configs/pretrained.py:emu3_8b --dry-run --dry_run_devices=8
    mmar train --config=configs/pretrained.py:emu3_8b --dry-run --dry_run_devices=8 --config.model.lora.rank=16

A real fine-tune trains the import itself: `--config=configs/run.py:RUN_DIR` (its
vocabulary is the checkpoint's; here the ids are mmar's, in as many embedding rows as the
checkpoint has, which is what memory depends on).

Sequences: a 512-pixel image is 4,096 codes plus 64 row ends for Emu3 (8x downsample) and
1,024 codes for Chameleon (16x), so `data.seq_len` is 8,192 and 4,096 (each model's
position limit is above it); the global batch is 32 sequences.

Parameter counts (decoder, embeddings included; checked by tests/test_configs.py):
    emu3_8b: 8,492,011,520    chameleon_7b: 7,013,666,816
"""
import pathlib

import ml_collections

from mmar import config as config_lib

PRESETS = ("emu3_8b", "chameleon_7b")

# (d_model, n_layers, n_heads, n_kv_heads, mlp_dim, vocab rows, rope theta, seq_len)
SHAPES = {
    "emu3_8b": (4096, 32, 32, 8, 14336, 184622, 1e6, 8192),
    "chameleon_7b": (4096, 32, 32, 32, 11008, 65536, 1e4, 4096),
}
# image_tokenizer fields: (pretrained kind, codebook size, code dim, downsample)
IMAGE_TOKENIZERS = {
    "emu3_8b": ("emu3_vqvae", 32768, 4, 8),
    "chameleon_7b": ("chameleon_vqgan", 8192, 256, 16),
}


def get_config(arg: str = "emu3_8b") -> ml_collections.ConfigDict:
    if arg not in PRESETS:
        raise ValueError(f"unknown preset {arg!r} for configs/pretrained.py; one of {PRESETS}")
    c = config_lib.load(f"{pathlib.Path(__file__).with_name('pretrain.py')}:7b")
    d, layers, heads, kv, mlp, rows, theta, seq_len = SHAPES[arg]
    kind, codes, dim, downsample = IMAGE_TOKENIZERS[arg]
    chameleon = arg.startswith("chameleon")
    with c.unlocked():
        c.preset = arg
        c.data.update(seq_len=seq_len, image_size=512)
        # (channel_mult: one entry per stride-2 stage, as validation asks; an imported
        # image tokenizer's own shapes come from its vq_config)
        c.image_tokenizer.update(pretrained=kind, quantizer="vq", downsample=downsample,
                                 channel_mult=(1, 2, 2, 4)[-(downsample.bit_length() - 1):])
        c.image_tokenizer.vq.update(codebook_size=codes, codebook_dim=dim)
        c.model.update(vocab_size=rows, d_model=d, n_layers=layers, n_heads=heads,
                       n_kv_heads=kv, head_dim=d // heads, mlp_dim=mlp, rope_theta=theta,
                       norm_eps=1e-5, qk_norm=chameleon,
                       qk_norm_kind="head_layernorm" if chameleon else "rms",
                       norm_placement="pre", tie_embeddings=False,
                       hf_class="chameleon" if chameleon else "emu3")
        c.train.update(batch_size=32, steps=1000, lr=2e-5, warmup_steps=50, min_lr_ratio=0.1,
                       weight_decay=0.0)
    return c
