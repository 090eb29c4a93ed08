"""Is a trained image tokenizer fit to hand to the decoder? Measured on held-out images.

Two measurements on the shapes data's test split (`image_tokenizer.check`):

- **the judge on reconstructions**: decode(encode(image)) must show exactly the caption's
  objects (mmar/eval/judge.py), on at least `min_accuracy` of the images;
- **one code, one content**: where a code covers one grid cell (the code grid is the data's
  object grid), the data set knows what each cell holds (empty, or one colour-shape pair);
  no code may stand for two contents. Two contents in one code are lost for good: no decoder
  can draw them apart. This is the failure that the demo's cosine schedule to zero caused
  (one seed of twelve: two purple and blue triangles in one FSQ code; docs/first_run.md).
  Multi-scale codes (quantizer 'msrq') cover no single cell; for them the judge is also run
  on the images of the first 1, 2, ... token maps (`judge_by_scales`): how coarse to fine
  the decoder's image becomes pass by pass.

`check` returns the figures and the collisions; `enforce` logs them and, in mode "stop",
raises `TokenizerCheckError` (one line: what collided and what to change) before a decoder
trains on codes that cannot be told apart. Data other than the built-in shapes has no judge:
the check says so and passes.
"""
from __future__ import annotations

import collections
import json

import numpy as np
from etils import epath

from mmar.data import pipeline, synthetic
from mmar.errors import UserError
from mmar.eval import judge
from mmar.tokenizers.image import metrics

MAX_IMAGES = 200


class TokenizerCheckError(UserError, RuntimeError):
    """The trained tokenizer failed its check (mode 'stop')."""


def cell_contents(objects, grid: int) -> np.ndarray:
    """[grid, grid] strings: each cell's 'colour shape', or 'empty'."""
    cells = np.full((grid, grid), "empty", dtype=object)
    for o in objects:
        cells[o.row, o.col] = o.combo
    return cells


def _keys(codes: np.ndarray, cells: int) -> list[str]:
    """One key per cell: its code, or its sub-codes joined by '+' (RQ, factorised FSQ)."""
    per_cell = np.asarray(codes).reshape(cells, -1)
    return ["+".join(str(int(c)) for c in row) for row in per_cell]


def collisions(codes: np.ndarray, contents: np.ndarray) -> dict[str, list[str]]:
    """{code: the contents it stands for} for every code seen with more than one content;
    codes [N, g, g] (or [N, g, g, depth]: a cell's sub-codes together are its code) and
    contents [N, g, g] cell for cell."""
    contents = np.asarray(contents).reshape(-1)
    owners = collections.defaultdict(set)
    for key, content in zip(_keys(codes, len(contents)), contents):
        owners[key].add(str(content))
    return {key: sorted(c) for key, c in sorted(owners.items()) if len(c) > 1}


def factors(codes: np.ndarray, contents: np.ndarray) -> list[dict[str, bool]]:
    """Per sub-code (depth index), whether its value alone tells an object's shape and
    whether it tells its colour (over the cells that hold an object: an empty cell may share
    either sub-code with an object, a black colour makes any mask empty): what a factorised
    tokenizer's sub-codes name. A compositional pair of sub-codes has one naming each."""
    contents = np.asarray(contents).reshape(-1)
    per_cell = np.asarray(codes).reshape(len(contents), -1)
    full = contents != "empty"
    parts = [c.split(" ") for c in contents[full]]
    out = []
    for d in range(per_cell.shape[1]):
        named = {}
        for what, index in (("shape", 1), ("colour", 0)):
            seen = collections.defaultdict(set)
            for code, part in zip(per_cell[full, d], parts):
                seen[int(code)].add(part[index])
            named[what] = all(len(v) == 1 for v in seen.values())
        out.append(named)
    return out


def check(tokenizer, cfg) -> dict:
    """The figures (see the module doc) of `tokenizer` (a runtime ImageTokenizer) on up to
    MAX_IMAGES held-out images; {"applies": False} for data without the shapes judge."""
    if cfg.data.name != "shapes":
        return {"applies": False}
    spec = synthetic.ShapesSpec.from_config(cfg.data)
    source = pipeline.shapes_split(cfg.data, "test")
    records = [source[i] for i in range(min(MAX_IMAGES, len(source)))]
    images = np.stack([r["image"] for r in records])
    codes = tokenizer.encode(images)
    recon = tokenizer.decode(codes)
    accuracy = float(np.mean([judge.judge_image(img, r["caption"], spec)
                              for img, r in zip(recon, records)]))
    out = {"applies": True, "images": len(records), "reconstruction_accuracy": accuracy,
           "distinct_codes": int(len(np.unique(codes)))}
    side = cfg.data.image_size // cfg.image_tokenizer.downsample
    if tokenizer.flat:   # multi-scale: the coarse images after each token map
        coarse = [tokenizer.decode_scales(codes, m + 1)
                  for m in range(len(cfg.image_tokenizer.msrq.scales))]
        sides = [str(k) for k in cfg.image_tokenizer.msrq.scales]
        out["judge_by_scales"] = {k: float(np.mean([
            judge.judge_image(img, r["caption"], spec) for img, r in zip(c, records)]))
            for k, c in zip(sides, coarse)}
        out["psnr_by_scales"] = {k: metrics.reconstruction(images, c)["psnr"]
                                 for k, c in zip(sides, coarse)}
    elif side == spec.grid:   # one code (or one tuple of sub-codes) per object cell
        contents = np.stack([cell_contents(synthetic.objects_from_json(r["objects"]), spec.grid)
                             for r in records])
        out["distinct_contents"] = int(len(np.unique(contents)))
        out["collisions"] = collisions(codes, contents)
        if tokenizer.depth > 1:
            out["sub_codes_name"] = factors(codes, contents)
    return out


def enforce(tokenizer, cfg, log=print, path=None) -> dict:
    """`check`, logged and written to `path` (JSON) when given; mode 'stop' then raises
    TokenizerCheckError when it fails."""
    mode = cfg.image_tokenizer.check.mode
    if mode == "off":
        return {"applies": False, "mode": "off"}
    figures = {**check(tokenizer, cfg), "mode": mode}
    if not figures["applies"]:
        log(f"[tokenizer-check] data.name={cfg.data.name!r}: no judge for this data; "
            "not checked")
        return figures
    need = cfg.image_tokenizer.check.min_accuracy
    lost = figures.get("collisions", {})
    contents = (f", {figures['distinct_contents']} cell contents, "
                f"{len(lost)} code(s) holding two or more" if "collisions" in figures else "")
    log(f"[tokenizer-check] {figures['images']} held-out images: judge on reconstructions "
        f"{figures['reconstruction_accuracy']:.3f} (need {need}), "
        f"{figures['distinct_codes']} distinct codes{contents}")
    if "judge_by_scales" in figures:
        log("[tokenizer-check] the first maps only (up to side: judge, PSNR): " + ", ".join(
            f"{k}: {v:.3f}, {figures['psnr_by_scales'][k]:.1f} dB"
            for k, v in figures["judge_by_scales"].items()))
    for d, named in enumerate(figures.get("sub_codes_name", ())):
        what = " and ".join(k for k, v in named.items() if v) or "neither shape nor colour"
        log(f"[tokenizer-check] sub-code {d} alone names the cell's {what}")
    problems = []
    if figures["reconstruction_accuracy"] < need:
        problems.append(f"the judge accepts {figures['reconstruction_accuracy']:.3f} of the "
                        f"reconstructions (image_tokenizer.check.min_accuracy={need})")
    if lost:
        code, names = next(iter(lost.items()))   # a code, or sub-codes 'a+b' 
        shown = " and ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3
                                           else "")
        problems.append(f"code {code} stands for {shown}"
                        + (f" ({len(lost) - 1} more such codes)" if len(lost) > 1 else ""))
    figures["passed"] = not problems
    if path is not None:
        epath.Path(path).write_text(json.dumps(figures, indent=1))
    if problems:
        message = ("the trained image tokenizer fails its check: " + "; ".join(problems)
                   + ". Train it longer (image_tokenizer.train.steps), keep the learning rate "
                   "from decaying to 0 (image_tokenizer.train.min_lr_ratio), or give it more "
                   "codes; --config.image_tokenizer.check.mode=warn goes on anyway")
        if mode == "stop":
            raise TokenizerCheckError(message)
        log(f"[tokenizer-check] warning: {message}")
    return figures
