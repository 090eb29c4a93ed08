"""What every document data set stores (folder, stories, digits), and how it is read back.

Records: {"id": str, "kind": "caption" | "document", "segments": JSON list of {"text": str} /
{"image": k}, "images": PNG sequence [k, S, S, 3]}, plus builder-specific text features
(stories keep "scenes", the true objects of each image, for checking generated images).
Read through `tfds.data_source` (no TensorFlow graph), PNGs decoded by PIL.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
import tensorflow_datasets as tfds


def document_features(image_size: int, **extra_text) -> tfds.features.FeaturesDict:
    s = image_size
    return tfds.features.FeaturesDict({
        "id": tfds.features.Text(),
        "kind": tfds.features.Text(),
        "segments": tfds.features.Text(),
        "images": tfds.features.Sequence(
            tfds.features.Image(shape=(s, s, 3), encoding_format="png")),
        **{k: tfds.features.Text() for k in extra_text},
    })


def _text(x) -> str:
    if isinstance(x, np.ndarray):
        x = x.item()
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def write_array_record(builder) -> float:
    """Prepares a (generator-based, local) TFDS builder as ArrayRecord files, the format
    `tfds.data_source` reads without TensorFlow; no download, one log line of the caller's
    instead of tqdm bars. Returns the seconds it took."""
    t0 = time.perf_counter()
    tfds.disable_progress_bar()
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return time.perf_counter() - t0


class PreparedSplit:
    """Random-access source (Grain) over one split of a prepared TFDS data set.

    Pickles as its location only and reopens the files lazily in each worker process;
    subclasses say what a record turns into (`__getitem__`).
    """

    def __init__(self, builder_dir: str, split: str = "train"):
        self.builder_dir, self.split, self._source = os.fspath(builder_dir), split, None
        self._len = len(self._open())

    def _open(self):
        if self._source is None:
            builder = tfds.builder_from_directory(self.builder_dir)
            self._source = builder.as_data_source(split=self.split)
        return self._source

    def __len__(self) -> int:
        return self._len

    def __getstate__(self):
        return {"builder_dir": self.builder_dir, "split": self.split, "_len": self._len}

    def __setstate__(self, state):
        self.__dict__.update(state, _source=None)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.builder_dir!r}, split={self.split!r}, "
                f"len={self._len})")


class DocumentSource(PreparedSplit):
    """A prepared document data set: {"segments": [...], "images": [uint8 arrays], ...}."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self._open()[int(index)]
        out = {k: _text(v) for k, v in rec.items() if k not in ("images", "segments")}
        out["segments"] = json.loads(_text(rec["segments"]))
        out["images"] = [np.asarray(x, np.uint8) for x in rec["images"]]
        return out
