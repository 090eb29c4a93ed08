"""Writing token shards: a trained image tokenizer over a source -> ArrayRecord files.

The job that runs it over a run's sources is `mmar pretokenize` (mmar/jobs/pretokenize.py):

    mmar pretokenize --config=configs/t2i_shapes.py:tiny --workdir=runs/demo
    mmar train       --config=configs/t2i_shapes.py:tiny --workdir=runs/demo \
                     --config.data.pretokenized=True

Encodes every image of the train split of each configured source (`data.mixture`, or the
shapes pairs) once, with `WORKDIR/tokenizer`'s newest checkpoint, into
`WORKDIR/tokens/<source>/` (format: mmar/data/tokens.py). Why a separate job: on a pod the
encode runs on every host's accelerators in parallel and once, not at the start of every
training run, and a training run then starts in seconds whatever the data set's size.

- Per process: process i of n (jax.process_index/count) encodes records i::n into its own
  shards, `data.shard_records` records each; nothing is shared between processes but
  metadata.json, which every process writes with the same content.
- Resumable: a shard is written to `<name>.tmp` and renamed when complete, then marked by
  `<name>.done`; a rerun skips marked shards and rewrites the rest, so a kill loses at most
  one shard per process and the result is byte-identical to a run never stopped (each
  shard is encoded in the same batches either way).
- Progress every few seconds: images/s and ETA.
"""
from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from mmar import derived
from mmar.data import mixture, tokens

WRITER_OPTIONS = "group_size:1"   # one record per chunk: cheap random access for Grain


def _write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _file_digest(path: str) -> tuple[int, str]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return os.path.getsize(path), h.hexdigest()


def _is_done(path: str) -> bool:
    """A shard counts as done when its marker exists and the file still matches it."""
    try:
        with open(path + ".done") as f:
            done = json.load(f)
    except (OSError, ValueError):
        return False
    return os.path.isfile(path) and os.path.getsize(path) == done.get("bytes")


RECORD_FORMAT = "MMTK | u32 LE header length | JSON header | int32 LE codes (mmar/data/tokens.py)"


def merge_metadata(source_dir: str, *, name: str, split: str, identity: dict, settings: dict,
                   layout: dict, mismatch, record_format: str = RECORD_FORMAT) -> dict:
    """Creates metadata.json or adds `split`'s `layout` to it. TokensError when the shards
    there came from another tokenizer or settings, or when the split was written with
    another layout (`mismatch(old_layout)` says how, in a sentence)."""
    path = os.path.join(source_dir, "metadata.json")
    if os.path.isfile(path):
        meta = tokens.read_metadata(source_dir)
        tokens.check_tokenizer(meta, identity, settings, path)
        old = meta["splits"].get(split)
        if old is not None and old != layout:
            raise tokens.TokensError(f"{path}: split {split!r} {mismatch(old)}, or delete "
                                     f"{os.path.join(source_dir, split)}")
    else:
        meta = {"format": tokens.FORMAT, "source": name, "tokenizer": identity,
                "source_settings": settings, "splits": {}, "record_format": record_format}
    meta["splits"][split] = layout
    os.makedirs(source_dir, exist_ok=True)
    _write_json(path, meta)
    return meta


def write_metadata(source_dir: str, *, name: str, split: str, identity: dict, settings: dict,
                   num_records: int, process_count: int, shard_records: int) -> dict:
    """Creates or extends metadata.json; TokensError if existing shards are incompatible."""
    layout = {"num_records": num_records, "process_count": process_count,
              "shard_records": shard_records,
              "shards": {s["file"]: s["records"]
                         for s in tokens.plan(num_records, process_count, shard_records)}}
    return merge_metadata(
        source_dir, name=name, split=split, identity=identity, settings=settings,
        layout=layout, mismatch=lambda old: (
            f"was written with {old['num_records']} records, {old['process_count']} "
            f"processes, {old['shard_records']} records per shard; this run has "
            f"{num_records}, {process_count}, {shard_records}: use the same settings to "
            "resume"))


def write_split(source, encode, source_dir: str, *, name: str, split: str, identity: dict,
                settings: dict | None = None, process_index: int = 0, process_count: int = 1,
                shard_records: int = 1024, batch_size: int = 256, log=print,
                progress_every_s: float = 5.0, on_record=None) -> dict:
    """Writes this process's shards of `source` (records `process_index::process_count`).

    `encode`: uint8 images [N, H, W, 3] -> codes [N, n]. `on_record(file, j)` is called after
    each record is written (tests use it to interrupt a run mid-shard). Returns counts.
    """
    settings = settings or {}
    n_total = len(source)
    write_metadata(source_dir, name=name, split=split, identity=identity, settings=settings,
                   num_records=n_total, process_count=process_count,
                   shard_records=shard_records)
    split_dir = os.path.join(source_dir, split)
    os.makedirs(split_dir, exist_ok=True)
    mine = [s for s in tokens.plan(n_total, process_count, shard_records)
            if s["process"] == process_index]
    todo = [s for s in mine if not _is_done(os.path.join(split_dir, s["file"]))]
    n_todo = sum(s["records"] for s in todo)
    where = f"{tokens.source_key(name)}/{split} process {process_index}/{process_count}"
    log(f"[pretokenize] {where}: {len(mine)} shards, {len(mine) - len(todo)} already done, "
        f"{n_todo} of {sum(s['records'] for s in mine)} records to encode")
    t0 = last = time.perf_counter()
    n_records = n_images = 0
    for shard in todo:
        path = os.path.join(split_dir, shard["file"])
        tmp = path + ".tmp"
        writer = ArrayRecordWriter(tmp, WRITER_OPTIONS)
        indices = list(tokens.shard_indices(shard))
        try:
            for start in range(0, len(indices), batch_size):
                batch = indices[start:start + batch_size]
                docs = [mixture.as_document(source[i]) for i in batch]
                images = [im for _, _, ims in docs for im in ims]
                codes = (np.asarray(encode(np.stack(images)), np.int32) if images
                         else np.zeros((0, 0), np.int32))
                k = 0
                for j, (i, (kind, segments, ims)) in enumerate(zip(batch, docs)):
                    writer.write(tokens.encode_record(i, kind, segments,
                                                      codes[k:k + len(ims)]))
                    k += len(ims)
                    if on_record is not None:
                        on_record(shard["file"], start + j)
                n_records += len(batch)
                n_images += len(images)
                now = time.perf_counter()
                if now - last >= progress_every_s:
                    last, rate = now, n_records / (now - t0)
                    log(f"[pretokenize] {where}: {n_records}/{n_todo} records, "
                        f"{n_images / (now - t0):,.0f} images/s, "
                        f"ETA {(n_todo - n_records) / max(rate, 1e-9):.0f}s")
        finally:
            writer.close()
        os.replace(tmp, path)
        size, digest = _file_digest(path)
        _write_json(path + ".done", {"records": shard["records"], "bytes": size,
                                     "sha256": digest})
    dt = time.perf_counter() - t0
    log(f"[pretokenize] {where}: {n_records} records, {n_images} images encoded in {dt:.1f}s "
        f"({n_images / max(dt, 1e-9):,.0f} images/s) -> {split_dir}")
    return {"records": n_records, "images": n_images, "seconds": dt,
            "shards_skipped": len(mine) - len(todo), "shards_written": len(todo)}


def entries(data_cfg) -> list[str]:
    """The sources a run trains on: the mixture's names, or the demo's shapes pairs."""
    if data_cfg.mixture:
        return [name for name, _ in derived.parse_mixture(data_cfg.mixture)]
    return ["shapes"]
