"""Named document sources for `data.mixture`: train on built-in or your own data by config.

    --config.data.mixture=shapes:0.6,stories:0.3,digits:0.1
    --config.data.mixture=shapes:0.5,path/to/my_data:0.5      (a folder: docs/data.md)
    --config.data.mixture=webdataset:shards/*.tar:0.7,parquet:hf/*.parquet:0.3   (streamed)

Entries are `name[:weight]` (weight 1 if left out), comma-separated (the syntax:
`mmar.derived.parse_mixture`, which validation checks too). Names: `shapes` (the
built-in caption pairs), `stories` (interleaved shape stories), `digits` (scikit-learn's
digits), a folder of images + JSONL (it must exist), or a streamed `webdataset:GLOB`,
`parquet:GLOB`, `obelics:GLOB` (mmar/data/ingest: read straight into codes, never prepared
as pixels). Every other source is prepared once as ArrayRecord in the data dir, at
`data.image_size`, so one image tokenizer reads them all. Empty (the default) = the demo's
shapes pairs, unpacked.
"""
from __future__ import annotations

from mmar import derived
from mmar.data import mixture, pipeline, synthetic
from mmar.data.builders import folder, generated
from mmar.data.ingest import records as ingest_records
from mmar.data.ingest import shards as ingest_shards


def load(name: str, data_cfg, split: str = "train", log=print):
    """A random-access source of `split` for one mixture entry (prepared if needed)."""
    data_dir = pipeline.data_dir(data_cfg)
    spec = synthetic.ShapesSpec.from_config(data_cfg)
    if name == "shapes":
        return pipeline.shapes_split(data_cfg, split)
    if name == "stories":
        return generated.prepare_stories(spec, data_dir=data_dir, num_train=data_cfg.num_train,
                                         num_test=data_cfg.num_test, log=log)[split]
    if name == "digits":
        return generated.prepare_digits(data_dir=data_dir, image_size=data_cfg.image_size,
                                        log=log)[split]
    if split != "train":
        raise ValueError(f"a folder has one split, 'train'; asked for {split!r} of {name!r}")
    if derived.stream_source(name) is not None:
        raise ValueError(f"{name!r} is streamed: read it with `encoded` or pretokenize it")
    fspec = folder.FolderSpec(name, image_size=data_cfg.image_size,
                              max_bad_fraction=data_cfg.max_bad_fraction)
    return folder.FolderSource(folder.prepare(fspec, data_dir=data_dir, log=log).data_dir)


def mixture_batches(data_cfg, encode, vocab, *, global_batch: int, seed: int, log=print,
                    documents: dict | None = None, text=None, downsample: int = 0):
    """Packed batches of the configured mixture; every image tokenized once by `encode`,
    or read from token shards: `documents` maps each entry's name to its source of codes.
    `text`: the run's text tokenizer (default: bytes, for a byte vocabulary);
    `downsample`: the image tokenizer's (data.keep_aspect resizes on its grid)."""
    entries = derived.parse_mixture(data_cfg.mixture)
    if documents is not None:
        sources = [documents[name] for name, _ in entries]
    else:
        sources = [encoded(name, data_cfg, encode, log=log, downsample=downsample)
                   for name, _ in entries]
    for (name, _), src in zip(entries, sources):
        log(f"[data] mixture: {name} ({len(src)} documents)")
    return mixture.document_batches(sources, [w for _, w in entries], vocab, data_cfg,
                                    global_batch=global_batch, seed=seed, log=log, text=text)


def encoded(name: str, data_cfg, encode, log=print,
            downsample: int = 0) -> mixture.DocumentCodeSource:
    """One mixture entry's train documents with their images as codes, in memory: streamed
    sources straight from their files (mmar/data/ingest), the others via `load`."""
    if derived.stream_source(name) is None:
        return mixture.encode_documents(encode, load(name, data_cfg, log=log), log=log)
    ing = data_cfg.ingest
    return mixture.DocumentCodeSource(ingest_shards.encode_source(
        name, encode, ingest_records.Options.from_config(data_cfg, downsample),
        max_bad_fraction=data_cfg.max_bad_fraction, batch_size=ing.batch_size,
        threads=ing.decode_threads, log=log))
