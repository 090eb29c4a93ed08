"""`mmar pretokenize`: the run's trained image tokenizer over every configured source's train
split -> WORKDIR/tokens/<source>/ (this process's shards; the writer and its resume rules:
mmar/data/pretokenize.py, for the streamed webdataset:/parquet:/obelics: sources
mmar/data/ingest/shards.py; the format: mmar/data/tokens.py)."""
from __future__ import annotations

import os

import jax

from mmar import derived, rundir
from mmar.data import pretokenize, sources, tokens
from mmar.data.ingest import records as ingest_records
from mmar.data.ingest import shards as ingest_shards


def run(cfg, workdir, log=print, split: str = "train") -> dict:
    """Every source of the config, this process's shards."""
    # Each process encodes its own records on its own devices: no collective, no global
    # batch, so hosts never wait for each other (the decoder's trainer is what needs those).
    tokenizer = rundir.load_tokenizer(cfg, workdir, devices=jax.local_devices())
    identity = rundir.tokenizer_identity(cfg, workdir, tokenizer.step)
    log(f"[pretokenize] tokenizer step {tokenizer.step}, params sha256 "
        f"{identity['params_sha256'][:12]}.., {identity['num_codes']} codes")
    out = {}
    for name in pretokenize.entries(cfg.data):
        source_dir = os.path.join(rundir.tokens_dir(workdir), tokens.source_key(name))
        settings = tokens.source_settings(name, cfg.data)
        if derived.stream_source(name) is not None:  # straight from the files: data/ingest
            out[name] = ingest_shards.write_source(
                name, tokenizer.encode, source_dir,
                opts=ingest_records.Options.from_config(cfg.data,
                                                        cfg.image_tokenizer.downsample),
                identity=identity,
                settings=settings, split=split, process_index=jax.process_index(),
                process_count=jax.process_count(),
                max_bad_fraction=cfg.data.max_bad_fraction,
                batch_size=cfg.data.ingest.batch_size,
                threads=cfg.data.ingest.decode_threads, log=log)
            continue
        src = sources.load(name, cfg.data, split, log=log)
        out[name] = pretokenize.write_split(
            src, tokenizer.encode, source_dir, name=name, split=split, identity=identity,
            settings=settings, process_index=jax.process_index(),
            process_count=jax.process_count(), shard_records=cfg.data.shard_records, log=log)
    return out
