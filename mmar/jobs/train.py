"""`mmar train`: encode the training images with the run's tokenizer (or read its token
shards), then train the decoder -> WORKDIR/decoder/ (checkpoints, metrics.jsonl, TensorBoard
events, summary.json). `mmar train --dry-run`: compile the step for the config's mesh only.

The task (model, loss, batch layout) is mmar/train/decoder.py; the run directory's layout
and loading are mmar/rundir.py.
"""
from __future__ import annotations

import json
import os

import jax
from etils import epath

from mmar import config as config_lib
from mmar import rundir
from mmar import schema
from mmar.data import pipeline, sources, tokens
from mmar.parallel import mesh as mesh_lib
from mmar.tokenizers.image.runtime import encode_source
from mmar.train import dry_run as dry_run_lib
from mmar.train import metrics as metrics_lib
from mmar.train import trainer
from mmar.train.decoder import decoder_task


def train_batches(cfg, workdir, vocab, log=print):
    """The decoder's batches: from token shards (`data.pretokenized`, checked against this
    run's tokenizers) or encoded in memory at start by the trained image tokenizer; text
    by the run's text tokenizer."""
    text = rundir.load_text_tokenizer(cfg, workdir)
    kw = dict(global_batch=cfg.train.batch_size, seed=cfg.seed, text=text)
    pair_kw = dict(kw, total_steps=cfg.train.steps)  # RAR's anneal schedule (orders.py)
    if cfg.data.pretokenized:  # `mmar pretokenize` shards (mmar/jobs/pretokenize.py)
        shards = rundir.open_tokens(cfg, workdir)
        log("[data] token shards: " + ", ".join(f"{n} ({len(s)} documents)"
                                                for n, s in shards.items()))
        if cfg.data.mixture:
            return sources.mixture_batches(cfg.data, None, vocab, documents=shards, log=log,
                                           **kw)
        return pipeline.decoder_batches(tokens.CaptionView(shards["shapes"]), vocab,
                                        cfg.data, **pair_kw)
    tokenizer = rundir.load_tokenizer(cfg, workdir)
    if cfg.data.mixture:  # several sources, packed (mmar/data/sources.py)
        return sources.mixture_batches(cfg.data, tokenizer.encode, vocab, log=log,
                                       downsample=cfg.image_tokenizer.downsample, **kw)
    captions, codes = encode_source(tokenizer, pipeline.shapes_split(cfg.data, "train"),
                                    log=log)
    source = pipeline.CaptionCodeSource(captions, codes)
    return pipeline.decoder_batches(source, vocab, cfg.data, **pair_kw)


def run(cfg, workdir, log=print) -> trainer.Result:
    workdir = epath.Path(workdir)
    if jax.process_index() == 0:   # the effective config: --config=configs/run.py:WORKDIR
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / schema.RUN_CONFIG).write_text(cfg.to_json(indent=1))
    vocab = config_lib.make_vocab(cfg)
    batches = train_batches(cfg, workdir, vocab, log=log)
    mesh, rule_table = mesh_lib.from_config(cfg.mesh)
    result = trainer.train(decoder_task(cfg), cfg=cfg.train, mesh=mesh, rule_table=rule_table,
                           data_iter=batches, workdir=workdir / rundir.DECODER, config=cfg,
                           seed=cfg.seed, checkpoint_every=cfg.checkpoint.every_steps,
                           max_to_keep=cfg.checkpoint.max_to_keep,
                           peak_flops=metrics_lib.measure_peak_flops(), log=log)
    trainer.write_summary(workdir / rundir.DECODER / rundir.SUMMARY, result, log=log)
    return result


def dry_run(cfg, num_devices: int, workdir=None, log=print) -> dict:
    """`mmar train --dry-run` on `num_devices` CPU devices (the CLI sets XLA_FLAGS to fake
    them before JAX starts its backend); writes WORKDIR/dry_run.json when given a workdir."""
    jax.config.update("jax_platforms", "cpu")
    figures = dry_run_lib.report(cfg, jax.devices()[:num_devices], log=log)
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, "dry_run.json")
        with open(path, "w") as f:
            json.dump(figures, f, indent=1)
        log(f"[dry-run] figures in {path}")
    return figures
