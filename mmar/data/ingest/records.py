"""What every streamed reader yields, how bad records are counted, and image decoding.

A reader (webdataset.py, parquet.py, obelics.py) turns one input file into a stream of
`Item`s (a document whose images are still encoded bytes) and `Bad`s (a record it could not
use: kind, where, why). Nothing here holds more than one record: the caller decides how
many to keep in flight (mmar/data/ingest/stream.py).

Kinds of bad records, counted separately (docs/data.md lists them with examples):
    bad_json, bad_format, wrong_type, bad_utf8, missing_image, missing_caption,
    missing_column, unreadable_image, unreadable_file (a tar member or a Parquet row
    group), url_image, path_outside, empty, oversized

`where` is "FILE:KEY" (a tar member's key), "FILE:row N" or "FILE:row group K (rows A-B)",
so a person can find the record again.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import math
import os
import posixpath

import numpy as np
import PIL.Image

from mmar import derived
from mmar.errors import UserError

MAX_EXAMPLES = 5   # bad records kept verbatim per tally (the counters keep counting)


class IngestError(UserError, ValueError):
    """A streamed source that cannot be read at all (no input files, bad settings)."""


@dataclasses.dataclass(frozen=True)
class Options:
    """The settings a reader needs; `from_config` reads them from the `data` section."""
    image_size: int = 32
    caption_field: str = "caption"
    image_column: str = "image"
    text_column: str = "text"
    texts_column: str = "texts"
    images_column: str = "images"
    max_images: int = 32
    max_text_bytes: int = 65536
    keep_aspect: bool = False        # data.keep_aspect: resize on the code grid (`pixels`)
    max_aspect_ratio: float = 2.0
    downsample: int = 0              # the image tokenizer's: pixels per code side

    @classmethod
    def from_config(cls, data_cfg, downsample: int = 0) -> "Options":
        """`downsample` (image_tokenizer.downsample): what data.keep_aspect resizes on."""
        ing = data_cfg.ingest
        return cls(image_size=int(data_cfg.image_size), caption_field=ing.caption_field,
                   image_column=ing.image_column, text_column=ing.text_column,
                   texts_column=ing.texts_column, images_column=ing.images_column,
                   max_images=int(ing.max_images), max_text_bytes=int(ing.max_text_bytes),
                   keep_aspect=bool(data_cfg.keep_aspect),
                   max_aspect_ratio=float(data_cfg.max_aspect_ratio),
                   downsample=int(downsample))

    def pixels(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) an image of `height` x `width` pixels is resized to: `image_size` square,
        or with `keep_aspect` its code grid (mmar.derived.aspect_grid) times `downsample`."""
        if not self.keep_aspect:
            return self.image_size, self.image_size
        if not self.downsample:
            raise ValueError("data.keep_aspect=True: resizing needs the image tokenizer's "
                             "downsample (Options.from_config(data_cfg, downsample))")
        h, w = derived.aspect_grid(height, width, self.image_size // self.downsample,
                                   self.max_aspect_ratio)
        return h * self.downsample, w * self.downsample


@dataclasses.dataclass
class Item:
    """One usable document: segments [{"text": str} | {"image": k}], images[k] encoded."""
    where: str
    kind: str                 # "caption" | "document"
    segments: list
    images: list              # encoded image files (bytes), decoded later


@dataclasses.dataclass
class Bad:
    where: str
    kind: str
    why: str
    count: int = 1            # records it stands for (a lost row group: its rows)

    def __str__(self) -> str:
        return f"{self.where}: {self.why}"


class Skip(Exception):
    """Raised inside a reader's per-record code; the reader turns it into a `Bad`."""

    def __init__(self, kind: str, why: str):
        super().__init__(why)
        self.kind = kind


@dataclasses.dataclass
class Tally:
    """Records seen and bad ones by kind, with the first few verbatim."""
    seen: int = 0
    kept: int = 0
    bad: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: list = dataclasses.field(default_factory=list)

    def add_bad(self, b: Bad) -> None:
        self.seen += b.count
        self.bad[b.kind] += b.count
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(str(b))

    def add_kept(self, n: int = 1) -> None:
        self.seen += n
        self.kept += n

    @property
    def n_bad(self) -> int:
        return sum(self.bad.values())

    def merge(self, other: "Tally") -> None:
        self.seen += other.seen
        self.kept += other.kept
        self.bad.update(other.bad)
        self.examples += other.examples[:max(0, MAX_EXAMPLES - len(self.examples))]

    def kinds(self) -> str:
        return ", ".join(f"{k}: {n}" for k, n in sorted(self.bad.items())) or "none"

    def summary(self) -> str:
        return f"{self.kept} of {self.seen} records kept; skipped by kind: {self.kinds()}"

    def to_json(self) -> dict:
        return {"seen": self.seen, "kept": self.kept, "bad": dict(sorted(self.bad.items())),
                "bad_examples": list(self.examples)}

    @classmethod
    def from_json(cls, d: dict) -> "Tally":
        return cls(seen=d["seen"], kept=d["kept"], bad=collections.Counter(d["bad"]),
                   examples=list(d["bad_examples"]))


def why(e: BaseException) -> str:
    """An exception as one short line (library messages carry newlines and object ids)."""
    if isinstance(e, PIL.UnidentifiedImageError):
        return "UnidentifiedImageError: not an image format PIL reads"
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]


def check_document(segments: list, opts: Options) -> list:
    """Drops empty texts; Skip("empty") / Skip("oversized") past the limits."""
    segments = [s for s in segments if s.get("text", "x") != ""]
    if not segments:
        raise Skip("empty", "empty document (no text, no images)")
    n_images = sum("image" in s for s in segments)
    n_text = sum(len(s["text"].encode("utf-8")) for s in segments if "text" in s)
    if n_images > opts.max_images or n_text > opts.max_text_bytes:
        raise Skip("oversized", f"oversized document ({n_images} images, {n_text} text bytes; "
                   f"limits {opts.max_images} and {opts.max_text_bytes})")
    return segments


def text_of(value, what: str) -> str:
    """A caption from bytes or str: strict UTF-8 (Skip bad_utf8), str type (wrong_type)."""
    if value is None:
        raise Skip("missing_caption", f"{what} is missing (null)")
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise Skip("bad_utf8", f"{what} is not valid UTF-8 ({e.reason} at byte "
                       f"{e.start})") from None
    if not isinstance(value, str):
        raise Skip("wrong_type", f"{what} is {type(value).__name__}, not text")
    return value


# ---- paths that must stay inside a folder (item: `../x.png`, `/etc/hostname`, links out) --

def inside(root, relative: str) -> str:
    """`root`/`relative` if it stays inside `root` (links followed for local paths), else
    Skip("path_outside"). Absolute paths and `..` that climb out are refused unopened."""
    rel = str(relative)
    if "://" in rel:
        raise Skip("url_image", f"image {rel!r} is a URL; download the images first (for "
                   "example with img2dataset) and point at the files")
    if rel.startswith(("/", "\\")) or os.path.isabs(rel):
        raise Skip("path_outside", f"image path {rel!r} is absolute; paths must be relative "
                   "to the data folder")
    root_s = os.fspath(root)
    if "://" in root_s:   # gs:// and other remote folders: no links, a lexical check
        norm = posixpath.normpath(rel)
        if norm == ".." or norm.startswith("../"):
            raise Skip("path_outside", f"image path {rel!r} leaves the data folder")
        return posixpath.join(root_s, norm)
    real_root = os.path.realpath(root_s)
    real = os.path.realpath(os.path.join(real_root, rel))
    if os.path.commonpath([real_root, real]) != real_root:
        raise Skip("path_outside", f"image path {rel!r} leaves the data folder "
                   f"(resolves to {real})")
    return real


# ---- images -------------------------------------------------------------------------------

COMMON_FORMATS = ("JPEG", "PNG", "WEBP")   # tried first: PIL then skips probing the rest


def fit(im: PIL.Image.Image, height: int, width: int) -> np.ndarray:
    """RGB uint8 [height, width, 3]: the centre crop of `im` at that aspect ratio (as
    large as fits), resized (if needed)."""
    w, h = im.size
    if w * height > h * width:      # wider than the target: crop the sides
        cw, ch = max(1, round(h * width / height)), h
    else:
        cw, ch = w, max(1, round(w * height / width))
    if (cw, ch) != (w, h):
        im = im.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))
    if (cw, ch) != (width, height):
        im = im.resize((width, height), PIL.Image.Resampling.BICUBIC)
    return np.asarray(im, np.uint8)


def _open(data):
    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        return PIL.Image.open(src, formats=COMMON_FORMATS)
    except PIL.UnidentifiedImageError:
        if hasattr(src, "seek"):
            src.seek(0)
        return PIL.Image.open(src)   # every format PIL knows


def decode_image(data, size, name: str = "image") -> np.ndarray:
    """Encoded bytes (or a local file path) -> RGB uint8 [size, size, 3]; Skip if unreadable.
    `size`: an int, or `Options` (keep-aspect images: [H, W, 3] by `Options.pixels`).

    A JPEG much larger than its target is decoded at a reduced scale by libjpeg (PIL's
    draft mode: 1/2 to 1/8, never below the target), which is most of the speed of real
    data sets.
    """
    try:
        with _open(data) as im:
            w, h = im.size
            th, tw = size.pixels(h, w) if isinstance(size, Options) else (size, size)
            scale = min(w / tw, h / th)   # the crop's scale down to the target
            if im.format == "JPEG" and scale >= 2:
                im.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))
            im.load()  # decodes every byte: a truncated file fails here, not later
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            out = fit(rgb, th, tw)
    except Exception as e:  # PIL raises several types for bad files
        raise Skip("unreadable_image", f"unreadable {name} ({why(e)})") from None
    return out


@dataclasses.dataclass
class Position:
    """How far a reader is through its file (0..1), for the progress line's ETA."""
    fraction: float = 0.0
