"""Interleaved documents in the OBELICS layout (Parquet) -> document records.

    texts:  ["A red circle.", None, "It turns blue.", None]
    images: [None, <image>, None, <image>]

Two list columns of equal length (`data.ingest.texts_column` / `images_column`); at each
position exactly one of them is set, and the document is their interleaving in order. An
image is bytes, a `{bytes, path}` struct or a path relative to the Parquet file's folder
(parquet.image_data; the published OBELICS stores URLs: download them first, a URL counts
as `url_image`). A document with a position holding both or neither, lists of different
lengths, no content, or more than `data.ingest.max_images` images /
`data.ingest.max_text_bytes` of text is skipped and counted. Row-group streaming and the
other rules are parquet.py's.
"""
from __future__ import annotations

from typing import Iterator

from mmar.data.ingest import parquet
from mmar.data.ingest.records import (Bad, Item, Options, Position, Skip, check_document,
                                      text_of)


def document(texts, images, folder: str, opts: Options) -> tuple[list, list]:
    """(segments, encoded images) of one row; Skip when it breaks a rule above."""
    if not isinstance(texts, list) or not isinstance(images, list):
        raise Skip("wrong_type", f"texts and images must be lists, got "
                   f"{type(texts).__name__} and {type(images).__name__}")
    if len(texts) != len(images):
        raise Skip("bad_format", f"texts has {len(texts)} entries, images {len(images)}")
    segments, cells = [], []
    for j, (t, im) in enumerate(zip(texts, images)):
        if (t is None) == (im is None):
            raise Skip("bad_format", f"position {j} holds "
                       f"{'both a text and an image' if t is not None else 'neither'}")
        if t is not None:
            segments.append({"text": text_of(t, f"texts[{j}]")})
        else:
            cells.append((j, im))
            segments.append({"image": len(cells) - 1})
    segments = check_document(segments, opts)   # before reading any image file
    data = [parquet.image_data(im, folder, f"images[{j}]") for j, im in cells]
    return segments, data


def read(path, opts: Options, position: Position | None = None) -> Iterator[Item | Bad]:
    """Every row of one Parquet file as an interleaved document, in row order."""
    name, position, folder = str(path), position or Position(), parquet.folder_of(path)
    columns = [opts.texts_column, opts.images_column]
    for chunk in parquet.row_groups(path, columns, position):
        if isinstance(chunk, Bad):
            yield chunk
            continue
        start, table = chunk
        texts = parquet.values(table.column(opts.texts_column), text=True)
        images = parquet.values(table.column(opts.images_column))
        for i, (t, im) in enumerate(zip(texts, images)):
            where = f"{name}:row {start + i}"
            try:
                segments, data = document(t, im, folder, opts)
            except Skip as e:
                yield Bad(where, e.kind, str(e))
                continue
            yield Item(where, "document", segments, data)
