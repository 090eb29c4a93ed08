"""A user's own data: a folder of images plus JSONL -> a TFDS ArrayRecord data set.

    my_data/
      captions.jsonl    {"image": "cat.png", "caption": "a black cat"}          (one per line)
      stories.jsonl     {"segments": [{"text": "a red circle"}, {"image": "s0.png"},
                                      {"text": "it turns blue"}, {"image": "s1.png"}]}
      cat.png  s0.png  s1.png  ...   (any format PIL reads; paths relative to the folder)

Every `*.jsonl` in the folder is read, in name order (UTF-8; a byte-order mark at the start
of a file is allowed). A line is either a caption pair (`image` + `caption`) or an
interleaved document (`segments`, text and images in any order). Images are converted to
RGB, centre-cropped to a square and resized to `image_size`.

Bad records never crash the build and are never dropped silently: a line that is not valid
UTF-8, a bad JSON line, a line of neither form, an image path that leaves the folder (an
absolute path, `..`, a link out: refused unopened), a missing or unreadable (or truncated)
image file, an empty document and an oversized one (more than `max_images` images or
`max_text_bytes` of text) are each skipped, logged as `[data] skipped FILE:LINE: why`, and
counted by kind. When more than `max_bad_fraction` of the lines are bad, the build stops
with one `BadDataError` that gives the counts and the first bad lines; no shard is written.

Streamed: the lines are read and their images decoded one record at a time as TFDS writes
them (`iter_records`), so memory does not grow with the folder (TFDS's writer buffers at
most 1 GB of encoded records, then spills to disk).

Records: {"id": "FILE:LINE", "kind": "caption" | "document", "segments": JSON list of
{"text": str} / {"image": k} (k indexes "images"), "images": uint8 [k, S, S, 3]}.

    python -m mmar.data.prepare folder --folder=my_data --data_dir=runs/data --image_size=32
"""
from __future__ import annotations

import codecs
import collections
import dataclasses
import hashlib
import json
import os
import pathlib
import time

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from etils import epath

from mmar.data.builders.documents import DocumentSource, document_features, write_array_record
from mmar.data.ingest.records import Skip as _Skip
from mmar.data.ingest.records import check_document, decode_image, inside
from mmar.data.packing import BadDataError


@dataclasses.dataclass(frozen=True)
class FolderSpec:
    folder: str
    image_size: int = 32
    max_images: int = 16          # images per document; more -> oversized, skipped
    max_text_bytes: int = 4096    # UTF-8 bytes of text per document; more -> oversized
    max_bad_fraction: float = 0.01


@dataclasses.dataclass
class ScanReport:
    """What the scan kept and skipped; `bad` counts skipped lines by kind. `records` is
    filled by `scan` only (the builder streams them to disk instead)."""
    records: list = dataclasses.field(default_factory=list)
    bad: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    first_bad: list = dataclasses.field(default_factory=list)
    lines: int = 0
    kept: int = 0

    def summary(self) -> str:
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(self.bad.items())) or "none"
        return f"{self.kept} of {self.lines} records kept; skipped by kind: {kinds}"


def load_image(path: pathlib.Path, size: int) -> np.ndarray:
    """RGB uint8 [size, size, 3]: centre crop to a square, then resize (if needed)."""
    if not path.is_file():
        raise _Skip("missing_image", f"missing image file {path.name!r}")
    return decode_image(path, size, f"image {path.name!r}")


def _parse_line(line: str, root: pathlib.Path, spec: FolderSpec):
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise _Skip("bad_json", f"bad JSON ({e.msg} at column {e.colno})") from None
    if isinstance(obj, dict) and "segments" in obj:
        kind, segs = "document", obj["segments"]
    elif isinstance(obj, dict) and "image" in obj and "caption" in obj:
        kind, segs = "caption", [{"text": obj["caption"]}, {"image": obj["image"]}]
    else:
        raise _Skip("bad_format", "neither {'image', 'caption'} nor {'segments'}")
    if not isinstance(segs, list) or not all(
            isinstance(s, dict) and len(s) == 1 and isinstance(s.get("text", s.get("image")), str)
            for s in segs):
        raise _Skip("bad_format", "segments must be a list of {'text': str} / {'image': path}")
    segs = check_document(segs, spec)   # empty / oversized: the streamed readers' rule
    images, out = [], []
    for s in segs:
        if "text" in s:
            out.append({"text": s["text"]})
        else:
            path = pathlib.Path(inside(root, s["image"]))   # refused unless in the folder
            images.append(load_image(path, spec.image_size))
            out.append({"image": len(images) - 1})
    return kind, out, images


def _lines(file: pathlib.Path):
    """(line number, text | _Skip) of each non-blank line: strict UTF-8, a BOM allowed at
    the start of the file (editors on Windows write one)."""
    with open(file, "rb") as f:
        for number, raw in enumerate(f, 1):
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield number, _Skip("bad_utf8", f"not valid UTF-8 ({e.reason} at byte "
                                    f"{e.start})")
                continue
            if line.strip():
                yield number, line


def iter_records(spec: FolderSpec, report: ScanReport, log=print):
    """Every good record of every `*.jsonl`, one at a time (the module doc's rules); bad
    lines are counted in `report` and logged. Call `check` when it is exhausted."""
    root = pathlib.Path(spec.folder)
    files = sorted(root.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no *.jsonl files in {root}")
    for file in files:
        for number, line in _lines(file):
            report.lines += 1
            where = f"{file.name}:{number}"
            try:
                if isinstance(line, _Skip):
                    raise line
                kind, segments, images = _parse_line(line, root, spec)
            except _Skip as e:
                report.bad[e.kind] += 1
                if len(report.first_bad) < 5:
                    report.first_bad.append(f"{where}: {e}")
                log(f"[data] skipped {where}: {e}")
                continue
            report.kept += 1
            yield {"id": where, "kind": kind, "segments": json.dumps(segments),
                   "images": images}


def check(spec: FolderSpec, report: ScanReport) -> None:
    """BadDataError when more than `max_bad_fraction` of the lines were bad."""
    n_bad = sum(report.bad.values())
    if n_bad > spec.max_bad_fraction * report.lines:
        raise BadDataError(
            f"{spec.folder}: {n_bad} of {report.lines} records bad, more than "
            f"max_bad_fraction={spec.max_bad_fraction} ({report.summary()}); first: "
            + "; ".join(report.first_bad))


def scan(spec: FolderSpec, log=print) -> ScanReport:
    """Reads and checks every line, keeping the records in `report.records` (all images in
    memory: for small folders and tests; the builder streams with `iter_records`)."""
    report = ScanReport()
    report.records = list(iter_records(spec, report, log=log))
    check(spec, report)
    return report


def config_name(spec: FolderSpec) -> str:
    """Stable per (folder contents of the JSONL files, settings): a changed file rebuilds."""
    h = hashlib.sha256(json.dumps({**dataclasses.asdict(spec),
                                   "folder": os.path.abspath(spec.folder)}).encode())
    for file in sorted(pathlib.Path(spec.folder).glob("*.jsonl")):
        h.update(file.name.encode() + file.read_bytes())
    return "f" + h.hexdigest()[:12]


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
    spec: FolderSpec = None


class Folder(tfds.core.GeneratorBasedBuilder):
    """A user's folder of images + JSONL; one split, `train`."""

    name = "mmar_folder"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    code_path = epath.Path(__file__)  # see shapes.py: TFDS cannot find it by itself here

    def __init__(self, *, report: ScanReport | None = None, log=print, **kwargs):
        self._report, self._log = report, log
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.spec.image_size
        return self.dataset_info_from_configs(
            features=document_features(s),
            disable_shuffling=True,  # record order = line order, for readable logs
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        """One record at a time, straight from the folder; past max_bad_fraction the
        BadDataError stops TFDS before it writes a shard."""
        spec = self.builder_config.spec
        for i, rec in enumerate(iter_records(spec, self._report, log=self._log)):
            yield i, {**rec, "images": [PIL.Image.fromarray(x) for x in rec["images"]]}
        check(spec, self._report)
        self._log(f"[data] {spec.folder}: {self._report.summary()}")


def prepare(spec: FolderSpec, *, data_dir: str, log=print) -> Folder:
    """Scans the folder (skipping and counting bad records) and writes ArrayRecord shards,
    unless this exact folder content was prepared before."""
    config = FolderConfig(name=config_name(spec), spec=spec,
                          description=f"images + JSONL from {os.path.abspath(spec.folder)}")
    builder = Folder(config=config, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    t0 = time.perf_counter()
    report = ScanReport()
    builder = Folder(config=config, data_dir=data_dir, report=report, log=log)
    write_array_record(builder)
    log(f"[data] wrote {report.kept} records to {builder.data_dir} "
        f"in {time.perf_counter() - t0:.1f}s")
    return builder


FolderSource = DocumentSource  # records of every document builder read the same way
