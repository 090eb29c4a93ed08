"""Tests for the shape judge: agreement on ground truth, rejection of wrong captions, blur."""

import numpy as np
import pytest
from scipy import ndimage

from mmar.data.synthetic import (ShapeObject, ShapesSpec, article, make_examples,
                                 objects_from_json)
from mmar.eval.judge import judge_caption, judge_image, parse_caption, read_image

SPECS = {"plain": ShapesSpec(), "jitter": ShapesSpec(image_size=48, grid=4, jitter=2)}
SPLITS = ("train", "test", "unseen")


def _blur(image):
    """3x3 box blur per channel (a stand-in for a blurry autoencoder reconstruction)."""
    chans = [ndimage.uniform_filter(image[..., c].astype(np.float32), 3, mode="constant")
             for c in range(3)]
    return np.clip(np.round(np.stack(chans, -1)), 0, 255).astype(np.uint8)


def _perturbations(caption, spec):
    """Wrong captions: swapped colour, wrong shape, wrong count, reversed relation."""
    w = caption.split()
    plural = w[0] in ("two", "three")
    shape = w[2][:-1] if plural else w[2]
    # Replace the first object's colour / shape by the first alternative that still parses
    # (a relation must name two different objects).
    colours = [" ".join([w[0] if plural else article(c), c] + w[2:])
               for c in spec.colors if c != w[1]]
    shapes = [" ".join(w[:2] + [s + ("s" if plural else "")] + w[3:])
              for s in spec.shapes if s != shape]
    out = {"colour": next(c for c in colours if parse_caption(c, spec)),
           "shape": next(s for s in shapes if parse_caption(s, spec))}
    if len(w) == 3:
        count = {"a": "two", "an": "two", "two": "three", "three": "two"}[w[0]]
        out["count"] = f"{count} {w[1]} {shape}s"
    else:
        first, second = " ".join(w[:3]), " ".join(w[-3:])
        out["relation"] = caption.replace(first, "@").replace(second, first).replace("@", second)
    return out


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("split", SPLITS)
def test_judge_agrees_with_ground_truth(name, split):
    spec = SPECS[name]
    examples = list(make_examples(spec, split, 1000))
    ok = [judge_image(ex["image"], ex["caption"], spec) for ex in examples]
    assert np.mean(ok) >= 0.99
    # Image-to-text on the same scenes.
    assert all(judge_caption(objects_from_json(ex["objects"]), ex["caption"], spec)
               for ex in examples)


@pytest.mark.parametrize("name", list(SPECS))
def test_judge_rejects_wrong_captions(name):
    spec = SPECS[name]
    rejected, total = {}, {}
    for split in SPLITS:
        for ex in make_examples(spec, split, 200, seed=1):
            objects = objects_from_json(ex["objects"])
            for kind, wrong in _perturbations(ex["caption"], spec).items():
                assert parse_caption(wrong, spec) is not None, wrong
                total[kind] = total.get(kind, 0) + 1
                rejected[kind] = rejected.get(kind, 0) + (not judge_image(ex["image"], wrong, spec))
                assert not judge_caption(objects, wrong, spec), (ex["caption"], wrong)
    for kind in total:
        assert rejected[kind] / total[kind] >= 0.99, (kind, rejected[kind], total[kind])
    assert set(total) == {"colour", "shape", "count", "relation"}


@pytest.mark.parametrize("name", list(SPECS))
def test_judge_reads_blurred_images(name):
    spec = SPECS[name]
    for split in SPLITS:
        examples = list(make_examples(spec, split, 300, seed=2))
        ok = [judge_image(_blur(ex["image"]), ex["caption"], spec) for ex in examples]
        assert np.mean(ok) >= 0.95, split


def test_read_image_positions_and_shapes():
    spec = ShapesSpec()
    from mmar.data.synthetic import render
    objs = [ShapeObject("circle", "red", 0, 0), ShapeObject("square", "blue", 1, 2),
            ShapeObject("triangle", "yellow", 3, 3)]
    det = read_image(render(objs, spec), spec)
    assert [(d.color, d.shape) for d in det] == [(o.color, o.shape) for o in objs]
    for d, o in zip(det, objs):
        assert int(d.y // spec.cell_size) == o.row and int(d.x // spec.cell_size) == o.col
    assert read_image(np.zeros((32, 32, 3), np.uint8), spec) == []
    # A few stray pixels and dark / grey noise are not objects.
    noisy = np.random.default_rng(0).integers(0, 50, (32, 32, 3)).astype(np.uint8)
    noisy[5, 5] = (255, 0, 0)
    noisy[20:23, 20:23] = (200, 200, 200)
    assert read_image(noisy, spec) == []


def test_judge_image_rejects_extra_object_and_empty():
    spec = ShapesSpec()
    from mmar.data.synthetic import render
    img = render([ShapeObject("circle", "red", 0, 0), ShapeObject("square", "blue", 2, 2)], spec)
    assert not judge_image(img, "a red circle", spec)
    assert judge_image(img, "a red circle left of a blue square", spec)
    assert judge_image(img, "a red circle above a blue square", spec)  # true, not canonical
    assert not judge_image(np.zeros_like(img), "a red circle", spec)


def test_parse_caption_strict():
    spec = ShapesSpec()
    p = parse_caption("  a red circle left of a blue square ", spec)
    assert p.relation == (("red", "circle"), "left of", ("blue", "square"))
    assert sorted(p.objects) == [("blue", "square"), ("red", "circle")]
    assert parse_caption("three green triangles", spec).objects == (("green", "triangle"),) * 3
    assert parse_caption("a yellow square above a purple circle", spec).relation[1] == "above"
    assert parse_caption("an orange circle left of a red square", spec) is not None
    assert parse_caption("a orange circle", spec) is None      # wrong article
    assert parse_caption("an red circle", spec) is None
    for bad in ["", "a red", "a red circle.", "a red circles", "two red circle", "one red circle",
                "four red circles", "a mauve circle", "a red hexagon", "an red circle",
                "a red circle right of a blue square", "a red circle left of a red circle",
                "a red circle left a blue square", "a cyan circle", "red circle",
                "a red circle and a blue square", "A red circle"]:
        assert parse_caption(bad, spec) is None, bad
        assert not judge_image(np.zeros((32, 32, 3), np.uint8), bad, spec)


def test_judge_caption_true_and_false():
    spec = ShapesSpec()
    a = ShapeObject("circle", "red", 0, 0)
    b = ShapeObject("square", "blue", 2, 3)
    objs = (a, b)
    assert judge_caption(objs, "a red circle left of a blue square", spec)
    assert judge_caption(objs, "a red circle above a blue square", spec)  # true, not canonical
    assert not judge_caption(objs, "a blue square left of a red circle", spec)
    assert not judge_caption(objs, "a blue square above a red circle", spec)
    assert not judge_caption(objs, "a red circle", spec)
    assert not judge_caption(objs, "a red circle left of a blue circle", spec)
    assert not judge_caption(objs, "garbage", spec)
    same_col = (a, ShapeObject("square", "blue", 2, 0))
    assert not judge_caption(same_col, "a red circle left of a blue square", spec)  # strict
    assert judge_caption(same_col, "a red circle above a blue square", spec)
    two = (a, ShapeObject("circle", "red", 3, 3))
    assert judge_caption(two, "two red circles", spec)
    assert not judge_caption(two, "three red circles", spec)
    assert not judge_caption(two, "a red circle", spec)
