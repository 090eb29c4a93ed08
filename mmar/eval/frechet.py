"""Frechet distance between image sets: a built-in feature extractor, or a user's Inception.

FD = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) over feature means and covariances
(Heusel et al., 2017). Two extractors:

* `builtin_features` (no downloads, no weights file, numpy only): every image is resized to
  32x32 RGB in [0, 1]; the features are (a) its 4x4 average-pooled colours (48 numbers:
  layout and colour) and (b) 64 fixed random 5x5x3 convolution filters (numpy
  `default_rng(0)`, zero-mean, unit norm) with ReLU, averaged over the image (64 numbers:
  edges and texture), 112 in all. A random-filter network is a known FID proxy that ranks
  distortions like a trained one on small images, but its numbers are comparable only with
  other `frechet_builtin` numbers, never with published FIDs.
* `InceptionFeatures(path)`: the standard FID network shape, Keras' InceptionV3 without its
  top, average-pooled (2048 features), inputs resized to 299x299 and scaled to [-1, 1]. The
  weights come from a file the user supplies: a Keras `.weights.h5` (HDF5 arrays, read by
  `model.load_weights`; no pickle), e.g. `inception_v3_weights_tf_dim_ordering_tf_kernels_
  notop.h5` renamed, or any InceptionV3 saved with `save_weights`. FIDs from Keras' ImageNet
  weights are close to, not identical with, those of the TF-slim graph that pytorch-fid ports.
  Set `--config.eval.inception_weights=PATH`; empty (the default) skips it.
"""
from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image
from scipy import linalg

FEATURE_SIZE = 32
NUM_FILTERS = 64


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    images = np.asarray(images)[..., :3]
    if images.shape[1:3] == (size, size):
        return images.astype(np.float32) / 255.0
    return np.stack([np.asarray(Image.fromarray(np.asarray(x, np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR)) for x in images]).astype(np.float32) / 255.0


def _filters() -> np.ndarray:
    w = np.random.default_rng(0).standard_normal((5 * 5 * 3, NUM_FILTERS))
    w -= w.mean(0)
    return (w / np.linalg.norm(w, axis=0)).astype(np.float32)


def builtin_features(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float64 [N, 112] (see the module docstring)."""
    x = _resize(images, FEATURE_SIZE)
    n = len(x)
    pooled = x.reshape(n, 4, FEATURE_SIZE // 4, 4, FEATURE_SIZE // 4, 3).mean((2, 4))
    patches = np.lib.stride_tricks.sliding_window_view(x, (5, 5), axis=(1, 2))
    patches = patches.transpose(0, 1, 2, 4, 5, 3).reshape(n, -1, 75)  # [N, P, 5*5*3]
    conv = np.maximum(patches @ _filters(), 0.0).mean(1)
    return np.concatenate([pooled.reshape(n, -1), conv], axis=1).astype(np.float64)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, np.float64)
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """FD of two Gaussians; a singular product gets eps on the diagonals (as pytorch-fid)."""
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(mu1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def distance(images_a, images_b, features=builtin_features) -> float:
    """Frechet distance between two image sets under a feature extractor."""
    return frechet_distance(*statistics(features(images_a)), *statistics(features(images_b)))


class InceptionFeatures:
    """Pool features (2048) of Keras' InceptionV3 with weights from a `.weights.h5` file."""

    def __init__(self, path, batch_size: int = 32):
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"eval.inception_weights={str(path)!r}: no such file")
        if not path.name.endswith(".h5"):
            raise ValueError(f"eval.inception_weights={str(path)!r}: expected a Keras "
                             "InceptionV3 `.weights.h5` / `.h5` weights file (HDF5)")
        import keras  # TensorFlow is already a dependency (TFDS); imported only when asked
        self.model = keras.applications.InceptionV3(include_top=False, weights=None,
                                                    pooling="avg", input_shape=(299, 299, 3))
        self.model.load_weights(str(path))
        self.batch_size = batch_size

    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            x = _resize(images[i:i + self.batch_size], 299) * 2.0 - 1.0
            out.append(np.asarray(self.model(x, training=False)))
        return np.concatenate(out).astype(np.float64)
