"""Streamed sources -> token shards, one output shard per input file: split across
processes, resumable after kill -9, bad records counted per file.

    WORKDIR/tokens/<key>/metadata.json                  the tokenizer, settings, input files
    WORKDIR/tokens/<key>/train/input_00003.array_record        input file 3's kept records
    WORKDIR/tokens/<key>/train/input_00003.array_record.done   records, bytes, sha256, the
                                                               input, seen/kept/bad by kind

(<key>: mmar.data.tokens.source_key, for example `webdataset-shards-1a2b3c4d`.)

- Work split: process i of n takes input files i, i+n, i+2n, ... (sorted by name). An
  output shard depends on its input file only, so n processes write exactly the files one
  process would, byte for byte, and a rerun may use another n.
- Resumable: a shard is written to `.tmp`, renamed when complete, then marked by `.done`;
  a rerun skips marked shards and redoes the rest, so kill -9 loses at most one shard per
  process and the result is byte-identical to an uninterrupted run.
- Bad records never stop the job: each `.done` keeps its file's counts by kind and the
  first few with their place; at the end, past `data.max_bad_fraction` of this process's
  records, one BadDataError names the counts and the worst file. The shards stay: rerunning
  with a larger fraction only re-reads the `.done` files.
- A progress line every few seconds: files, records, records/s and the ETA (from the files
  done and how far the reader is through the current one).

Record format and reader: mmar/data/tokens.py (a record's header `index` is its position in
its shard; `tokens.open_split` concatenates the shards in input order).
"""
from __future__ import annotations

import os
import time
from typing import Callable

from array_record.python.array_record_module import ArrayRecordWriter

from mmar.data import tokens
from mmar.data.ingest import stream
from mmar.data.ingest.records import Options, Position, Tally
from mmar.data.packing import BadDataError
from mmar.data.pretokenize import (RECORD_FORMAT, WRITER_OPTIONS, _file_digest, _is_done,
                                   _write_json, merge_metadata)


def shard_name(k: int) -> str:
    return f"input_{k:05d}.array_record"


def write_metadata(source_dir: str, *, name: str, split: str, identity: dict,
                   settings: dict, inputs: list[str]) -> dict:
    """Creates or checks metadata.json (TokensError when the shards came from another
    tokenizer, other settings or other input files)."""
    kind, pattern = stream.parse(name)
    layout = {"streamed": True, "kind": kind, "pattern": pattern, "inputs": inputs,
              "shards": {shard_name(k): f for k, f in enumerate(inputs)}}
    return merge_metadata(
        source_dir, name=name, split=split, identity=identity, settings=settings,
        layout=layout, record_format=RECORD_FORMAT + "; header index = position in shard",
        mismatch=lambda old: (
            f"was written from {len(old.get('inputs', []))} input files of "
            f"{old.get('pattern')!r}; this run has {len(inputs)} of {pattern!r}: use the "
            "same files to resume"))


def check_bad(name: str, per_file: dict, max_bad_fraction: float) -> Tally:
    """The tallies of `per_file` {input: Tally} added up; BadDataError past the fraction,
    naming the file with the most bad records."""
    total = Tally()
    for t in per_file.values():
        total.merge(t)
    if total.n_bad > max_bad_fraction * total.seen:
        worst, t = max(per_file.items(), key=lambda kv: (kv[1].n_bad, kv[1].n_bad /
                                                         max(kv[1].seen, 1)))
        first = f"; first: {t.examples[0]}" if t.examples else ""
        raise BadDataError(
            f"{name}: {total.n_bad} of {total.seen} records bad, more than "
            f"data.max_bad_fraction={max_bad_fraction} ({total.summary()}); worst file: "
            f"{worst} ({t.n_bad} of {t.seen} bad: {t.kinds()}{first})")
    return total


def _eta(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def write_source(name: str, encode: Callable, source_dir: str, *, opts: Options,
                 identity: dict, settings: dict, split: str = "train",
                 process_index: int = 0, process_count: int = 1,
                 max_bad_fraction: float = 0.01, batch_size: int = 256, threads: int = 2,
                 log=print, progress_every_s: float = 5.0, on_record=None) -> dict:
    """Writes this process's output shards of the streamed source `name` (see above).

    `encode`: uint8 [batch_size, H, W, 3] -> codes. `on_record(file, j)` runs after each
    record written (tests interrupt a run with it). Returns counts and the tally."""
    kind, pattern = stream.parse(name)
    inputs = stream.list_inputs(pattern)
    write_metadata(source_dir, name=name, split=split, identity=identity, settings=settings,
                   inputs=inputs)
    split_dir = os.path.join(source_dir, split)
    os.makedirs(split_dir, exist_ok=True)
    mine = list(range(process_index, len(inputs), process_count))
    todo = [k for k in mine if not _is_done(os.path.join(split_dir, shard_name(k)))]
    where = f"{tokens.source_key(name)}/{split} process {process_index}/{process_count}"
    log(f"[ingest] {where}: {len(mine)} of {len(inputs)} input files, "
        f"{len(mine) - len(todo)} already done")
    per_file, logged, files_done, pending = {}, [], 0, set(todo)
    t0 = last = time.perf_counter()
    n_new = 0
    for k in mine:
        path = os.path.join(split_dir, shard_name(k))
        if k not in pending:
            per_file[inputs[k]] = Tally.from_json(tokens.read_done(path))
            continue
        tally, position = Tally(), Position()
        writer = ArrayRecordWriter(path + ".tmp", WRITER_OPTIONS)
        try:
            for j, doc in enumerate(stream.documents(
                    inputs[k], kind, encode, opts, tally, batch_size=batch_size,
                    threads=threads, position=position, log=log, logged=logged)):
                writer.write(tokens.encode_record(j, doc["kind"], doc["segments"],
                                                  doc["codes"], doc.get("grids")))
                n_new += 1
                if on_record is not None:
                    on_record(shard_name(k), j)
                now = time.perf_counter()
                if now - last >= progress_every_s:
                    last = now
                    frac = (files_done + position.fraction) / len(todo)
                    log(f"[ingest] {where}: file {files_done + 1}/{len(todo)}, "
                        f"{n_new:,} records, {n_new / (now - t0):,.0f} records/s, "
                        f"ETA {_eta((now - t0) * (1 - frac) / max(frac, 1e-9))}")
        finally:
            writer.close()
        os.replace(path + ".tmp", path)
        size, digest = _file_digest(path)
        _write_json(path + ".done", {"records": tally.kept, "bytes": size, "sha256": digest,
                                     "input": inputs[k], **tally.to_json()})
        per_file[inputs[k]] = tally
        files_done += 1
    dt = time.perf_counter() - t0
    total = check_bad(name, per_file, max_bad_fraction)
    log(f"[ingest] {where}: {total.summary()}; {n_new} records written in {dt:.1f}s "
        f"({n_new / max(dt, 1e-9):,.0f} records/s) -> {split_dir}")
    return {"records": n_new, "seconds": dt, "shards_skipped": len(mine) - len(todo),
            "shards_written": len(todo), "tally": total.to_json()}


def encode_source(name: str, encode: Callable, opts: Options, *,
                  max_bad_fraction: float = 0.01, batch_size: int = 256, threads: int = 2,
                  log=print) -> list[dict]:
    """Every kept record of every input file with its codes, in memory (codes only, never
    the decoded images): what `mmar train` without `data.pretokenized` uses."""
    kind, pattern = stream.parse(name)
    per_file, logged, out = {}, [], []
    t0 = time.perf_counter()
    for path in stream.list_inputs(pattern):
        tally = per_file[path] = Tally()
        out += [{k: d[k] for k in ("kind", "segments", "codes", "grids") if k in d}
                for d in stream.documents(path, kind, encode, opts, tally,
                                          batch_size=batch_size, threads=threads, log=log,
                                          logged=logged)]
    total = check_bad(name, per_file, max_bad_fraction)
    dt = time.perf_counter() - t0
    log(f"[ingest] {name}: {total.summary()} ({len(out) / max(dt, 1e-9):,.0f} records/s)")
    return out
