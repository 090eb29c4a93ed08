"""The shape judge: reads a shapes image back into objects and checks it against a caption.

This is a small GenEval for the synthetic shapes data (``mmar.data.synthetic``):

* ``judge_image(image, caption, spec)`` (text-to-image): does the image show exactly what
  the caption says? The detected multiset of (colour, shape) must equal the caption's (no
  extra objects) and a relation must hold between the objects' centroids.
* ``judge_caption(objects, caption, spec)`` (image-to-text): is a generated caption a true
  description of the ground-truth scene? Any true caption counts, canonical or not.

``read_image`` must work on ground truth, on blurry autoencoder reconstructions and on
generated samples, so it never assumes the grid (objects may be jittered or misplaced) and
its shape features are ones that a mild blur barely changes: total colour mass (a blur
conserves it) over the bounding box, and the skew of the vertical mass profile (a
symmetric blur keeps the third central moment; an apex-up triangle is bottom-heavy).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

import numpy as np
import PIL.Image
from scipy import ndimage

from mmar.data.synthetic import COLOR_RGB, COUNT_WORDS, ShapeObject, ShapesSpec, article

Pair = tuple[str, str]  # (colour, shape)
RELATIONS = ("left of", "above")
_WORD_COUNTS = {w: n for n, w in COUNT_WORDS.items()}

# Pixels darker than this (max channel) are background whatever their hue: the dark halo
# of a blurred edge or decoder noise must not become an object.
DARK_THRESHOLD = 64.0
# Shape decision thresholds (see module docstring). Ground truth at 6px objects: square
# fill 1.0, circle 0.67; triangle row-profile skew -0.53 (-0.37 after a 3x3 box blur).
TRIANGLE_SKEW = -0.2
SQUARE_FILL = 0.85
NOISE_FLOOR = 0.05  # colour coverage below this counts as none
_EIGHT = np.ones((3, 3), bool)  # 8-connectivity: a blur may cut thin diagonals


@dataclasses.dataclass(frozen=True)
class ParsedCaption:
    """What a caption requires: a multiset of (colour, shape) and maybe one relation."""

    objects: tuple[Pair, ...]  # sorted, with repetition
    relation: tuple[Pair, str, Pair] | None = None  # (first, "left of" | "above", second)


@dataclasses.dataclass(frozen=True)
class Detected:
    color: str
    shape: str
    y: float  # centroid, pixels
    x: float
    area: int  # pixels in the component


def parse_caption(caption: str, spec: ShapesSpec) -> ParsedCaption | None:
    """Parses the caption grammar strictly; None if ungrammatical or unknown words."""
    if not isinstance(caption, str):
        return None
    w = caption.strip().split()

    def obj(color: str, shape: str, art: str | None = None) -> Pair | None:
        if art is not None and art != article(color):
            return None
        return (color, shape) if color in spec.colors and shape in spec.shapes else None

    if len(w) == 3 and w[0] in ("a", "an"):
        o = obj(w[1], w[2], w[0])
        return ParsedCaption((o,)) if o else None
    if len(w) == 3 and w[0] in _WORD_COUNTS and w[2].endswith("s"):
        o = obj(w[1], w[2][:-1])
        return ParsedCaption((o,) * _WORD_COUNTS[w[0]]) if o else None
    if len(w) in (7, 8) and w[0] in ("a", "an"):
        rel = " ".join(w[3:-3])
        if rel not in RELATIONS:
            return None
        a, b = obj(w[1], w[2], w[0]), obj(w[-2], w[-1], w[-3])
        if not a or not b or a == b:  # the grammar names two different objects
            return None
        return ParsedCaption(tuple(sorted((a, b))), (a, rel, b))
    return None


def square_view(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> [size, size, 3] (bicubic; as is when already that size)."""
    image = np.asarray(image)
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(PIL.Image.fromarray(image.astype(np.uint8)).resize(
        (size, size), PIL.Image.Resampling.BICUBIC))


def _expected_size(spec: ShapesSpec) -> int:
    return spec.object_size


def read_image(image: np.ndarray, spec: ShapesSpec) -> list[Detected]:
    """Reads an image back into objects (colour, shape, centroid), ignoring the grid. An
    image of another size or shape (a keep-aspect model's, `sample.image_shape`) is read
    resized to the data's square, where the shapes were drawn."""
    img = np.asarray(square_view(image, spec.image_size), np.float32)[..., :3]
    palette = np.array([COLOR_RGB[c] for c in spec.colors], np.float32)  # [K, 3]
    # Brightness-invariant nearest colour: distance from the pixel to the segment from
    # black to each palette colour. A blurred edge is the colour scaled towards black, so
    # darkened yellow stays yellow instead of becoming orange.
    alpha = np.clip(img @ palette.T / (palette**2).sum(-1), 0.0, 1.0)  # [H, W, K]
    resid = np.linalg.norm(img[:, :, None, :] - alpha[..., None] * palette, axis=-1)
    best = resid.argmin(-1)
    a = np.take_along_axis(alpha, best[..., None], -1)[..., 0]
    r = np.take_along_axis(resid, best[..., None], -1)[..., 0]
    strength = a * np.linalg.norm(palette, axis=-1)[best]
    # Background: under half the colour's intensity, dark, or far off every colour's hue
    # (grey / low saturation).
    fg = (a >= 0.5) & (img.max(-1) >= DARK_THRESHOLD) & (r <= 0.5 * strength)
    cls = np.where(fg, best + 1, 0)  # 0 = background, k = spec.colors[k - 1]
    s = _expected_size(spec)
    min_area = max(2.0, 0.25 * 0.5 * s * s)  # a quarter of the smallest (triangle) area
    out = []
    for k, color in enumerate(spec.colors, start=1):
        labels, n = ndimage.label(cls == k, structure=_EIGHT)
        if not n:
            continue
        weight = alpha[..., k - 1]  # soft colour coverage, conserved by a blur
        for i, sl in enumerate(ndimage.find_objects(labels), start=1):
            comp = labels[sl] == i
            area = int(comp.sum())
            if area < min_area:
                continue
            out.append(_describe_component(color, comp, sl, cls, labels == i, weight, area))
    out.sort(key=lambda d: (d.y, d.x))
    return out


def _describe_component(color, comp, sl, cls, mask, weight, area) -> Detected:
    """Shape and centroid of one component from its soft colour mass."""
    h, w = comp.shape
    # Window: the component grown by 1px (where a blur spreads its mass), background
    # pixels only besides its own, never another object's. A small floor keeps
    # background noise out of the moments (cubed distances amplify it).
    y0, x0 = max(sl[0].start - 1, 0), max(sl[1].start - 1, 0)
    y1, x1 = sl[0].stop + 1, sl[1].stop + 1
    own = mask[y0:y1, x0:x1]
    keep = own | (ndimage.binary_dilation(own, _EIGHT) & (cls[y0:y1, x0:x1] == 0))
    wt = np.where(keep, np.maximum(weight[y0:y1, x0:x1] - NOISE_FLOOR, 0.0), 0.0)
    mass = float(wt.sum())
    ys, xs = np.mgrid[y0:y0 + wt.shape[0], x0:x0 + wt.shape[1]]
    cy, cx = float((wt * ys).sum() / mass), float((wt * xs).sum() / mass)
    dy = ys - cy
    var = float((wt * dy**2).sum() / mass)
    skew = float((wt * dy**3).sum() / mass) / max(var, 1e-6) ** 1.5
    fill = mass / (h * w)
    if skew < TRIANGLE_SKEW:
        shape = "triangle"
    elif fill >= SQUARE_FILL:
        shape = "square"
    else:
        shape = "circle"
    return Detected(color=color, shape=shape, y=cy, x=cx, area=area)


def describe(detected: Sequence[Detected]) -> str:
    """A human-readable summary of detections, for logs and failure messages."""
    return "; ".join(f"{d.color} {d.shape} @({d.y:.1f},{d.x:.1f})" for d in detected) or "nothing"


def _relation_holds(rel: str, a_yx: tuple[float, float], b_yx: tuple[float, float]) -> bool:
    if rel == "left of":
        return a_yx[1] < b_yx[1]
    return a_yx[0] < b_yx[0]


def _matches(parsed: ParsedCaption, items: Sequence[tuple[Pair, tuple[float, float]]]) -> bool:
    if Counter(p for p, _ in items) != Counter(parsed.objects):
        return False
    if parsed.relation is None:
        return True
    first, rel, second = parsed.relation
    pos = {p: yx for p, yx in items}  # pairs are unique when a relation is present
    return _relation_holds(rel, pos[first], pos[second])


def judge_image(image: np.ndarray, caption: str, spec: ShapesSpec) -> bool:
    """Text-to-image: the image shows exactly the caption's objects, relation by centroids."""
    parsed = parse_caption(caption, spec)
    if parsed is None:
        return False
    items = [((d.color, d.shape), (d.y, d.x)) for d in read_image(image, spec)]
    return _matches(parsed, items)


def judge_caption(objects: Sequence[ShapeObject], caption: str, spec: ShapesSpec) -> bool:
    """Image-to-text: the caption truly describes the scene (relation by strict row/col)."""
    parsed = parse_caption(caption, spec)
    if parsed is None:
        return False
    items = [((o.color, o.shape), (float(o.row), float(o.col))) for o in objects]
    return _matches(parsed, items)


def judge_scene(image: np.ndarray, objects: Sequence[ShapeObject], spec: ShapesSpec) -> bool:
    """Next image of a story: exactly the scene's objects, each in its grid cell."""
    cell = spec.cell_size
    got = Counter((d.color, d.shape, int(d.y // cell), int(d.x // cell))
                  for d in read_image(image, spec))
    return got == Counter((o.color, o.shape, o.row, o.col) for o in objects)


__all__ = ["ParsedCaption", "Detected", "parse_caption", "read_image", "judge_image",
           "judge_caption", "judge_scene", "describe"]
