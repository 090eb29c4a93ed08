"""Streamed ingestion of real image-text data: WebDataset tar shards, Hugging Face Parquet,
OBELICS interleaved documents -> image-tokenizer codes, with bounded memory.

    --config.data.mixture=webdataset:data/shard-*.tar:0.7,parquet:data/train-*.parquet:0.3
    --config.data.mixture=obelics:gs://bucket/obelics/*.parquet

- records.py   Item / Bad, the tally of bad records by kind, image decoding, path rules
- webdataset.py, parquet.py, obelics.py   one reader per layout: a file -> records
- stream.py    records -> decoded chunks (a thread) -> codes, in order
- shards.py    `mmar pretokenize`: one token shard per input file, split across processes,
               resumable; `mmar train` without pretokenize: codes in memory

Nothing here holds the data set: at any time one record per reader and four chunks of
decoded images are in memory (benchmarks/ingest.py measures it). docs/data.md: how to use.
"""
