"""Built-in document data sets: shape stories (images follow the text) and real digits."""
import json

import numpy as np

from mmar.data import mixture, stories
from mmar.data.builders import generated
from mmar.data.synthetic import ShapesSpec, objects_from_json, render
from mmar.eval.judge import parse_caption


def test_story_images_change_as_the_text_says():
    spec = ShapesSpec()
    rng = np.random.default_rng(0)
    for _ in range(200):
        scenes = stories.story_scenes(rng, spec, 4)
        for (_, before), (text, after) in zip(scenes, scenes[1:]):
            b = {(o.color, o.shape): (o.row, o.col) for o in before}
            a = {(o.color, o.shape): (o.row, o.col) for o in after}
            words = text.rstrip(".").split()
            if words[-1] == "appears":
                new = (words[1], words[2])
                assert set(a) - set(b) == {new} and set(b) <= set(a)
            elif words[-1] == "disappears":
                assert set(b) - set(a) == {(words[1], words[2])} and set(a) <= set(b)
            elif words[-2] == "turns":
                old, new = (words[1], words[2]), (words[4], words[2])
                assert old in b and new in a and a[new] == b[old] and old not in a
            else:
                assert words[-2] == "moves"
                dr, dc = stories.MOVES[words[-1]]
                key = (words[1], words[2])
                assert a[key] == (b[key][0] + dr, b[key][1] + dc)
            assert {k: v for k, v in a.items() if k in b and k != (words[1], words[2])} == \
                {k: v for k, v in b.items() if k in a and k != (words[1], words[2])}
        assert len({(o.row, o.col) for o in scenes[-1][1]}) == len(scenes[-1][1])
        assert parse_caption(scenes[0][0].rstrip(".").split(" and ")[0], spec) is not None


def test_stories_builder_round_trips(tmp_path):
    spec = ShapesSpec()
    splits = generated.prepare_stories(spec, data_dir=str(tmp_path), num_train=12, num_test=4,
                                       log=lambda m: None)
    assert len(splits["train"]) == 12 and len(splits["test"]) == 4
    want = list(stories.make_stories(spec, 12))
    for i in (0, 5, 11):
        rec = splits["train"][i]
        assert rec["kind"] == "document" and rec["segments"] == want[i]["segments"]
        scenes = json.loads(rec["scenes"])
        for img, scene in zip(rec["images"], scenes):
            np.testing.assert_array_equal(img, render(objects_from_json(scene), spec))


def test_digits_are_real_class_conditional_images(tmp_path):
    splits = generated.prepare_digits(data_dir=str(tmp_path), image_size=32,
                                      log=lambda m: None)
    assert len(splits["train"]) + len(splits["test"]) == 1797
    assert len(splits["test"]) == 300
    by_label = {}
    for i in range(0, len(splits["test"]), 3):
        rec = splits["test"][i]
        label = int(rec["segments"][0]["text"].removeprefix("the digit "))
        img = rec["images"][0]
        assert img.shape == (32, 32, 3) and (img[..., 0] == img[..., 2]).all()
        by_label.setdefault(label, []).append(img[..., 0].astype(float) / 255)
    assert sorted(by_label) == list(range(10))
    # Real class structure: each image is nearer its own class mean than most others'.
    means = {k: np.mean(v, axis=0) for k, v in by_label.items()}
    hits = [min(means, key=lambda k: np.abs(x - means[k]).sum()) == label
            for label, xs in by_label.items() for x in xs]
    assert np.mean(hits) > 0.8
    # Into the mixture format: one caption document with one image each.
    docs = mixture.encode_documents(lambda x: np.zeros((len(x), 16), np.int32),
                                    splits["test"], log=lambda m: None)
    assert len(docs) == 300 and docs[0]["codes"].shape == (1, 16)
