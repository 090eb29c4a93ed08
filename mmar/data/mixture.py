"""Mixtures of document sources -> packed rows: the input pipeline for interleaved training.

    sources (shapes captions, shape stories, digits, a user's folder), images already codes
      -> each: this process's slice, shuffled (seed), repeated       grain.MapDataset
      -> grain.MapDataset.mix(weights)                               deterministic for a seed
      -> ToDocument: caption pairs flip to image-to-text by `i2t_fraction`, captions dropped by
         `caption_dropout`, text encoded, per-modality loss weights
      -> packing.pack -> batch -> worker processes (`num_workers`)

Every stage is a Grain dataset, so the iterator state (saved with each checkpoint) restores
the exact stream. Records are {"kind": "caption" | "document", "segments": [{"text": str} |
{"image": k}], "codes": int [k, n]}, the form `encode_documents` makes from any builder's
records (shapes {"image", "caption"} or documents {"segments", "images"}: `as_document`).
"""
from __future__ import annotations

import time

import grain
import jax
import numpy as np

from mmar.data import packing, sequences
from mmar.data.pipeline import with_workers
from mmar.vocab import Vocab, text_or_bytes


class DocumentCodeSource(grain.sources.RandomAccessDataSource):
    """Documents whose images are already image-tokenizer codes, in memory."""

    def __init__(self, records):
        self.records = list(records)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]


def as_document(rec):
    """A builder's record -> (kind, segments, uint8 images): what the in-memory encoder here
    and the token-shard writer (mmar/data/pretokenize.py) both read."""
    if "segments" in rec:
        return rec.get("kind", "document"), rec["segments"], list(rec["images"])
    return "caption", [{"text": rec["caption"]}, {"image": 0}], [rec["image"]]


def encode_documents(encode, source, *, log=print, batch_size: int = 512) -> DocumentCodeSource:
    """Tokenizes every image of `source` once: `encode` maps uint8 [N, H, W, 3] -> codes."""
    t0, out, n_images = time.perf_counter(), [], 0
    for start in range(0, len(source), batch_size):
        docs = [as_document(source[i]) for i in range(start, min(start + batch_size,
                                                                   len(source)))]
        images = [im for _, _, ims in docs for im in ims]
        codes = np.asarray(encode(np.stack(images))) if images else np.zeros((0, 0), np.int32)
        k = 0
        for kind, segments, ims in docs:
            out.append({"kind": kind, "segments": segments, "codes": codes[k:k + len(ims)]})
            k += len(ims)
        n_images += len(images)
    rate = n_images / max(time.perf_counter() - t0, 1e-9)
    log(f"[tokenize] {len(out)} documents, {n_images} images -> codes ({rate:,.0f} images/s)")
    return DocumentCodeSource(out)


class ToDocument(grain.transforms.RandomMap):
    """A record with codes -> {tokens, modality, loss_weights, source} (unpadded); text
    encoded by `text`, the run's text tokenizer (default: bytes, for a byte vocabulary)."""

    def __init__(self, vocab: Vocab, data_cfg, source_index: int = 0, text=None):
        self.vocab, self.text = vocab, text_or_bytes(text, vocab)
        self.i2t, self.caption_dropout = data_cfg.i2t_fraction, data_cfg.caption_dropout
        self.weights = dict(text_weight=data_cfg.loss_weight_text,
                            image_weight=data_cfg.loss_weight_image)
        self.source_index = source_index

    def random_map(self, record, rng: np.random.Generator):
        grids = record.get("grids")
        segs = [(sequences.TEXT, self.text.encode(s["text"])) if "text" in s else
                (sequences.IMAGE, self.vocab.image_body(
                    record["codes"][s["image"]], None if grids is None else grids[s["image"]]))
                for s in record["segments"]]
        if record["kind"] == "caption" and rng.random() < self.i2t:
            segs = segs[::-1]
        else:
            segs = sequences.drop_captions(segs, self.caption_dropout, rng)
        ex = sequences.document_example(segs, self.vocab, **self.weights)
        return {**ex, "source": np.int32(self.source_index)}


def process_slice(ds: grain.MapDataset, index: int | None = None,
                  count: int | None = None) -> grain.MapDataset:
    """This process's records: every `count`-th from `index` (jax.process_* by default).

    Slicing happens before shuffling, so processes read disjoint records that together cover
    the source, whatever the seed.
    """
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    return ds[index::count]


def mixture(sources, weights, vocab: Vocab, data_cfg, *, seed: int,
            process_index: int | None = None, process_count: int | None = None, text=None):
    """Endless mixed documents: each source sliced, shuffled, repeated, then mixed by weight."""
    if len(sources) != len(weights) or not sources:
        raise ValueError(f"{len(sources)} sources but {len(weights)} weights")
    parts = []
    for i, src in enumerate(sources):
        ds = process_slice(grain.MapDataset.source(src), process_index, process_count)
        ds = ds.seed(seed + 1009 * i).shuffle().repeat()
        parts.append(ds.random_map(ToDocument(vocab, data_cfg, i, text)))
    ds = grain.MapDataset.mix(parts, weights=[float(w) for w in weights])
    return ds


def document_batches(sources, weights, vocab: Vocab, data_cfg, *, global_batch: int,
                     seed: int, process_index: int | None = None,
                     process_count: int | None = None, log=print, text=None):
    """Endless batches of packed rows from a weighted mixture (a checkpointable iterator)."""
    ds = mixture(sources, weights, vocab, data_cfg, seed=seed, process_index=process_index,
                 process_count=process_count, text=text).to_iter_dataset()
    ds = packing.pack(ds, vocab, seq_len=data_cfg.seq_len, num_bins=data_cfg.pack_bins,
                      oversize=data_cfg.oversize, max_bad_fraction=data_cfg.max_bad_fraction,
                      log=log)
    count = jax.process_count() if process_count is None else process_count
    if global_batch % count:
        raise ValueError(f"train.batch_size={global_batch} must divide by the {count} processes")
    ds = ds.batch(global_batch // count, drop_remainder=True)
    return iter(with_workers(ds, data_cfg.num_workers))
