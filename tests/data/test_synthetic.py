"""Tests for mmar.data.synthetic: determinism, splits, grammar, rendering, spec checks."""

from collections import Counter

import numpy as np
import pytest

from mmar.data.synthetic import (COLOR_RGB, ShapeObject, ShapesSpec, article, caption_for,
                                 make_examples, objects_from_json, render, sample_scene, shape_mask)
from mmar.eval.judge import parse_caption


def _combos(objects):
    return {f"{o.color} {o.shape}" for o in objects}


def test_deterministic_from_seed():
    spec = ShapesSpec()
    a = list(make_examples(spec, "train", 50))
    b = list(make_examples(spec, "train", 50))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        assert x["caption"] == y["caption"] and x["objects"] == y["objects"]
    c = list(make_examples(ShapesSpec(seed=1), "train", 50))
    assert [x["caption"] for x in a] != [x["caption"] for x in c]
    d = list(make_examples(spec, "train", 50, seed=7))
    assert [x["caption"] for x in a] != [x["caption"] for x in d]
    # Each split is its own stream.
    t = list(make_examples(spec, "test", 50))
    assert [x["caption"] for x in a] != [x["caption"] for x in t]


def test_jitter_deterministic_and_moves_objects():
    spec = ShapesSpec(image_size=48, grid=4, jitter=2)
    a = [x["image"] for x in make_examples(spec, "train", 30)]
    b = [x["image"] for x in make_examples(spec, "train", 30)]
    assert all((x == y).all() for x, y in zip(a, b))
    centred = [render(objects_from_json(x["objects"]), spec)
               for x in make_examples(spec, "train", 30)]
    assert any((x != y).any() for x, y in zip(a, centred))


@pytest.mark.parametrize("split", ["train", "test", "unseen"])
def test_splits_and_grammar(split):
    spec = ShapesSpec()
    heldout = set(spec.heldout_combos)
    kinds = Counter()
    for ex in make_examples(spec, split, 600):
        objects = objects_from_json(ex["objects"])
        if split == "unseen":
            assert _combos(objects) & heldout, ex["caption"]
        else:
            assert not _combos(objects) & heldout, ex["caption"]
        parsed = parse_caption(ex["caption"], spec)
        assert parsed is not None, ex["caption"]
        assert sorted(parsed.objects) == sorted((o.color, o.shape) for o in objects)
        assert ex["caption"] == ex["caption"].strip().lower() and not ex["caption"].endswith(".")
        assert len({(o.row, o.col) for o in objects}) == len(objects)  # one object per cell
        assert 1 <= len(objects) <= spec.max_objects
        kinds["relation" if parsed.relation else "single" if len(objects) == 1 else "count"] += 1
        img = ex["image"]
        assert img.dtype == np.uint8 and img.shape == (32, 32, 3)
        palette = {(0, 0, 0)} | {COLOR_RGB[c] for c in spec.colors}
        assert {tuple(p) for p in img.reshape(-1, 3)} <= palette  # no anti-aliasing
    assert min(kinds.values()) > 150, kinds  # roughly 1/3 each


def test_relation_is_canonical():
    spec = ShapesSpec()
    rng = np.random.default_rng(0)
    n = 0
    while n < 200:
        objects, caption = sample_scene(rng, spec, "train")
        if len(objects) != 2 or caption.startswith("two"):  # relations only
            continue
        a, b = objects
        n += 1
        assert (a.color, a.shape) != (b.color, b.shape)
        if a.col != b.col:
            assert a.col < b.col and " left of " in caption
        else:
            assert a.row < b.row and " above " in caption
        assert caption.startswith(f"{article(a.color)} {a.color} {a.shape} ")
        assert caption.endswith(f"{article(b.color)} {b.color} {b.shape}")


def test_caption_forms():
    r = ShapeObject("circle", "red", 0, 0)
    b = ShapeObject("square", "blue", 0, 2)
    assert caption_for("single", [r]) == "a red circle"
    assert caption_for("relation", [r, b]) == "a red circle left of a blue square"
    assert caption_for("relation", [r, ShapeObject("square", "blue", 3, 0)]) == \
        "a red circle above a blue square"
    assert caption_for("count", [r, r]) == "two red circles"
    assert caption_for("count", [b, b, b]) == "three blue squares"
    o = ShapeObject("triangle", "orange", 0, 1)
    assert caption_for("single", [o]) == "an orange triangle"
    assert caption_for("relation", [r, o]) == "a red circle left of an orange triangle"


def test_shape_masks_distinguishable_at_8px_cells():
    sizes = {s: int(shape_mask(s, 6).sum()) for s in ("square", "circle", "triangle")}
    assert sizes["square"] == 36 and 20 <= sizes["circle"] <= 30
    tri = shape_mask("triangle", 6)
    assert tri[0].sum() < tri[-1].sum() == 6  # apex at the top, full-width base
    spec = ShapesSpec()
    img = render([ShapeObject("square", "red", 0, 0), ShapeObject("square", "red", 0, 1)], spec)
    assert (img[:, 7:9] == 0).all()  # 1px margin per side: neighbours never touch


def test_objects_json_roundtrip():
    for ex in make_examples(ShapesSpec(), "unseen", 20):
        objects = objects_from_json(ex["objects"])
        assert all(isinstance(o, ShapeObject) for o in objects)
        np.testing.assert_array_equal(render(objects, ShapesSpec()), ex["image"])
        assert objects_from_json(ex["objects"].encode()) == objects


def test_from_config():
    spec = ShapesSpec.from_config({"image_size": 48, "colors": ["red", "blue"],
                                   "shapes": ["circle", "square"], "heldout_combos": [],
                                   "num_train": 10, "data_dir": "/x"})
    assert spec.colors == ("red", "blue") and spec.heldout_combos == () and spec.image_size == 48
    assert ShapesSpec.from_config({}) == ShapesSpec()


@pytest.mark.parametrize("kwargs,field", [
    (dict(image_size=30), "image_size"),
    (dict(colors=("red", "mauve")), "colors"),
    (dict(colors=()), "colors"),
    (dict(shapes=("circle", "hexagon")), "shapes"),
    (dict(heldout_combos=("green hexagon",)), "heldout_combos"),
    (dict(heldout_combos=("black circle",)), "heldout_combos"),
    (dict(colors=("red",), shapes=("circle",), heldout_combos=("red circle",)), "heldout_combos"),
    (dict(max_objects=4), "max_objects"),
    (dict(max_objects=0), "max_objects"),
    (dict(grid=1, image_size=8, max_objects=2), "max_objects"),
    (dict(jitter=2), "jitter"),
    (dict(jitter=-1), "jitter"),
    (dict(grid=0), "grid"),
])
def test_bad_spec_raises_naming_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ShapesSpec(**kwargs)


def test_unseen_needs_heldout_and_bad_split():
    spec = ShapesSpec(heldout_combos=())
    with pytest.raises(ValueError, match="heldout_combos"):
        next(make_examples(spec, "unseen", 1))
    with pytest.raises(ValueError, match="split"):
        next(make_examples(spec, "validation", 1))
