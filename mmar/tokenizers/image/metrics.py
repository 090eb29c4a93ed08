"""How good is an image tokenizer: the numbers docs/tokenizers.md compares tokenizers on.

* reconstruction: MSE on [0, 1] pixels, PSNR (dB, mean over images), SSIM (scikit-image);
* codes: codebook usage (share of the ``num_codes`` ids seen on a held-out set) and code
  perplexity (exp of the entropy of the code histogram: how many codes are *effectively* used);
* the shape judge's accuracy on reconstructions of held-out shapes scenes (can the decoder
  model still be judged right through this tokenizer?);
* PSNR on crops of scikit-image's sample photos, which no tokenizer is trained on, so a
  tokenizer is not only judged on synthetic flat colours;
* encode throughput (images/s, jitted, after a warm-up call).
"""
from __future__ import annotations

import time

import numpy as np

from mmar.eval import judge

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def reconstruction(original: np.ndarray, recon: np.ndarray) -> dict:
    """uint8 ``[N, H, W, 3]`` pairs -> ``{"mse", "psnr", "ssim"}``."""
    from skimage.metrics import structural_similarity
    a = np.asarray(original, np.float64) / 255.0
    b = np.asarray(recon, np.float64) / 255.0
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(1)
    psnr = 10 * np.log10(1.0 / np.maximum(mse, 1e-10))
    ssim = [structural_similarity(x, y, channel_axis=-1, data_range=1.0) for x, y in zip(a, b)]
    return {"mse": float(mse.mean()), "psnr": float(psnr.mean()), "ssim": float(np.mean(ssim))}


def code_stats(codes: np.ndarray, num_codes: int) -> dict:
    """``{"usage": share of ids used, "perplexity": exp(entropy of the code histogram)}``."""
    counts = np.bincount(np.asarray(codes).ravel(), minlength=num_codes).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return {"usage": float((counts > 0).mean()),
            "perplexity": float(np.exp(-(p * np.log(p)).sum()))}


def photo_crops(size: int, num: int = 64, scale: int = 4, seed: int = 0) -> np.ndarray:
    """``num`` uint8 crops ``[num, size, size, 3]`` from scikit-image's sample photos (shipped
    with the package: no download), each photo first shrunk ``scale`` times by block means so
    that a crop holds a recognisable piece of the scene, not a few pixels of texture."""
    from skimage import data as skdata
    rng = np.random.RandomState(seed)
    photos = []
    for name in PHOTOS:
        img = np.asarray(getattr(skdata, name)(), np.float64)[..., :3]
        h, w = (img.shape[0] // scale) * scale, (img.shape[1] // scale) * scale
        img = img[:h, :w].reshape(h // scale, scale, w // scale, scale, 3).mean((1, 3))
        photos.append(img)
    crops = []
    for i in range(num):
        img = photos[i % len(photos)]
        y, x = rng.randint(0, img.shape[0] - size + 1), rng.randint(0, img.shape[1] - size + 1)
        crops.append(img[y:y + size, x:x + size])
    return np.clip(np.round(np.stack(crops)), 0, 255).astype(np.uint8)


def encode_throughput(tokenizer, images: np.ndarray, batch_size: int = 256,
                      repeats: int = 3) -> float:
    """Images per second of ``tokenizer.encode`` (compiled first, best of ``repeats``)."""
    batch = images[:batch_size]
    tokenizer.encode(batch, batch_size=batch_size)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        tokenizer.encode(batch, batch_size=batch_size)
        best = min(best, time.perf_counter() - t0)
    return len(batch) / best


def evaluate(tokenizer, records, spec, *, image_size: int, num_crops: int = 64) -> dict:
    """Every metric for a trained ``ImageTokenizer`` (runtime.py) on held-out shapes
    ``records`` (dicts with ``image`` and ``caption``) and on photo crops."""
    images = np.stack([np.asarray(r["image"], np.uint8) for r in records])
    codes = tokenizer.encode(images)
    recon = tokenizer.decode(codes)
    out = reconstruction(images, recon)
    out.update(code_stats(codes, tokenizer.num_codes))
    out["judge_accuracy"] = float(np.mean([judge.judge_image(img, r["caption"], spec)
                                           for img, r in zip(recon, records)]))
    crops = photo_crops(image_size, num_crops)
    photo = reconstruction(crops, tokenizer.decode(tokenizer.encode(crops)))
    out.update({f"photo_{k}": v for k, v in photo.items()})
    out["tokens_per_image"] = int(codes.shape[1])
    out["encode_images_per_s"] = encode_throughput(tokenizer, images)
    return out
