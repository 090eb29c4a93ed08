"""The text of the configured sources, streamed: what `mmar text-tokenizer-train` learns from.

Each `data.mixture` entry's train split (empty mixture: the built-in shapes pairs), in the
mixture's order, record by record: a caption pair gives its caption, a document each of its
text segments. Built-in sources and folders are read through mmar/data/sources.py (prepared
if needed); streamed sources (`webdataset:GLOB`, `parquet:GLOB`, `obelics:GLOB`) through
their readers, file by file, without decoding a single image. A generator: one record is in
memory at a time, whatever the data set's size. Weights do not matter here: every text is
read once.
"""
from __future__ import annotations

from collections.abc import Iterator

from mmar import derived
from mmar.data import sources
from mmar.data.ingest import records as ingest_records
from mmar.data.ingest import stream as ingest_stream


def record_texts(rec: dict) -> list[str]:
    """The texts of one prepared record: {"caption"} pairs or {"segments"} documents."""
    if "segments" in rec:
        return [s["text"] for s in rec["segments"] if "text" in s]
    return [rec["caption"]] if rec.get("caption") else []


def _streamed(name: str, data_cfg, log) -> Iterator[str]:
    kind, pattern = ingest_stream.parse(name)
    opts = ingest_records.Options.from_config(data_cfg)
    files = ingest_stream.list_inputs(pattern)
    log(f"[text-tokenizer] {name}: {len(files)} file(s)")
    for path in files:
        for item in ingest_stream.READERS[kind](path, opts):
            if isinstance(item, ingest_records.Item):   # bad records are the ingest's to count
                yield from (s["text"] for s in item.segments if "text" in s)


def texts(data_cfg, log=print) -> Iterator[str]:
    """Every text of the configured sources' train splits, one at a time."""
    entries = derived.parse_mixture(data_cfg.mixture) if data_cfg.mixture else [("shapes", 1)]
    for name, _ in entries:
        if derived.stream_source(name) is not None:
            yield from _streamed(name, data_cfg, log)
            continue
        source = sources.load(name, data_cfg, "train", log=log)
        log(f"[text-tokenizer] {name}: {len(source)} records")
        for i in range(len(source)):
            yield from record_texts(source[i])
