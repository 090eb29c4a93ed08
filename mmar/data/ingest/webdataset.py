"""WebDataset tar shards, as img2dataset writes them -> caption records.

    shard-00000.tar:  000000000.jpg  000000000.txt  000000000.json  000000001.jpg ...

A sample is the run of consecutive members that share a key (the member name up to the
first dot of its base name, WebDataset's rule); its image is the `jpg`, `jpeg`, `png` or
`webp` member, its caption the `txt` member or, without one, the field
`data.ingest.caption_field` ("caption") of the `json` member. Other members are ignored.

Read as a stream, one sample in memory at a time, local or gs:// through etils.epath: a
plain tar block by block here (the header checksum checked, several times faster than
`tarfile`), a compressed one (gzip, bz2, xz) through `tarfile` mode "r|*". Bad samples become `Bad` records (records.py) with where =
"FILE:KEY". A damaged member header is stepped over (the reader resynchronises on the next
valid header, `ignore_zeros`) and counted as `unreadable_file` with the byte range lost; a
file that ends early (truncated: in a member, or without tar's end-of-archive blocks) or
cannot be decompressed counts once and ends that file.
"""
from __future__ import annotations

import json
import re
import tarfile
import zlib
from typing import Iterator

from etils import epath

from mmar.data.ingest.records import (Bad, Item, Options, Position, Skip, check_document,
                                      text_of, why)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")   # WebDataset: key, extension
BLOCK = tarfile.BLOCKSIZE


def _caption(parts: dict, opts: Options) -> str:
    if "txt" in parts:
        text = text_of(parts["txt"], "caption (.txt)")
    elif "json" in parts:
        try:
            meta = json.loads(parts["json"])
        except UnicodeDecodeError as e:
            raise Skip("bad_utf8", f".json is not valid UTF-8 ({e.reason})") from None
        except json.JSONDecodeError as e:
            raise Skip("bad_json", f"bad JSON in .json ({e.msg} at column {e.colno})") from None
        if not isinstance(meta, dict):
            raise Skip("bad_format", f".json holds a {type(meta).__name__}, not an object")
        if meta.get(opts.caption_field) is None:
            raise Skip("missing_caption", f"no .txt and no {opts.caption_field!r} in .json")
        text = text_of(meta[opts.caption_field], f".json field {opts.caption_field!r}")
    else:
        raise Skip("missing_caption", "no .txt or .json member")
    if not text.strip():
        raise Skip("empty", "empty caption")
    return text


def _sample(where: str, parts: dict, opts: Options) -> Item | Bad:
    try:
        image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
        if image is None:
            raise Skip("missing_image", "no image member (.jpg, .jpeg, .png, .webp); has "
                       + (", ".join(sorted(parts)) or "nothing"))
        text = _caption(parts, opts)
        segments = check_document([{"text": text}, {"image": 0}], opts)
    except Skip as e:
        return Bad(where, e.kind, str(e))
    return Item(where, "caption", segments, [image])


ZERO = bytes(BLOCK)
COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")  # gzip bz2 xz zstd
REGULAR = (b"0", b"\0", b"7")


class _CutShort(tarfile.ReadError):
    """A member whose data ends early; `member` is its name."""

    def __init__(self, member: str):
        super().__init__("unexpected end of data")
        self.member = member


def _number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:   # GNU base-256 (sizes of 8 GiB and more)
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    return int(digits, 8) if digits else 0


def _header_ok(hdr: bytes) -> bool:
    try:
        return _number(hdr[148:156]) == sum(hdr[:148]) + 256 + sum(hdr[156:])
    except ValueError:
        return False


def _pax_path(data: bytes) -> str | None:
    """The `path` record of a PAX extended header ("LEN path=VALUE\n" records)."""
    pos = 0
    while pos < len(data):
        length = int(data[pos:data.index(b" ", pos)])
        key, _, value = data[data.index(b" ", pos) + 1:pos + length - 1].partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "surrogateescape")
        pos += length
    return None


def _plain_members(f, position: Position, total: int) -> Iterator[tuple]:
    """Events of an uncompressed tar, read block by block (several times faster than
    tarfile per member): ("file", name, data), ("gap", start, stop) for bytes that hold no
    valid header (skipped, as tarfile's ignore_zeros would), ("truncated", offset) when the
    file ends without tar's end-of-archive blocks. A member cut short raises ReadError."""
    offset, gap, ended, name = 0, None, False, None
    while True:
        hdr = f.read(BLOCK)
        if len(hdr) < BLOCK:
            if gap is not None:
                yield ("gap", gap, offset + len(hdr))
            elif not ended:
                yield ("truncated", offset + len(hdr))
            return
        if hdr == ZERO:
            ended, offset = True, offset + BLOCK
            continue
        if not _header_ok(hdr):
            gap = offset if gap is None else gap
            offset += BLOCK
            continue
        if gap is not None:
            yield ("gap", gap, offset)
            gap = None
        ended = False
        size, kind = _number(hdr[124:136]), hdr[156:157]
        data = f.read(size)
        if len(data) < size:
            raise _CutShort(name or hdr[:100].split(b"\0", 1)[0].decode("utf-8", "replace"))
        f.read(-size % BLOCK)
        offset += BLOCK + size + -size % BLOCK
        position.fraction = min(offset / total, 1.0)
        if kind == b"L":                       # GNU long name: the next member's
            name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif kind == b"x":                     # PAX extended header
            name = _pax_path(data) or name
        elif kind in REGULAR:
            if name is None:
                name = hdr[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                prefix = hdr[345:500].split(b"\0", 1)[0]
                if hdr[257:263] == b"ustar\x00" and prefix:
                    name = prefix.decode("utf-8", "surrogateescape") + "/" + name
            yield ("file", name, data)
            name = None
        else:                                  # directories, links, global headers
            name = None


def _tarfile_members(f, position: Position, total: int) -> Iterator[tuple]:
    """The same events from Python's tarfile (compressed tars: gzip, bz2, xz)."""
    expected = 0
    with tarfile.open(fileobj=f, mode="r|*", ignore_zeros=True) as tf:
        for m in tf:
            if m.offset > expected:   # offsets in the (uncompressed) tar stream
                yield ("gap", expected, m.offset)
            expected = m.offset_data + -(-m.size // BLOCK) * BLOCK
            if not m.isfile():
                continue
            try:
                data = tf.fileobj.read(m.size)   # tarfile's next() skips the padding
            except (tarfile.TarError, EOFError, zlib.error):
                data = b""
            if len(data) != m.size:
                raise _CutShort(m.name)
            position.fraction = min(f.tell() / total, 1.0)
            yield ("file", m.name, data)
        if tf.offset - expected < 2 * BLOCK:   # no end-of-archive blocks
            yield ("truncated", tf.offset)


def read(path, opts: Options, position: Position | None = None) -> Iterator[Item | Bad]:
    """Every sample of one tar file, in file order."""
    name, position = str(path), position or Position()
    p = epath.Path(path)
    total = max(p.stat().length, 1)
    key, parts = None, {}
    with p.open("rb") as f:
        compressed = f.read(6).startswith(COMPRESSED)
        f.seek(0)
        members = (_tarfile_members if compressed else _plain_members)(f, position, total)
        try:
            for event in members:
                where = f"{name}:{key or '(start)'}"
                if event[0] == "gap":
                    yield Bad(where, "unreadable_file", f"unreadable tar member header(s) at "
                              f"bytes {event[1]}-{event[2]} (after key {key!r}), skipped")
                    continue
                if event[0] == "truncated":
                    yield Bad(where, "unreadable_file", f"the tar ends at byte {event[1]} "
                              "without its end-of-archive blocks (truncated?); what "
                              "followed is lost")
                    continue
                match = KEY.match(event[1])
                if match is None:
                    continue
                k, ext = match.group(1), match.group(2).lower()
                if k != key:
                    if key is not None:
                        yield _sample(f"{name}:{key}", parts, opts)
                    key, parts = k, {}
                parts[ext] = event[2]
        except (tarfile.TarError, EOFError, OSError, zlib.error, ValueError) as e:
            cut = KEY.match(getattr(e, "member", ""))
            if key is not None and cut is not None and cut.group(1) != key:
                yield _sample(f"{name}:{key}", parts, opts)   # complete: the next one is cut
                key = cut.group(1)
            yield Bad(f"{name}:{key or '(start)'}", "unreadable_file",
                      f"unreadable tar ({why(e)}); rest of the file skipped")
            key = None
    if key is not None:
        yield _sample(f"{name}:{key}", parts, opts)
    position.fraction = 1.0
