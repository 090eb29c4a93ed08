"""A small GenEval on the shapes data: per-category text-to-image scores from the shape judge.

GenEval (Ghosh et al., 2023) scores generated images per prompt category with an object
detector. Here the detector is the shape judge (mmar/eval/judge.py), which reads every object
of a generated shapes image exactly, and the categories follow the caption grammar:

| category | captions | correct when the image shows |
| --- | --- | --- |
| single_object | "a red circle" | exactly one object, of the named shape (any colour) |
| colors | "a red circle" | exactly one object, of the named shape and colour |
| counting | "three green squares" | exactly N objects, all of the named shape (any colour) |
| two_object | "a red circle left of a blue square" | exactly the two named shapes |
| attribute_binding | (same) | exactly the two named (colour, shape) pairs: colours on the right shapes |
| position | (same) | the two pairs and the relation between their centroids |

`overall` is the mean of the category scores (GenEval's convention). `mmar eval` reports them
for held-out captions (`geneval_<category>`) and, apart, for captions naming colour-shape pairs
held out of training (`geneval_unseen_<category>`).
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from mmar.data.synthetic import ShapesSpec
from mmar.eval import judge

CATEGORIES = ("single_object", "colors", "counting", "two_object", "attribute_binding",
              "position")


def categories(image: np.ndarray, caption: str, spec: ShapesSpec) -> dict[str, bool]:
    """The categories a caption belongs to, each with whether the image passes it."""
    parsed = judge.parse_caption(caption, spec)
    if parsed is None:
        return {}
    found = judge.read_image(image, spec)
    pairs = Counter((d.color, d.shape) for d in found)
    shapes = Counter(d.shape for d in found)
    want_pairs = Counter(parsed.objects)
    want_shapes = Counter(s for _, s in parsed.objects)
    if parsed.relation is not None:
        return {"two_object": shapes == want_shapes,
                "attribute_binding": pairs == want_pairs,
                "position": judge.judge_image(image, caption, spec)}
    if len(parsed.objects) > 1:
        return {"counting": shapes == want_shapes}
    return {"single_object": shapes == want_shapes, "colors": pairs == want_pairs}


def summarize(per_sample: list[dict[str, bool]], prefix: str = "geneval_") -> dict[str, float]:
    """Mean score per category (categories with no sample are left out) and their mean."""
    out = {}
    for cat in CATEGORIES:
        scores = [s[cat] for s in per_sample if cat in s]
        if scores:
            out[prefix + cat] = float(np.mean(scores))
    if out:
        out[prefix + "overall"] = float(np.mean(list(out.values())))
    return out
