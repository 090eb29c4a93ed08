"""Input files -> decoded images -> image-tokenizer codes, one bounded batch at a time.

    reader (webdataset / parquet / obelics: Items and Bads, one record at a time)
      -> chunks of about `batch_size` images, decoded by `threads` threads while the
         reader goes on                                                       (a thread)
      -> a queue of at most 2 chunks
      -> the image tokenizer, `batch_size` images of one size per call (the last call
         padded, so one compiled shape serves every call of that size)        (the caller)
      -> {"where", "kind", "segments", "codes" [k, n]} per kept record, in file order
         (keep-aspect: "codes" a list of k flat arrays, "grids" [[h, w], ...])

Decoding runs beside encoding (PIL and XLA both release the GIL), so the encoder is the
bottleneck when the decoders keep up. What is in memory at any time: the reader's current
record (a tar member or a Parquet row group) and four chunks of decoded images, whatever
the data set's size. The output depends only on the input file (chunks are cut at the same
records every time), which is what makes resumed and multi-process runs byte-identical.
"""
from __future__ import annotations

import concurrent.futures
import glob as glob_lib
import queue
import threading
from typing import Callable, Iterator

import numpy as np
from etils import epath

from mmar import derived
from mmar.data.ingest import obelics, parquet, webdataset
from mmar.data.ingest.records import (Bad, IngestError, Item, Options, Position, Skip, Tally,
                                      decode_image)

READERS = {"webdataset": webdataset.read, "parquet": parquet.read, "obelics": obelics.read}
MAX_LOGGED = 20   # bad records logged one by one per source; the tally keeps counting


def parse(name: str) -> tuple[str, str]:
    """'parquet:data/*.parquet' -> ('parquet', 'data/*.parquet'); IngestError otherwise."""
    stream = derived.stream_source(name)
    if stream is None:
        raise IngestError(f"{name!r} is not KIND:GLOB with KIND one of "
                          f"{derived.STREAM_KINDS}")
    return stream


def list_inputs(pattern: str) -> list[str]:
    """The input files of a GLOB, sorted (local: glob with `**`; gs:// etc.: etils.epath)."""
    if "://" in pattern:
        parts = pattern.split("/")
        first = next((i for i, p in enumerate(parts) if any(c in p for c in "*?[")),
                     len(parts))
        base, rest = "/".join(parts[:first]), "/".join(parts[first:])
        found = [str(p) for p in epath.Path(base).glob(rest)] if rest else (
            [base] if epath.Path(base).exists() else [])
    else:
        found = [p for p in glob_lib.glob(pattern, recursive=True) if epath.Path(p).is_file()]
    if not found:
        raise IngestError(f"no input file matches {pattern!r}")
    return sorted(found)


def _decode(entry, size: int):
    if isinstance(entry, Bad):
        return entry
    try:
        return entry, [decode_image(data, size, f"image {k}")
                       for k, data in enumerate(entry.images)]
    except Skip as e:
        return Bad(entry.where, e.kind, str(e))


def _chunks(entries: Iterator, batch_size: int) -> Iterator[list]:
    chunk, n_images = [], 0
    for entry in entries:
        chunk.append(entry)
        n_images += len(entry.images) if isinstance(entry, Item) else 0
        if n_images >= batch_size or len(chunk) >= 4 * batch_size:
            yield chunk
            chunk, n_images = [], 0
    if chunk:
        yield chunk


def decoded_chunks(entries: Iterator, size: int, *, batch_size: int = 256,
                   threads: int = 2, depth: int = 2) -> Iterator[list]:
    """Chunks of (Item, [uint8 [size, size, 3]]) | Bad, decoded in a background thread
    (`size` an `Options` with keep_aspect: [H, W, 3] at each image's grid, `decode_image`)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def decode_all(part):
        return [_decode(e, size) for e in part]

    def produce():
        # Reading runs on while the pool decodes: a chunk's decodes are submitted (in parts
        # of 32 records) and their futures queued in order; the consumer waits on them.
        try:
            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                for chunk in _chunks(entries, batch_size):
                    futures = [pool.submit(decode_all, chunk[i:i + 32])
                               for i in range(0, len(chunk), 32)]
                    if not put(futures):
                        pool.shutdown(wait=True, cancel_futures=True)
                        return
            put(done)
        except BaseException as e:  # handed to the consumer, raised there
            put(e)

    thread = threading.Thread(target=produce, daemon=True, name="mmar-ingest-decode")
    thread.start()
    try:
        while True:
            x = q.get()
            if x is done:
                return
            if isinstance(x, BaseException):
                raise x
            yield [entry for f in x for entry in f.result()]
    finally:
        stop.set()
        thread.join(timeout=10)


def encode_shapes(encode, images: list, batch_size: int = 256) -> list[np.ndarray]:
    """Images of any sizes (a list of uint8 [H, W, 3]) -> their codes, one flat int32 array
    each, in order: `encode` (uint8 [N, H, W, 3] -> codes) is called on the images of one
    size at a time, `batch_size` at most, the last call padded with zeros so that one
    compiled shape serves each size (keep-aspect data has a few grid shapes, not many)."""
    out: list = [None] * len(images)
    by_shape: dict = {}
    for i, im in enumerate(images):
        by_shape.setdefault(np.shape(im), []).append(i)
    for shape, idx in by_shape.items():
        for s in range(0, len(idx), batch_size):
            part = idx[s:s + batch_size]
            batch = np.zeros((batch_size, *shape), np.uint8)
            batch[:len(part)] = np.stack([images[i] for i in part])
            codes = np.asarray(encode(batch), np.int32).reshape(len(batch), -1)
            for i, c in zip(part, codes):
                out[i] = c
    return out


def documents(path: str, kind: str, encode: Callable, opts: Options, tally: Tally, *,
              batch_size: int = 256, threads: int = 2, position: Position | None = None,
              log=print, logged: list | None = None) -> Iterator[dict]:
    """Every kept record of one input file with its images' codes; bad ones counted in
    `tally` (and logged, up to MAX_LOGGED over the list `logged` shared by a source)."""
    logged = [] if logged is None else logged
    entries = READERS[kind](path, opts, position)
    for chunk in decoded_chunks(entries, opts if opts.keep_aspect else opts.image_size,
                                batch_size=batch_size, threads=threads):
        good = []
        for entry in chunk:
            if isinstance(entry, Bad):
                tally.add_bad(entry)
                if len(logged) < MAX_LOGGED:
                    logged.append(entry)
                    log(f"[ingest] skipped {entry}")
                    if len(logged) == MAX_LOGGED:
                        log(f"[ingest] (further bad records are counted, not logged)")
            else:
                good.append(entry)
        images = [im for _, ims in good for im in ims]
        codes = encode_shapes(encode, images, batch_size)
        k = 0
        for item, ims in good:
            tally.add_kept()
            yield {"where": item.where, "kind": item.kind, "segments": item.segments,
                   **codes_record(codes[k:k + len(ims)], [im.shape[:2] for im in ims],
                                  opts.downsample if opts.keep_aspect else 0)}
            k += len(ims)


def codes_record(codes: list, sizes: list, downsample: int) -> dict:
    """{"codes"} of one document's images: [k, n] when they are square at one size, or
    with `downsample` (keep-aspect) a list of k flat arrays and {"grids"}: [h, w] each."""
    if not downsample:
        return {"codes": np.stack(codes) if codes else np.zeros((0, 0), np.int32)}
    return {"codes": list(codes),
            "grids": [[int(h) // downsample, int(w) // downsample] for h, w in sizes]}
