r"""Streamed ingestion speed and memory: WebDataset / Parquet -> token shards with the demo's
image tokenizer, per process, at two data-set sizes.

    PYTHONPATH=. python benchmarks/ingest.py [--sizes=2000,20000] [--formats=webdataset,parquet]

For each format and size it writes a data set of generated shape pictures (64-pixel JPEGs
with captions, in `--files` input files, exactly as the tests write them:
mmar/data/ingest/example.py), then runs `mmar pretokenize`'s writer
(mmar/data/ingest/shards.py: decode -> resize to 32 -> encode -> token shards) in a fresh
process, so each figure has its own peak resident memory:

- records/s: kept records written per second, one process, after the encoder is compiled;
- encode images/s: the image tokenizer alone on already-decoded uint8 batches of the same
  size in the same process (the ceiling ingestion can reach);
- ratio = records/s / encode images/s (one image per record): >= 1 means decoding and I/O
  never hold the encoder up;
- peak RSS (resource.getrusage ru_maxrss) and its growth during ingestion over the RSS
  before it (JAX, the compiled encoder): flat across sizes = bounded memory;
- where the time goes: reading the files alone (records/s, no decoding) and decoding alone
  (images/s, one thread, up to 1,000 images), each measured in the same process.

On a machine without an accelerator the encoder and the decoders share the same cores, so
the ratio stays below 1 by construction (each record costs read + decode + encode CPU time,
the encoder alone only encode); it reaches 1 only where the encoder runs elsewhere (GPU,
TPU) and the host's cores decode.

The tokenizer is the `tiny` preset's (configs/t2i_shapes.py: patch FSQ, downsample 8) with
random weights: speed does not depend on them. Each row prints the 1-minute load average
(`os.getloadavg`, what `uptime` shows) before and after: on a shared machine figures taken
under load are low, so say so where they are quoted.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FORMATS = ("webdataset", "parquet")
GLOBS = {"webdataset": "*.tar", "parquet": "*.parquet"}


def load() -> float:
    return round(os.getloadavg()[0], 2)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


def write_data(folder: pathlib.Path, fmt: str, size: int, files: int) -> str:
    """`size` records of `fmt` in `files` input files; returns the source's name."""
    from mmar.data.ingest import example
    per_file = -(-size // files)
    if fmt == "webdataset":
        example.write_webdataset(folder, records=per_file, files=files, fmt="jpeg")
    else:
        example.write_parquet(folder, records=per_file, files=files, fmt="jpeg",
                              row_group=100)
    return f"{fmt}:{folder}/{GLOBS[fmt]}"


def tokenizer(preset: str = "tiny_flat"):
    """The preset's image tokenizer with random weights on one local device."""
    import jax
    from mmar import config as config_lib
    from mmar.parallel import mesh as mesh_lib
    from mmar.tokenizers.image.runtime import ImageTokenizer
    from mmar.tokenizers.image.train import tokenizer_task
    from mmar.train import state as state_lib
    cfg = config_lib.load(str(ROOT / f"configs/t2i_shapes.py:{preset}"))
    mesh, rule_table = mesh_lib.from_config(cfg.mesh, jax.local_devices()[:1])
    model_state, params = state_lib.create(tokenizer_task(cfg).make_module, mesh, seed=0,
                                           rule_table=rule_table)
    return cfg, ImageTokenizer(model_state, params, 0, cfg.image_tokenizer)


def child(name: str, out_dir: str, batch: int, threads: int) -> dict:
    """One measurement, in this (fresh) process: encode speed, then ingestion."""
    import numpy as np
    from mmar.data.ingest import records, shards
    cfg, tok = tokenizer()
    size = cfg.data.image_size
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), np.uint8)
    tok.encode(images, batch_size=batch)                      # compile
    n_batches, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 3.0 or n_batches < 5:
        tok.encode(images, batch_size=batch)
        n_batches += 1
    encode_rate = n_batches * batch / (time.perf_counter() - t0)
    # Where the time goes, each stage alone in this thread: reading the files (no decode)
    # and decoding (one thread), per record; the encoder's figure is above.
    from mmar.data.ingest import stream
    kind, pattern = stream.parse(name)
    t0, n_read, sample = time.perf_counter(), 0, []
    for path in stream.list_inputs(pattern):
        for item in stream.READERS[kind](path, records.Options(image_size=size)):
            n_read += 1
            if len(sample) < 1000 and isinstance(item, records.Item):
                sample.append(item.images[0])
    read_rate = n_read / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for data in sample:
        records.decode_image(data, size)
    decode_rate = len(sample) / (time.perf_counter() - t0)
    rss_before = rss_mb()
    load_before = load()
    t0 = time.perf_counter()
    stats = shards.write_source(
        name, lambda x: tok.encode(x, batch_size=batch), out_dir,
        opts=records.Options(image_size=size), identity={"benchmark": "random tiny"},
        settings={}, batch_size=batch, threads=threads, log=lambda m: None)
    dt = time.perf_counter() - t0
    return {"records": stats["records"], "seconds": round(dt, 2),
            "records_per_s": round(stats["records"] / dt, 1),
            "encode_images_per_s": round(encode_rate, 1),
            "read_only_records_per_s": round(read_rate, 1),
            "decode_images_per_s_one_thread": round(decode_rate, 1),
            "ratio": round(stats["records"] / dt / encode_rate, 3),
            "rss_before_mb": round(rss_before, 1), "peak_rss_mb": round(rss_mb(), 1),
            "rss_growth_mb": round(rss_mb() - rss_before, 1),
            "load_before": load_before, "load_after": load()}


def measure(name: str, batch: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", name, "--out_dir", out, f"--batch={batch}",
             f"--threads={threads}"], capture_output=True, text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2"))
    if proc.returncode:
        raise RuntimeError(f"benchmark child failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="2000,20000", help="records per data set")
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--files", type=int, default=8, help="input files per data set")
    p.add_argument("--batch", type=int, default=256, help="images per encoder call")
    p.add_argument("--threads", type=int, default=2, help="decode threads")
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--out_dir", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.out_dir, a.batch, a.threads)))
        return {}
    rows = []
    print(f"uptime load (1 min) at start: {load()}; {os.cpu_count()} CPUs")
    print(f"{'format':<11} {'records':>8} {'records/s':>10} {'encode img/s':>13} "
          f"{'ratio':>6} {'read rec/s':>11} {'decode img/s':>13} {'peak RSS MB':>12} "
          f"{'growth MB':>10} {'load':>11}")
    for fmt in a.formats.split(","):
        for size in (int(s) for s in a.sizes.split(",")):
            with tempfile.TemporaryDirectory() as data:
                name = write_data(pathlib.Path(data), fmt, size, a.files)
                row = {"format": fmt, "size": size, **measure(name, a.batch, a.threads)}
            rows.append(row)
            print(f"{fmt:<11} {row['records']:>8} {row['records_per_s']:>10,.0f} "
                  f"{row['encode_images_per_s']:>13,.0f} {row['ratio']:>6.2f} "
                  f"{row['read_only_records_per_s']:>11,.0f} "
                  f"{row['decode_images_per_s_one_thread']:>13,.0f} "
                  f"{row['peak_rss_mb']:>12,.0f} {row['rss_growth_mb']:>10,.0f} "
                  f"{row['load_before']:>5}-{row['load_after']:<5}", flush=True)
    result = {"rows": rows, "batch": a.batch, "threads": a.threads, "files": a.files,
              "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                            time.gmtime())}
    for fmt in {r["format"] for r in rows}:
        mine = [r for r in rows if r["format"] == fmt]
        if len(mine) >= 2:
            small, large = mine[0], mine[-1]
            result[f"{fmt}_peak_rss_ratio"] = round(large["peak_rss_mb"] /
                                                    small["peak_rss_mb"], 3)
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
