"""Grain input pipelines: per-process shard, shuffle, map to rows, batch, (workers).

Each process reads only its slice of the records (`process_index::process_count`) and yields
its local part of the global batch; the trainer assembles the global jax.Array. Iterators
are Grain `DatasetIterator`s, whose state is saved in every checkpoint.
"""
from __future__ import annotations

import os
import time

import grain
import jax
import numpy as np
from absl import flags

from mmar.data import orders, packing, sequences, synthetic
from mmar.data.builders import shapes
from mmar.vocab import Vocab, text_or_bytes


class CaptionCodeSource(grain.sources.RandomAccessDataSource):
    """Captions with the image codes of their images (tokenized once, kept in memory)."""

    def __init__(self, captions, codes: np.ndarray):
        if len(captions) != len(codes):
            raise ValueError(f"{len(captions)} captions but {len(codes)} code rows")
        self.captions = list(captions)
        self.codes = np.asarray(codes, np.int32).reshape(len(codes), -1)

    def __len__(self):
        return len(self.captions)

    def __getitem__(self, i):
        return {"caption": self.captions[i], "codes": self.codes[i]}


class ImageArraySource(grain.sources.RandomAccessDataSource):
    """Every image of a split decoded once into one uint8 array.

    Decoding a PNG record costs about as much as a tokenizer train step on 64 images, so the
    tokenizer reads each record once, not once per epoch (60 MB for 20k 32x32 images).
    """

    def __init__(self, source, log=print):
        t0 = time.perf_counter()
        self.images = np.stack([np.asarray(source[i]["image"], np.uint8)
                                for i in range(len(source))])
        log(f"[data] {len(self)} images decoded in {time.perf_counter() - t0:.1f}s")

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i]}


class PairToRow(grain.transforms.RandomMap):
    """A caption+codes record -> a text-to-image or image-to-text row (by `i2t_fraction`);
    `text`: the run's text tokenizer (default: bytes, for a byte vocabulary only)."""

    def __init__(self, vocab: Vocab, data_cfg, text=None):
        self.vocab, self.text = vocab, text_or_bytes(text, vocab)
        self.seq_len, self.i2t = data_cfg.seq_len, data_cfg.i2t_fraction
        self.caption_dropout = data_cfg.caption_dropout
        self.order = data_cfg.image_order
        self.weights = dict(text_weight=data_cfg.loss_weight_text,
                            image_weight=data_cfg.loss_weight_image)

    def segments(self, record, rng: np.random.Generator):
        """[caption, image] or [image, caption]; a t2i caption dropped by `caption_dropout`."""
        caption = (sequences.TEXT, self.text.encode(record["caption"]))
        image = (sequences.IMAGE, self.vocab.image_body(record["codes"], record.get("grid")))
        if rng.random() < self.i2t:
            return [image, caption]
        return sequences.drop_captions([caption, image], self.caption_dropout, rng)

    def random_map(self, record, rng: np.random.Generator):
        tokens, modality = sequences.document_tokens(self.segments(record, rng), self.vocab)
        what = f"caption {record['caption']!r} with its image"
        row = sequences.pad_row(tokens, modality, self.vocab, self.seq_len, **self.weights,
                                what=what)
        if self.order == "randar":  # a fresh random order per example (orders.py)
            return orders.randar_row(row, self.vocab, self.seq_len, rng,
                                     what=f"{what} in data.image_order='randar'")
        return row


class RarPermute(grain.transforms.MapWithIndex):
    """RAR (orders.py): permutes a row's image codes with probability r(step), adds targets.

    The step is the batch index: this process's element `index` lands in local batch
    `index // local_batch` (batches are consecutive elements, drop_remainder), which is the
    train step. The draw comes from `default_rng([seed, index])`, so a resumed Grain
    iterator (which restarts at the saved element index) gives the same permutations.
    """

    def __init__(self, vocab: Vocab, data_cfg, *, total_steps: int, local_batch: int,
                 seed: int):
        self.vocab, self.total, self.local_batch, self.seed = vocab, total_steps, local_batch, seed
        self.start, self.end = data_cfg.rar.anneal_start, data_cfg.rar.anneal_end

    def map_with_index(self, index: int, row):
        r = orders.rar_probability(index // self.local_batch, self.total, self.start, self.end)
        rng = np.random.default_rng([self.seed, jax.process_index(), index])
        permute = rng.random() < r
        perms = [rng.permutation(n) if permute else None
                 for _, n in orders.image_spans(row["tokens"], self.vocab)]
        return orders.rar_permute(row, self.vocab, perms)


class PairToDocument(PairToRow):
    """A caption+codes record -> an unpadded document, for packing (`data.pack=True`)."""

    def random_map(self, record, rng: np.random.Generator):
        return sequences.document_example(self.segments(record, rng), self.vocab,
                                          **self.weights)


def local_batch_size(global_batch: int) -> int:
    n = jax.process_count()
    if global_batch % n:
        raise ValueError(f"train.batch_size={global_batch} must divide by the {n} processes")
    return global_batch // n


def _shard_shuffle_repeat(source, seed: int) -> grain.MapDataset:
    ds = grain.MapDataset.source(source)
    ds = ds[jax.process_index()::jax.process_count()]
    return ds.seed(seed).shuffle().repeat()


def _finish(ds, global_batch: int, num_workers: int):
    ds = ds.batch(local_batch_size(global_batch), drop_remainder=True)
    if isinstance(ds, grain.MapDataset):
        ds = ds.to_iter_dataset()
    return iter(with_workers(ds, num_workers))


def with_workers(ds: grain.IterDataset, num_workers: int) -> grain.IterDataset:
    """`num_workers` Grain worker processes (0 = none), each on its own slice of the records.

    Grain reads its absl flags in the workers; outside `mmar` (whose CLI parses them) they
    are marked parsed here, with their defaults, so a library caller needs no absl app.
    """
    if num_workers <= 0:
        return ds
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))


def decoder_batches(source: CaptionCodeSource, vocab: Vocab, data_cfg, *, global_batch: int,
                    seed: int, total_steps: int | None = None, text=None):
    """Endless shuffled batches of rows for the decoder (a checkpointable iterator); captions
    encoded by `text`, the run's text tokenizer (default: bytes, for a byte vocabulary).

    With `data.pack` several documents share a row (mmar/data/packing.py); without it each
    row holds one document, padded. `data.image_order` other than raster (orders.py):
    RandAR rows are built per example; RAR permutes rows by the step, so it needs
    `total_steps` (train.steps) for its anneal schedule.
    """
    ds = _shard_shuffle_repeat(source, seed)
    if data_cfg.pack:
        ds = ds.random_map(PairToDocument(vocab, data_cfg, text)).to_iter_dataset()
        ds = packing.pack(ds, vocab, seq_len=data_cfg.seq_len, num_bins=data_cfg.pack_bins,
                          oversize=data_cfg.oversize,
                          max_bad_fraction=data_cfg.max_bad_fraction)
    else:
        ds = ds.random_map(PairToRow(vocab, data_cfg, text))
        if data_cfg.image_order == "rar":
            if not total_steps:
                raise ValueError("data.image_order='rar': decoder_batches needs total_steps "
                                 "(train.steps) for the anneal schedule")
            ds = ds.map_with_index(RarPermute(vocab, data_cfg, total_steps=total_steps,
                                              local_batch=local_batch_size(global_batch),
                                              seed=seed))
    return _finish(ds, global_batch, data_cfg.num_workers)


class _ImageOnly(grain.transforms.Map):
    def map(self, record):
        return {"images": np.asarray(record["image"], np.uint8)}


def image_batches(source, *, global_batch: int, seed: int, num_workers: int = 0):
    """Endless shuffled batches of uint8 images {"images": [b, H, W, 3]} for the tokenizer."""
    ds = _shard_shuffle_repeat(source, seed).map(_ImageOnly())
    return _finish(ds, global_batch, num_workers)


def data_dir(data_cfg) -> str:
    """Where TFDS data sets are prepared: data.data_dir, else $MMAR_DATA_DIR, else a cache."""
    return (data_cfg.data_dir or os.environ.get("MMAR_DATA_DIR")
            or os.path.expanduser("~/.cache/mmar/datasets"))


def shapes_split(data_cfg, split: str):
    """The built-in shapes data set's split as a random-access source (prepared if needed)."""
    if data_cfg.name != "shapes":
        raise ValueError(f"data.name={data_cfg.name!r}: only 'shapes' is built in so far")
    return shapes.load_split(synthetic.ShapesSpec.from_config(data_cfg), split,
                             data_dir=data_dir(data_cfg), num_train=data_cfg.num_train,
                             num_test=data_cfg.num_test, num_unseen=data_cfg.num_unseen)
