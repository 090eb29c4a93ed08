"""`mmar export` and `mmar import` (argparse: they take a path, not a run config).

    mmar export CHECKPOINT --format hf --out DIR [--dtype bfloat16] [--max_shard_size 5GB]
    mmar import HF_DIR --out RUN_DIR [--config configs/FILE.py:PRESET]
"""
from __future__ import annotations

import argparse
import sys

from mmar import config as config_lib
from mmar.export import hf, import_hf


def _export(argv) -> int:
    p = argparse.ArgumentParser(prog="mmar export", description=(
        "An mmar decoder checkpoint -> a transformers directory (safetensors, config, "
        "tokenizer, image tokenizer). See docs/export.md."))
    p.add_argument("checkpoint", help="run workdir, its decoder/ dir, or a checkpoint step dir")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", default="hf", choices=("hf", "mmar"),
                   help="hf: Llama/Qwen3 (or the Chameleon/Emu3 class imported) for "
                   "transformers; mmar: mmar's own layout")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                   help="weight dtype (default: the checkpoint's)")
    p.add_argument("--max_shard_size", default="5GB", help="split above this (e.g. 200MB)")
    p.add_argument("--image_tokenizer", default=None,
                   help="image tokenizer run dir (default: <workdir>/tokenizer)")
    p.add_argument("--text_tokenizer", default=None,
                   help="a trained bpe / unigram run's tokenizer.json (default: "
                        "<workdir>/text_tokenizer/tokenizer.json)")
    a = p.parse_args(argv)
    hf.export(a.checkpoint, a.out, fmt=a.format, dtype=a.dtype,
              max_shard_size=a.max_shard_size, image_tokenizer=a.image_tokenizer,
              text_tokenizer=a.text_tokenizer)
    return 0


def _import(argv) -> int:
    p = argparse.ArgumentParser(prog="mmar import", description=(
        "A transformers Llama/Qwen3/Chameleon/Emu3 checkpoint (safetensors) -> "
        "RUN_DIR/decoder/checkpoints, "
        "vocabulary extended by mmar's special and image-code ids. See docs/export.md."))
    p.add_argument("hf_dir", help="directory with config.json and *.safetensors")
    p.add_argument("--out", required=True, help="run directory to write decoder/ into")
    p.add_argument("--config", default=None,
                   help="mmar config (FILE.py:PRESET) for the sections a text LLM lacks "
                        "(image tokenizer, data, train); not needed for an mmar export")
    p.add_argument("--seed", type=int, default=0, help="seed of the new embedding rows")
    p.add_argument("--image_decoder", default=None,
                   help="Chameleon / Anole: the released VQ-GAN converted by `python -m "
                        "mmar.tokenizers.image.convert_vqgan` (its decoder draws the images; "
                        "transformers' checkpoint holds the encoder only)")
    a = p.parse_args(argv)
    base = config_lib.load(a.config) if a.config else None
    import_hf.import_hf(a.hf_dir, a.out, base, seed=a.seed, image_decoder=a.image_decoder)
    return 0


def main(command: str, argv) -> int:
    try:
        return {"export": _export, "import": _import}[command](list(argv))
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as e:
        print(f"mmar {command}: error: {e}", file=sys.stderr)
        return 1
