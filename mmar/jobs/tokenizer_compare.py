"""Train FSQ, VQ, LFQ and RQ tokenizers on equal terms and write the comparison table.

    python -m mmar.jobs.tokenizer_compare --config=configs/t2i_shapes.py:tiny_flat \\
        --workdir=runs/tokenizers --steps=600

Every quantizer gets the same autoencoder, data, steps and 6 bits per image position (FSQ
levels (4, 4, 4), VQ 64 l2-normalised codes of dim 8 with EMA and dead-code restart, LFQ 6
bits, RQ depth 2 x 8 codes), so 96 bits per 32x32 image at downsample 8. (The shapes
scenes hold only ~20 distinct cell contents, ~100 with neighbours seen through the conv
encoder: a larger codebook could not be used on them whatever the quantizer.) Writes
``<workdir>/<quantizer>/tokenizer/``, ``<workdir>/results.json`` and ``<workdir>/table.md``
(the Markdown table in docs/tokenizers.md), and prints the table. The one job without an
`mmar` command.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

from mmar import config as config_lib
from mmar import rundir
from mmar.data import pipeline, synthetic
from mmar.jobs import tokenizer_train
from mmar.tokenizers.image import metrics

# The four contestants at 6 bits per position (see the module docstring): the quantizer and
# its options (image_tokenizer.<quantizer>.*).
CONTESTANTS = {
    "fsq": dict(quantizer="fsq", fsq=dict(levels=(4, 4, 4))),
    "vq": dict(quantizer="vq", vq=dict(codebook_size=64, codebook_dim=8, l2_norm=True,
                                       ema=True, dead_code_restart=True)),
    "lfq": dict(quantizer="lfq", lfq=dict(bits=6)),
    "rq": dict(quantizer="rq", rq=dict(codebook_size=8, codebook_dim=8, depth=2)),
}
# Shared by all: a conv autoencoder (codes see their neighbours: more contents to tell apart
# than the demo's patch tokenizer sees).
COMMON = dict(arch="conv", channels=8, channel_mult=(1, 2, 4), num_res_blocks=0)
COMMON_TRAIN = dict(lr=3e-3)
DATA = dict(num_train=4000)

COLUMNS = (("quantizer", "{}"), ("codes", "{}"), ("bits/image", "{:.0f}"),
           ("tokens/image", "{}"), ("PSNR shapes", "{:.2f}"), ("SSIM shapes", "{:.3f}"),
           ("PSNR photos", "{:.2f}"), ("usage %", "{:.1f}"), ("perplexity", "{:.1f}"),
           ("judge acc", "{:.3f}"), ("encode img/s", "{:,.0f}"), ("train s", "{:.0f}"))


def _config(spec: str, name: str, steps: int | None):
    cfg = config_lib.load(spec)
    with cfg.unlocked():
        if cfg.preset != "test":
            cfg.data.update(DATA)
        tok = cfg.image_tokenizer
        tok.update({**COMMON, **CONTESTANTS[name]})
        tok.train.update(COMMON_TRAIN)
        if cfg.preset == "test":
            tok.channels = 8
        if steps:
            tok.train.steps = steps
            tok.train.warmup_steps = min(tok.train.warmup_steps, steps // 4)
            tok.train.log_every = max(1, min(tok.train.log_every, steps))
    return config_lib.validate(cfg)


def run_one(spec: str, name: str, workdir: pathlib.Path, steps: int | None, log=print) -> dict:
    cfg = _config(spec, name, steps)
    tokenizer_train.run(cfg, workdir / name, log=log)   # resumes / skips when already trained
    tokenizer = rundir.load_tokenizer(cfg, workdir / name)
    test = pipeline.shapes_split(cfg.data, "test")
    records = [test[i] for i in range(len(test))]
    out = metrics.evaluate(tokenizer, records, synthetic.ShapesSpec.from_config(cfg.data),
                           image_size=cfg.data.image_size)
    summary = rundir.summary(workdir / name, rundir.TOKENIZER)
    out.update(quantizer=name, codes=tokenizer.num_codes, train_seconds=summary["train_seconds"],
               bits_per_image=out["tokens_per_image"] * math.log2(tokenizer.num_codes
                                                                  // tokenizer.depth))
    return out


def table(results: list[dict]) -> str:
    keys = ("quantizer", "codes", "bits_per_image", "tokens_per_image", "psnr", "ssim",
            "photo_psnr", "usage", "perplexity", "judge_accuracy", "encode_images_per_s",
            "train_seconds")
    lines = ["| " + " | ".join(c for c, _ in COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in results:
        vals = [r[k] * (100 if k == "usage" else 1) for k in keys]
        lines.append("| " + " | ".join(f.format(v) for (_, f), v in zip(COLUMNS, vals)) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="e.g. configs/t2i_shapes.py:tiny")
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, default=None, help="tokenizer steps (default: config)")
    p.add_argument("--only", default=",".join(CONTESTANTS), help="comma-separated subset")
    a = p.parse_args(argv)
    workdir = pathlib.Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(m, flush=True)
    results = [run_one(a.config, name, workdir, a.steps, log=log)
               for name in a.only.split(",")]
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    text = table(results)
    (workdir / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
