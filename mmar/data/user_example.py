"""Writes a small example of a user's data folder (docs/data.md walks through it).

    python -m mmar.data.user_example my_data

my_data/ gets shape pictures as 64x64 PNG files (the builder resizes them), captions.jsonl
(caption pairs), stories.jsonl (interleaved documents whose images change as the text says),
and one deliberately bad line of each kind the builder skips and counts: bad JSON, a line of
neither form, a missing image file, a truncated image file, an empty document and an
oversized one.
"""
from __future__ import annotations

import json
import pathlib
import sys

import PIL.Image

from mmar.data import stories
from mmar.data.synthetic import ShapesSpec, make_examples

BAD_KINDS = ("bad_json", "bad_format", "missing_image", "unreadable_image", "empty", "oversized")


def write(folder, num_captions: int = 12, num_stories: int = 4) -> pathlib.Path:
    root = pathlib.Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    spec = ShapesSpec(image_size=64, seed=1)
    lines = []
    for i, ex in enumerate(make_examples(spec, "train", num_captions)):
        PIL.Image.fromarray(ex["image"]).save(root / f"shape{i}.png")
        lines.append({"image": f"shape{i}.png", "caption": ex["caption"]})
    (root / "broken.png").write_bytes((root / "shape0.png").read_bytes()[:60])  # truncated
    bad = ['{"image": "shape1.png", "caption": "a red', {"picture": "shape1.png"},
           {"image": "no_such_file.png", "caption": "a lost circle"},
           {"image": "broken.png", "caption": "a broken square"}]
    with open(root / "captions.jsonl", "w") as f:
        for obj in lines[:4] + bad + lines[4:]:
            f.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
    with open(root / "stories.jsonl", "w") as f:
        for s, story in enumerate(stories.make_stories(spec, num_stories, seed=1)):
            segments = []
            for seg in story["segments"]:
                if "image" in seg:
                    name = f"story{s}_{seg['image']}.png"
                    PIL.Image.fromarray(story["images"][seg["image"]]).save(root / name)
                    seg = {"image": name}
                segments.append(seg)
            f.write(json.dumps({"segments": segments}) + "\n")
        f.write(json.dumps({"segments": [{"text": ""}]}) + "\n")  # empty
        f.write(json.dumps({"segments": [{"image": "shape0.png"}] * 40}) + "\n")  # oversized
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m mmar.data.user_example FOLDER")
    print(f"wrote {write(sys.argv[1])}")
