"""Writes small raw data sets in the three streamed layouts, from generated shape pictures:
what docs/data.md walks through, what the tests read and what benchmarks/ingest.py times.

    python -m mmar.data.ingest.example runs/raw [--records=64] [--files=2] [--bad]
                                                [--aspects=1,1.6,0.625]

runs/raw/webdataset/shard-00000.tar ...   img2dataset's layout: {key}.jpg + {key}.txt
                                          (+ {key}.json: caption, status)
runs/raw/parquet/train-00000.parquet ...  Hugging Face `datasets`' layout: image
                                          {bytes, path}, text
runs/raw/obelics/docs-00000.parquet ...   OBELICS: texts / images lists, None where the
                                          other modality stands (images {bytes, path})

With --bad every file also gets one record of several bad kinds (`BAD` below lists them by
layout), so that the skipped-and-counted path shows. With --aspects the WebDataset and
Parquet pictures are stretched to those width / height ratios in turn (what
`data.keep_aspect` keeps; resized back to a square, each is its scene again, so the shape
judge still reads what a keep-aspect model draws).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import tarfile

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq

from mmar.data import stories
from mmar.data.synthetic import ShapesSpec, make_examples

# the bad records each file gets with bad=True, by layout (kinds as records.py counts them)
BAD = {"webdataset": ("missing_caption", "unreadable_image", "bad_utf8", "wrong_type"),
       "parquet": ("missing_caption", "unreadable_image"),
       "obelics": ("bad_format", "url_image")}


def encode(image: np.ndarray, fmt: str = "jpeg") -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(image).save(buf, format=fmt, **({"quality": 90} if fmt == "jpeg"
                                                         else {}))
    return buf.getvalue()


def stretch(image: np.ndarray, aspect: float) -> np.ndarray:
    """A square picture resized to width / height = `aspect` (the height kept)."""
    if aspect == 1:
        return image
    h = image.shape[0]
    return np.asarray(PIL.Image.fromarray(image).resize(
        (max(1, round(h * aspect)), h), PIL.Image.Resampling.BICUBIC))


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0   # mtime 0: the same bytes on every run
    tf.addfile(info, io.BytesIO(data))


def write_webdataset(folder, *, records: int = 64, files: int = 2, image_size: int = 64,
                     seed: int = 0, bad: bool = False, fmt: str = "jpeg",
                     aspects=(1.0,)) -> list[str]:
    """`files` tar shards of `records` samples each (keys numbered across shards), the
    pictures stretched to `aspects` in turn."""
    os.makedirs(folder, exist_ok=True)
    spec, ext = ShapesSpec(image_size=image_size, seed=seed), {"jpeg": "jpg"}.get(fmt, fmt)
    examples = make_examples(spec, "train", records * files)
    paths = []
    for s in range(files):
        path = os.path.join(folder, f"shard-{s:05d}.tar")
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
            for i in range(records):
                key, ex = f"{s:05d}{i:04d}", next(examples)
                picture = stretch(ex["image"], aspects[(s * records + i) % len(aspects)])
                _add(tf, f"{key}.{ext}", encode(picture, fmt))
                if i % 2:   # half with .txt, half with the caption in .json only
                    _add(tf, f"{key}.txt", ex["caption"].encode())
                _add(tf, f"{key}.json", json.dumps({"caption": ex["caption"], "key": key,
                                                    "status": "success"}).encode())
            if bad:
                image = encode(ex["image"], fmt)
                _add(tf, f"{s:05d}9990.{ext}", image)                       # no caption
                _add(tf, f"{s:05d}9991.{ext}", image[:len(image) // 3])     # truncated
                _add(tf, f"{s:05d}9991.txt", b"a broken picture")
                _add(tf, f"{s:05d}9992.{ext}", image)
                _add(tf, f"{s:05d}9992.txt", b"caf\xe9 \xff red circle")    # not UTF-8
                _add(tf, f"{s:05d}9993.{ext}", image)
                _add(tf, f"{s:05d}9993.json", b'{"caption": 7}')             # not text
        paths.append(path)
    return paths


def write_parquet(folder, *, records: int = 64, files: int = 1, image_size: int = 64,
                  seed: int = 1, bad: bool = False, row_group: int = 16,
                  fmt: str = "png", aspects=(1.0,)) -> list[str]:
    """`files` Parquet files of `records` rows: image {bytes, path}, text (the pictures
    stretched to `aspects` in turn)."""
    os.makedirs(folder, exist_ok=True)
    examples = make_examples(ShapesSpec(image_size=image_size, seed=seed), "train",
                             records * files)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    paths = []
    for f in range(files):
        images, texts = [], []
        for i in range(records):
            ex = next(examples)
            picture = stretch(ex["image"], aspects[(f * records + i) % len(aspects)])
            images.append({"bytes": encode(picture, fmt), "path": f"{f}_{i}.{fmt}"})
            texts.append(ex["caption"])
        if bad:
            images[1:1] = [images[0], {"bytes": images[0]["bytes"][:40], "path": None}]
            texts[1:1] = [None, "a broken picture"]
        path = os.path.join(folder, f"train-{f:05d}.parquet")
        table = pa.table({"image": pa.array(images, image_type), "text": pa.array(texts)})
        pq.write_table(table, path, row_group_size=row_group)
        paths.append(path)
    return paths


def write_obelics(folder, *, records: int = 16, files: int = 1, image_size: int = 64,
                  seed: int = 2, bad: bool = False) -> list[str]:
    """`files` Parquet files of `records` interleaved shape stories (texts / images)."""
    os.makedirs(folder, exist_ok=True)
    spec = ShapesSpec(image_size=image_size, seed=seed)
    paths = []
    docs = iter(stories.make_stories(spec, records * files, seed=seed))
    for f in range(files):
        texts, images = [], []
        for _ in range(records):
            story = next(docs)
            t, im = [], []
            for seg in story["segments"]:
                if "text" in seg:
                    t.append(seg["text"])
                    im.append(None)
                else:
                    t.append(None)
                    im.append({"bytes": encode(story["images"][seg["image"]], "png"),
                               "path": None})
            texts.append(t)
            images.append(im)
        if bad:
            texts.insert(1, ["a red circle.", None])
            images.insert(1, [None])                                         # lengths differ
            texts.insert(2, ["a red circle.", None])
            images.insert(2, [None, {"bytes": None, "path": "https://example.com/a.png"}])
        path = os.path.join(folder, f"docs-{f:05d}.parquet")
        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        table = pa.table({"texts": pa.array(texts, pa.list_(pa.string())),
                          "images": pa.array(images, pa.list_(image_type))})
        pq.write_table(table, path, row_group_size=8)
        paths.append(path)
    return paths


def write_all(folder, *, records: int = 64, files: int = 2, bad: bool = False,
              aspects=(1.0,)) -> dict:
    return {"webdataset": write_webdataset(os.path.join(folder, "webdataset"), records=records,
                                           files=files, bad=bad, aspects=aspects),
            "parquet": write_parquet(os.path.join(folder, "parquet"), records=records,
                                     files=files, bad=bad, aspects=aspects),
            "obelics": write_obelics(os.path.join(folder, "obelics"),
                                     records=max(records // 4, 1), files=files, bad=bad)}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m mmar.data.ingest.example",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("folder")
    p.add_argument("--records", type=int, default=64, help="per file")
    p.add_argument("--files", type=int, default=2, help="per layout")
    p.add_argument("--bad", action="store_true", help="add bad records of several kinds")
    p.add_argument("--aspects", default="1", help="width / height ratios, comma-separated")
    a = p.parse_args(argv)
    aspects = tuple(float(x) for x in a.aspects.split(","))
    for kind, paths in write_all(a.folder, records=a.records, files=a.files, bad=a.bad,
                                 aspects=aspects).items():
        print(f"{kind}: {len(paths)} files in {os.path.dirname(paths[0])}")


if __name__ == "__main__":
    main()
