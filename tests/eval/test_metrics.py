"""Eval metrics on known inputs: a perfect generator scores the ceiling, a random one chance."""
import numpy as np
import pytest
from scipy import ndimage

from mmar.data import stories
from mmar.data.synthetic import ShapeObject, ShapesSpec, make_examples, objects_from_json
from mmar.eval import digits, frechet, geneval, judge

SPEC = ShapesSpec()


@pytest.fixture(scope="module")
def shapes():
    return list(make_examples(SPEC, "test", 200, seed=4))


def test_geneval_perfect_generator_scores_one(shapes):
    scores = geneval.summarize([geneval.categories(ex["image"], ex["caption"], SPEC)
                                for ex in shapes])
    assert set(scores) == {f"geneval_{c}" for c in geneval.CATEGORIES} | {"geneval_overall"}
    for name, value in scores.items():
        assert value >= 0.98, (name, value)


def test_geneval_random_generator_scores_chance(shapes):
    """Images of other captions: each category near its chance level, the mean over every
    (caption, image) pair of the set, and far below 1 where chance is low."""
    rng = np.random.default_rng(0)
    images = [ex["image"] for ex in shapes]
    shuffled = [images[i] for i in rng.permutation(len(images))]
    got = geneval.summarize([geneval.categories(img, ex["caption"], SPEC)
                             for img, ex in zip(shuffled, shapes)])
    every = geneval.summarize([geneval.categories(img, ex["caption"], SPEC)
                               for ex in shapes[:50] for img in images[:50]])
    for name in every:
        assert abs(got[name] - every[name]) < 0.1, (name, got[name], every[name])
        assert every[name] < 0.5, (name, every[name])


def test_geneval_categories_separate_binding_from_presence():
    from mmar.data.synthetic import render
    img = render([ShapeObject("circle", "blue", 0, 0), ShapeObject("square", "red", 0, 2)], SPEC)
    # Colours swapped between the shapes: both shapes there, binding and position wrong.
    cats = geneval.categories(img, "a red circle left of a blue square", SPEC)
    assert cats == {"two_object": True, "attribute_binding": False, "position": False}
    cats = geneval.categories(img, "a blue circle left of a red square", SPEC)
    assert cats == {"two_object": True, "attribute_binding": True, "position": True}
    assert geneval.categories(img, "a blue square above a red circle", SPEC)["position"] is False
    assert geneval.categories(img, "two green circles", SPEC) == {"counting": False}
    one = render([ShapeObject("circle", "blue", 1, 1)], SPEC)
    assert geneval.categories(one, "a red circle", SPEC) == {"single_object": True,
                                                           "colors": False}


def test_judge_scene_on_stories():
    """The true next image of a story passes; the previous image (one change away) fails."""
    ok, stale = [], []
    for story in stories.make_stories(SPEC, 100, seed=1):
        truth = objects_from_json(story["scenes"][1])
        ok.append(judge.judge_scene(story["images"][1], truth, SPEC))
        stale.append(judge.judge_scene(story["images"][0], truth, SPEC))
    assert np.mean(ok) >= 0.99 and not any(stale)


@pytest.mark.slow
def test_digits_classifier_scores():
    clf = digits.classifier(32)
    assert clf.accuracy >= 0.9
    perfect = digits.score(clf.test_images, clf.test_labels, 32)
    assert perfect == {"digits_accuracy": clf.accuracy, "digits_classifier_accuracy": clf.accuracy}
    rng = np.random.default_rng(0)
    wrong = digits.score(clf.test_images, rng.integers(0, 10, len(clf.test_labels)), 32)
    assert abs(wrong["digits_accuracy"] - 0.1) < 0.06


def test_frechet_distance_closed_form():
    """Commuting covariances: FD = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2 per eigenvalue."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    a, b = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    got = frechet.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_builtin_frechet_ranks_distortions(shapes):
    real = np.stack([ex["image"] for ex in make_examples(SPEC, "train", 200)])
    test = np.stack([ex["image"] for ex in shapes])
    blurred = np.stack([ndimage.uniform_filter(x.astype(np.float32), (5, 5, 1))
                        for x in test]).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, test.shape).astype(np.uint8)
    same, blur, rand = (frechet.distance(real, x) for x in (test, blurred, noise))
    assert frechet.distance(test, test) < 1e-8
    assert same < blur < rand, (same, blur, rand)
    assert frechet.builtin_features(test[:3]).shape == (3, 112)


@pytest.mark.slow
def test_inception_weights_file(tmp_path):
    """A `.weights.h5` file (HDF5, no pickle) round-trips into the same features."""
    keras = pytest.importorskip("keras")
    model = keras.applications.InceptionV3(include_top=False, weights=None, pooling="avg",
                                           input_shape=(299, 299, 3))
    path = tmp_path / "inception.weights.h5"
    model.save_weights(str(path))
    features = frechet.InceptionFeatures(path)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    got = features(images)
    want = np.asarray(model(frechet._resize(images, 299) * 2.0 - 1.0, training=False))
    assert got.shape == (2, 2048)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="eval.inception_weights"):
        frechet.InceptionFeatures(tmp_path.joinpath("x.pkl").write_text("") or
                                  tmp_path / "x.pkl")
