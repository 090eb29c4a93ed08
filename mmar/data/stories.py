"""Interleaved shape stories: several images whose content changes as the text says.

    "a red circle and a blue square." <image 0>
    "the red circle turns green." <image 1>
    "the blue square moves down." <image 2>
    "a yellow triangle appears." <image 3>

Only the first text describes a whole scene; every later text names a change, so image k
can only be drawn right from image k-1 plus the text: the next image depends on earlier ones
(what an interleaved model must learn, and what a program can check: `story_scenes` gives
the true objects of every image). Objects in a scene have distinct (colour, shape), so "the
red circle" always names one object. Numpy only, deterministic from the rng.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from mmar.data.synthetic import ShapeObject, ShapesSpec, article, objects_to_json, render

MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}


def _name(o: ShapeObject) -> str:
    return f"{o.color} {o.shape}"


def _free_cells(spec: ShapesSpec, objs) -> list[tuple[int, int]]:
    used = {(o.row, o.col) for o in objs}
    return [(r, c) for r in range(spec.grid) for c in range(spec.grid) if (r, c) not in used]


def _new_object(rng, spec: ShapesSpec, objs) -> ShapeObject | None:
    names = {(o.color, o.shape) for o in objs}
    combos = [c for c in spec.all_combos() if c not in names]
    cells = _free_cells(spec, objs)
    if not combos or not cells:
        return None
    color, shape = combos[int(rng.integers(len(combos)))]
    row, col = cells[int(rng.integers(len(cells)))]
    return ShapeObject(shape, color, row, col)


def _step(rng, spec: ShapesSpec, objs: list[ShapeObject]) -> tuple[str, list[ShapeObject]]:
    """One change of the scene and the sentence that says it (retries until one applies)."""
    while True:
        op = ("recolour", "move", "appear", "disappear")[int(rng.integers(4))]
        if op == "appear":
            o = _new_object(rng, spec, objs)
            if o is not None and len(objs) < spec.max_objects:
                return f"{article(o.color)} {_name(o)} appears.", objs + [o]
            continue
        if not objs:
            continue
        i = int(rng.integers(len(objs)))
        o = objs[i]
        if op == "disappear" and len(objs) > 1:
            return f"the {_name(o)} disappears.", objs[:i] + objs[i + 1:]
        if op == "recolour":
            taken = {(p.color, p.shape) for p in objs}
            colors = [c for c in spec.colors if c != o.color and (c, o.shape) not in taken]
            if colors:
                c = colors[int(rng.integers(len(colors)))]
                new = ShapeObject(o.shape, c, o.row, o.col)
                return f"the {_name(o)} turns {c}.", objs[:i] + [new] + objs[i + 1:]
        if op == "move":
            free = set(_free_cells(spec, objs))
            ok = [d for d, (dr, dc) in MOVES.items() if (o.row + dr, o.col + dc) in free]
            if ok:
                d = ok[int(rng.integers(len(ok)))]
                dr, dc = MOVES[d]
                new = ShapeObject(o.shape, o.color, o.row + dr, o.col + dc)
                return f"the {_name(o)} moves {d}.", objs[:i] + [new] + objs[i + 1:]


def story_scenes(rng: np.random.Generator, spec: ShapesSpec, num_images: int):
    """[(text, objects)] for one story of `num_images` scenes."""
    objs: list[ShapeObject] = []
    for _ in range(int(rng.integers(1, min(2, spec.max_objects) + 1))):
        objs.append(_new_object(rng, spec, objs))
    first = " and ".join(f"{article(o.color)} {_name(o)}" for o in objs) + "."
    out = [(first, list(objs))]
    for _ in range(num_images - 1):
        text, objs = _step(rng, spec, objs)
        out.append((text, list(objs)))
    return out


def make_stories(spec: ShapesSpec, num: int, *, min_images: int = 2, max_images: int = 4,
                 seed: int = 0) -> Iterator[dict]:
    """Yields `num` stories {"segments": [{"text"}, {"image": k}, ...], "images": [uint8],
    "scenes": [objects JSON per image]}."""
    rng = np.random.default_rng([spec.seed, 7, seed])
    for _ in range(num):
        scenes = story_scenes(rng, spec, int(rng.integers(min_images, max_images + 1)))
        segments, images = [], []
        for k, (text, objs) in enumerate(scenes):
            segments += [{"text": text}, {"image": k}]
            images.append(render(objs, spec, rng))
        yield {"segments": segments, "images": images,
               "scenes": [objects_to_json(objs) for _, objs in scenes]}
