"""Class-conditional generation on real images: a classifier trained on scikit-learn's digits.

The classifier is scikit-learn's `LogisticRegression` on the digits' own 8x8 grey levels
(0-16), trained on the `train` split of `mmar_digits` (every image whose index is not a
multiple of 6) and scored on the `test` split (the rest): `digits_classifier_accuracy`, the
ceiling a perfect generator can reach. A generated image (`data.image_size`, RGB) is read the
same way the data set was made, backwards: grey = channel mean, averaged over each of the
8x8 blocks it was upscaled from, scaled to 0-16. Deterministic (lbfgs, fixed data), fitted in
about a second, cached per image size.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from mmar.data.builders.generated import digit_images


def to_features(images: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S, 3] -> float [N, 64]: 8x8 grey levels in [0, 16]."""
    grey = np.asarray(images, np.float32)[..., :3].mean(-1)
    n, s = grey.shape[:2]
    if s % 8:
        grey = np.stack([np.asarray(Image.fromarray(g).resize((8 * (s // 8 or 1),) * 2,
                                                              Image.Resampling.BILINEAR))
                         for g in grey])
        s = grey.shape[1]
    blocks = grey.reshape(n, 8, s // 8, 8, s // 8).mean((2, 4))
    return blocks.reshape(n, 64) * (16.0 / 255.0)


class DigitsClassifier:
    def __init__(self, image_size: int):
        from sklearn.linear_model import LogisticRegression
        images, labels = digit_images(image_size)
        test = np.arange(len(labels)) % 6 == 0
        x = to_features(images)
        self.model = LogisticRegression(max_iter=2000, C=0.1).fit(x[~test], labels[~test])
        self.accuracy = float((self.model.predict(x[test]) == labels[test]).mean())
        self.test_images, self.test_labels = images[test], labels[test]

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.model.predict(to_features(images)).astype(np.int64)


@functools.lru_cache(maxsize=4)
def classifier(image_size: int) -> DigitsClassifier:
    return DigitsClassifier(image_size)


def score(images: np.ndarray, labels, image_size: int) -> dict[str, float]:
    """`digits_accuracy` (generated images classified as their prompt's digit) beside
    `digits_classifier_accuracy` (the classifier on real held-out digits)."""
    clf = classifier(image_size)
    return {"digits_accuracy": float((clf.predict(images) == np.asarray(labels)).mean()),
            "digits_classifier_accuracy": clf.accuracy}
