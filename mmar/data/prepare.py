"""Prepare a data set on disk (TFDS ArrayRecord), from the command line.

    python -m mmar.data.prepare folder --folder=my_data --data_dir=runs/data [--show=3]

`folder`: a user's folder of images + JSONL (mmar/data/builders/folder.py, docs/data.md).
Bad records are skipped and counted; past `--max_bad_fraction` the command stops with one
error and exit status 1, having written nothing.
"""
from __future__ import annotations

import argparse
import json

from mmar.data.builders import folder
from mmar.data.packing import BadDataError


def _folder(a):
    spec = folder.FolderSpec(a.folder, a.image_size, a.max_images, a.max_text_bytes,
                             a.max_bad_fraction)
    builder = folder.prepare(spec, data_dir=a.data_dir)
    source = folder.FolderSource(builder.data_dir)
    print(f"{len(source)} records in {builder.data_dir}")
    for i in range(min(a.show, len(source))):
        r = source[i]
        shapes = [tuple(x.shape) for x in r["images"]]
        print(f"  {r['id']} {r['kind']}: {json.dumps(r['segments'])} images {shapes}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m mmar.data.prepare",
                                description="Prepare a data set as ArrayRecord shards.")
    sub = p.add_subparsers(dest="what", required=True)
    f = sub.add_parser("folder", help="a folder of images + JSONL (docs/data.md)")
    f.add_argument("--folder", required=True)
    f.add_argument("--data_dir", required=True)
    f.add_argument("--image_size", type=int, default=32)
    f.add_argument("--max_images", type=int, default=16)
    f.add_argument("--max_text_bytes", type=int, default=4096)
    f.add_argument("--max_bad_fraction", type=float, default=0.01)
    f.add_argument("--show", type=int, default=0, help="print the first N records")
    a = p.parse_args(argv)
    try:
        {"folder": _folder}[a.what](a)
    except BadDataError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
