"""Parquet files as Hugging Face `datasets` stores them -> caption records; and the Parquet
reading that obelics.py shares.

    train-00000-of-00004.parquet:  image {bytes, path} | bytes,  text string

Columns by name: `data.ingest.image_column` ("image") and `data.ingest.text_column`
("text"). An image cell is the encoded file's bytes, a `{bytes, path}` struct (HF's Image
feature; `path` is read only when `bytes` is empty), or a path string; paths are relative
to the Parquet file's folder and must stay inside it (records.inside). Text may be a string
or a binary column; either is decoded as strict UTF-8.

Read one row group at a time (pyarrow.parquet.ParquetFile over an etils.epath file: local
or gs://), so memory is one row group whatever the file's size. A row group that cannot be
read counts as `unreadable_file` for each of its rows, with the row range; a file without
the configured columns counts every row as `missing_column`.
"""
from __future__ import annotations

import posixpath
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from etils import epath

from mmar.data.ingest.records import (Bad, Item, Options, Position, Skip, check_document,
                                      inside, text_of, why)


def _binary(t: pa.DataType) -> pa.DataType | None:
    """The binary type to read a (list of) string column as, or None to keep it."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.large_binary()
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _binary(t.value_type)
        return pa.large_list(inner) if inner is not None else None
    return None


def values(column: pa.ChunkedArray, text: bool = False) -> list:
    """Python values of a column; a `text` column's strings as raw bytes, so that invalid
    UTF-8 fails one row (records.text_of) instead of the whole row group."""
    target = _binary(column.type) if text else None
    return (column.cast(target) if target is not None else column).to_pylist()


def image_data(cell, folder: str, what: str = "image") -> bytes:
    """An image cell -> the encoded file's bytes (Skip when missing, unsafe or wrong)."""
    if cell is None:
        raise Skip("missing_image", f"no {what}")
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return cell["bytes"]
        cell = cell.get("path")
        if not cell:
            raise Skip("missing_image", f"{what}: a struct with neither bytes nor path")
    if isinstance(cell, (bytes, bytearray)):
        if not cell:
            raise Skip("missing_image", f"{what}: empty bytes")
        return bytes(cell)
    if isinstance(cell, str):
        path = epath.Path(inside(folder, cell))
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise Skip("missing_image", f"missing image file {cell!r}") from None
        except OSError as e:
            raise Skip("unreadable_image", f"unreadable image file {cell!r} ({why(e)})") \
                from None
    raise Skip("wrong_type", f"{what} is {type(cell).__name__}, not bytes, "
               "{bytes, path} or a path")


def folder_of(path) -> str:
    s = str(path)
    return posixpath.dirname(s) if "://" in s else str(epath.Path(s).parent)


def row_groups(path, columns: list[str], position: Position) -> Iterator:
    """(first row, pyarrow.Table of `columns`) per row group, or a `Bad` for what failed."""
    name = str(path)
    with epath.Path(path).open("rb") as f:
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a bad footer
            yield Bad(name, "unreadable_file", f"not a readable Parquet file ({why(e)})")
            return
        have = pf.schema_arrow.names
        missing = [c for c in columns if c not in have]
        if missing:
            yield Bad(name, "missing_column", f"no column {missing[0]!r} (columns: "
                      f"{', '.join(have)}; see data.ingest.*_column)",
                      count=max(pf.metadata.num_rows, 1))
            return
        start, n_groups = 0, pf.num_row_groups
        for g in range(n_groups):
            n = pf.metadata.row_group(g).num_rows
            try:
                table = pf.read_row_group(g, columns=columns)
            except Exception as e:
                yield Bad(f"{name}:row group {g} (rows {start}-{start + n - 1})",
                          "unreadable_file", f"unreadable row group ({why(e)})",
                          count=max(n, 1))
            else:
                yield start, table
            start += n
            position.fraction = (g + 1) / n_groups


def read(path, opts: Options, position: Position | None = None) -> Iterator[Item | Bad]:
    """Every row of one Parquet file as a caption pair, in row order."""
    name, position, folder = str(path), position or Position(), folder_of(path)
    for chunk in row_groups(path, [opts.image_column, opts.text_column], position):
        if isinstance(chunk, Bad):
            yield chunk
            continue
        start, table = chunk
        images = values(table.column(opts.image_column))
        texts = values(table.column(opts.text_column), text=True)
        for i, (image, text) in enumerate(zip(images, texts)):
            where = f"{name}:row {start + i}"
            try:
                if image is None:
                    raise Skip("missing_image", f"no image in column {opts.image_column!r}")
                text = text_of(text, f"column {opts.text_column!r}")
                if not text.strip():
                    raise Skip("empty", "empty caption")
                segments = check_document([{"text": text}, {"image": 0}], opts)
                data = image_data(image, folder)
            except Skip as e:
                yield Bad(where, e.kind, str(e))
                continue
            yield Item(where, "caption", segments, [data])
