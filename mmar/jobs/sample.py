"""`mmar sample`: text-to-image, image-to-text and interleaved stories on held-out data.

Writes under `<workdir>/samples/`: `t2i_<split>.png` (a grid of generated images, captions
in `t2i_<split>.jsonl` in the same order), `i2t_<split>.jsonl` (true and generated captions),
`interleaved_test.png` / `.jsonl` (stories continued after their second text: true first
image, true next image, generated next image per row; the generated text and images of each
continuation in the JSONL) and `digits_test.png` / `.jsonl` ("the digit N" prompts). Every
sample is judged (shape judge, digits classifier) so `mmar eval` can count without
re-sampling, and every JSONL record carries its sampling `settings` and `seed`: the key of a
sample is `jax.random.split` of `key(seed)` once per batch of `sample.batch_size`, in order
(`batch`, `row` in the record), so a record can be re-drawn exactly.

Interleaved stories: a held-out story (the `test` split of `mmar_stories`, generated in
memory by `stories.make_stories(spec, n, seed=1)`) is cut after its second text, `<boi>` is
appended, and the model continues for `sample.interleaved_tokens` tokens: first the next
image (whose content the text only names as a change of the first image, so the model must
read the earlier image), then whatever text and images it chooses, every image whole. The
first generated image is judged against the story's true scene (`judge.judge_scene`: same
objects in the same grid cells): the next-image accuracy of `mmar eval`. Guidance
(`sample.cfg_scale_image`) applies to the codes of that first image; its unconditional twin
is `<bos> <boi>`, as for text-to-image.
"""
from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmar import config as config_lib
from mmar import derived, rundir
from mmar.data import pipeline, stories, synthetic
from mmar.eval import digits, geneval, judge
from mmar.sample import dispatch, sjd
from mmar.sample.plain import split_document


class Models:
    """A loaded run (mmar/rundir.py) with its samplers, ready to sample; keeps the held-out
    records it reads and the images it draws for `mmar eval`."""

    def __init__(self, run: rundir.Run):
        cfg = run.cfg
        self.run, self.cfg, self.vocab, self.tokenizer = run, cfg, run.vocab, run.tokenizer
        self.text = run.text   # the text tokenizer: captions <-> text ids
        self.model_state, self.params, self.step = run.model_state, run.params, run.step
        self.num_codes = derived.codes_per_image(cfg)   # the RQ depth included
        # `image_sampler` draws every image, as data.image_order and sample.image_decoder
        # say (mmar/sample/dispatch.py); `sampler` (plain decoding) every text.
        self.code_vectors = None   # latent neighbours for LANTERN (sample.image_decoder="sjd")
        if self.tokenizer.depth == 1 and not self.tokenizer.flat:   # one code per position
            self.code_vectors = sjd.code_vectors(self.tokenizer)
        self.sampler, self.image_sampler = dispatch.samplers(
            cfg, self.model_state, self.vocab, self.num_codes, code_vectors=self.code_vectors)
        self._records = {}
        self.images = {}  # generated images by sample set, kept for `mmar eval`

    def records(self, split: str) -> list[dict]:
        """The first eval.num_examples records of a split, read once per split and run."""
        if split not in self._records:
            source = pipeline.shapes_split(self.cfg.data, split)
            n = min(self.cfg.eval.num_examples, len(source))
            self._records[split] = [source[i] for i in range(n)]
        return self._records[split]


VERDICT_COLOURS = {True: (40, 170, 60), False: (200, 50, 40)}   # judged right / wrong
LINE_HEIGHT = 11   # PIL's default bitmap font: 6 x 11 pixels a character


def _wrap(text: str, width: int) -> list[str]:
    """Words into lines of at most `width` characters (a longer word is cut)."""
    lines, line = [], ""
    for word in text.split():
        while len(word) > width:
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:width])
            word = word[width:]
        if not line:
            line = word
        elif len(line) + 1 + len(word) <= width:
            line += " " + word
        else:
            lines.append(line)
            line = word
    return lines + ([line] if line else [])


def image_grid(images: np.ndarray, columns: int, scale: int = 3,
               labels: list[tuple[str, bool | None]] | None = None) -> Image.Image:
    """uint8 [N, H, W, 3] -> one PNG-ready picture, `columns` wide, 2px gaps.

    `labels`: (text, verdict) per image, written under it (wrapped to the cell), with a bar
    above the text in green (verdict True), red (False) or none (None): so that a person
    sees which caption each image was drawn for and what the judge said, without the JSONL
    beside the grid."""
    n, h, w, _ = images.shape
    rows = -(-n // columns)
    gap, cell_w = 2, w * scale
    chars = max(1, (cell_w - 4) // 6)
    wrapped = [_wrap(text, chars) for text, _ in labels] if labels else []
    label_h = (4 + 3 + LINE_HEIGHT * max(map(len, wrapped), default=0)) if labels else 0
    cell_h = h * scale + label_h
    canvas = np.full((rows * (cell_h + gap), columns * (cell_w + gap), 3), 64, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        big = img.repeat(scale, 0).repeat(scale, 1)
        y, x = r * (cell_h + gap), c * (cell_w + gap)
        canvas[y:y + h * scale, x:x + cell_w] = big
        if labels and labels[i][1] is not None:
            canvas[y + h * scale:y + h * scale + 4, x:x + cell_w] = VERDICT_COLOURS[labels[i][1]]
    picture = Image.fromarray(canvas)
    if labels:
        draw, font = ImageDraw.Draw(picture), ImageFont.load_default()
        for i, lines in enumerate(wrapped):
            r, c = divmod(i, columns)
            y, x = r * (cell_h + gap) + h * scale + 6, c * (cell_w + gap) + 2
            for k, line in enumerate(lines):
                draw.text((x, y + k * LINE_HEIGHT), line, fill=(235, 235, 235), font=font)
    return picture


def _batches(items, size):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def sample_seed(cfg) -> int:
    """The sampling key's seed: `sample.seed`, or the run's `seed` when it is -1."""
    return int(cfg.sample.seed) if cfg.sample.seed >= 0 else int(cfg.seed)


def provenance(models: Models, seed: int, index: int) -> dict:
    """What re-draws sample `index`: its settings, seed, batch and row in the batch.

    The settings are fields of the `sample` section under their config names: the warp and
    guidance fields, `image_decoder`, the options of the decoder that drew the images
    (`sjd`, `zipar` or `randar`, a nested dict as in the config; none for plain decoding)
    and `batch_size`."""
    sample = models.cfg.sample
    batch, row = divmod(index, sample.batch_size)
    return {"settings": dict(models.image_sampler.settings(), **models.sampler.settings(),
                             image_decoder=sample.image_decoder,
                             batch_size=sample.batch_size),
            "seed": seed, "batch": batch, "row": row}


def image_grid_of(cfg) -> tuple[int, int] | None:
    """The code grid text-to-image asks for: `sample.image_shape` (H x W pixels) on a
    keep-aspect model's grid (mmar.derived.grid_for), else None (the square)."""
    shape = derived.parse_image_shape(cfg.sample.image_shape)   # validated with the config
    return None if shape is None else derived.grid_for(*shape, cfg)


def draw_images(models: Models, captions: list[str], seed: int, log=print) -> np.ndarray:
    """uint8 images [N, H, W, 3] for captions, batch by batch from key(seed)
    (keep-aspect models: at `sample.image_shape`'s grid)."""
    text, key, images, passes = models.text, jax.random.key(seed), [], []
    grid = image_grid_of(models.cfg)
    shape = {} if grid is None else {"grid": grid}   # only the plain sampler draws grids
    if models.cfg.sample.negative_prompt:   # plain decoding only (validated)
        shape["negative"] = text.encode(models.cfg.sample.negative_prompt)
    for chunk in _batches(captions, models.cfg.sample.batch_size):
        key, sub = jax.random.split(key)
        ids = [text.encode(c) for c in chunk]
        codes, batch_passes = models.image_sampler.images(models.params, ids,
                                                          models.num_codes, sub, **shape)
        passes.append(batch_passes)
        images.append(models.tokenizer.decode(codes, grid=grid))
    order = config_lib.image_order(models.cfg)
    if order in ("randar", "next_scale"):
        name = {"randar": "RandAR", "next_scale": "next-scale"}[order]
        log(f"[sample] {name}: {len(captions)} images of {models.num_codes} codes in "
            f"{len(passes)} batches, {passes[0]} forward passes per batch")
    return np.concatenate(images)


def text_to_image(models: Models, split: str, out_dir: pathlib.Path, log=print) -> list[dict]:
    cfg = models.cfg
    spec = synthetic.ShapesSpec.from_config(cfg.data)
    captions = [r["caption"] for r in models.records(split)]
    n = len(captions)
    images = draw_images(models, captions, sample_seed(cfg), log)
    models.images[f"t2i_{split}"] = images  # for the Frechet distance in `mmar eval`
    records = [{"index": i, "caption": c, "correct": bool(judge.judge_image(img, c, spec)),
                "read": judge.describe(judge.read_image(img, spec)),
                "categories": geneval.categories(img, c, spec),
                **provenance(models, sample_seed(cfg), i)}
               for i, (c, img) in enumerate(zip(captions, images))]
    image_grid(images, cfg.eval.grid_columns,
               labels=[(r["caption"], r["correct"]) for r in records]).save(
        out_dir / f"t2i_{split}.png")
    _write_jsonl(out_dir / f"t2i_{split}.jsonl", records)
    acc = np.mean([r["correct"] for r in records])
    log(f"[sample] text-to-image on {split}: {n} images, judge accuracy {acc:.3f}")
    return records


def image_to_text(models: Models, split: str, out_dir: pathlib.Path, log=print) -> list[dict]:
    cfg, text = models.cfg, models.text
    spec = synthetic.ShapesSpec.from_config(cfg.data)
    recs = models.records(split)
    n = len(recs)
    codes = models.tokenizer.encode(np.stack([r["image"] for r in recs]))
    key = jax.random.key(sample_seed(cfg) + 1)
    generated = []
    for chunk in _batches(codes, cfg.sample.batch_size):
        key, sub = jax.random.split(key)
        generated += [text.decode(ids) for ids in models.sampler.captions(models.params, chunk,
                                                                          sub)]
    records = [{"index": i, "caption": r["caption"], "generated": g,
                "correct": bool(judge.judge_caption(synthetic.objects_from_json(r["objects"]),
                                                    g, spec)),
                **provenance(models, sample_seed(cfg) + 1, i)}
               for i, (r, g) in enumerate(zip(recs, generated))]
    _write_jsonl(out_dir / f"i2t_{split}.jsonl", records)
    acc = np.mean([r["correct"] for r in records])
    log(f"[sample] image-to-text on {split}: {n} captions, judge accuracy {acc:.3f}")
    return records


def _write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def run(cfg, workdir, log=print, models: Models | None = None) -> dict[str, list[dict]]:
    out_dir = pathlib.Path(workdir) / rundir.SAMPLES
    out_dir.mkdir(parents=True, exist_ok=True)
    models = models or Models(rundir.load(cfg, workdir))
    out = {"t2i_test": text_to_image(models, "test", out_dir, log),
           "t2i_unseen": text_to_image(models, "unseen", out_dir, log),
           "i2t_test": image_to_text(models, "test", out_dir, log)}
    if "stories" in cfg.eval.tasks and models.vocab.emu3:
        log("[sample] interleaved stories: skipped (Emu3's image layout, the model writing "
            "an image's size as text, is not sampled in documents yet: docs/pretrained.md)")
    elif "stories" in cfg.eval.tasks:
        out["stories_test"] = continue_stories(models, out_dir, log)
    if "digits" in cfg.eval.tasks:
        out["digits_test"] = digits_to_image(models, out_dir, log)
    return out


def digits_to_image(models: Models, out_dir: pathlib.Path, log=print) -> list[dict]:
    """Class-conditional real-image generation: "the digit N", judged by a classifier
    trained on the real digits (mmar/eval/digits.py)."""
    cfg = models.cfg
    n = min(cfg.eval.num_examples, 1000)
    labels = [i % 10 for i in range(n)]
    images = draw_images(models, [f"the digit {k}" for k in labels], sample_seed(cfg) + 2,
                         log)
    size = cfg.data.image_size   # keep-aspect images are read at the square, as the judge does
    predicted = digits.classifier(size).predict(
        np.stack([judge.square_view(im, size) for im in images]))
    records = [{"index": i, "caption": f"the digit {k}", "label": k, "predicted": int(p),
                "correct": bool(p == k), **provenance(models, sample_seed(cfg) + 2, i)}
               for i, (k, p) in enumerate(zip(labels, predicted))]
    image_grid(images, 10, labels=[(f"{r['label']}: read {r['predicted']}", r["correct"])
                                   for r in records]).save(out_dir / "digits_test.png")
    _write_jsonl(out_dir / "digits_test.jsonl", records)
    log(f"[sample] digits: {n} images, classifier agrees with the prompt on "
        f"{np.mean([r['correct'] for r in records]):.3f}")
    return records


# ---- interleaved stories ----------------------------------------------------------------

def story_prompts(models, n: int):
    """(prompt ids, story) for the first n held-out stories: text0 <boi>img0<eoi> text1 <boi>."""
    spec = synthetic.ShapesSpec.from_config(models.cfg.data)
    v, text = models.vocab, models.text
    out = []
    for story in stories.make_stories(spec, n, seed=1):
        t0, t1 = story["segments"][0]["text"], story["segments"][2]["text"]
        codes = models.tokenizer.encode(story["images"][0][None])[0]
        ids = [v.bos, *text.encode(t0), v.boi, *v.image_body(codes).tolist(), v.eoi,
               *text.encode(t1), v.boi]
        out.append((ids, story))
    return out


def continue_stories(models, out_dir: pathlib.Path, log=print) -> list[dict]:
    cfg, v, text = models.cfg, models.vocab, models.text
    spec = synthetic.ShapesSpec.from_config(cfg.data)
    items = story_prompts(models, cfg.eval.num_examples)
    # the first image whole: its codes and <eoi> (keep-aspect: its size ids and <eol>s too)
    steps = max(int(cfg.sample.interleaved_tokens), models.num_codes + 1 + (
        2 + v.grid_sides if v.grid_sides else 0))
    key, seed = jax.random.key(sample_seed(cfg) + 3), sample_seed(cfg) + 3
    records, grid = [], []
    for chunk in _batches(items, cfg.sample.batch_size):
        key, sub = jax.random.split(key)
        ids = models.sampler.run(models.params, [p for p, _ in chunk], steps, sub,
                                 n=models.num_codes, allow_images=True)
        for (_, story), row in zip(chunk, ids.tolist()):
            row = row[:row.index(v.eos) + 1] if v.eos in row else row
            segments = split_document([v.boi] + row, v)
            # keep-aspect images come as [h, w] grids, possibly of different shapes
            pictures = [models.tokenizer.decode(np.asarray(c)[None])[0]
                        for kind, c in segments if kind == "image"]
            truth = synthetic.objects_from_json(story["scenes"][1])
            first = pictures[0]
            grid += [story["images"][0], story["images"][1],
                     judge.square_view(first, spec.image_size)]
            doc, k = [], 0
            for kind, ids_ in segments:
                if kind == "text":
                    doc.append({"text": text.decode(ids_)})
                else:
                    doc.append({"image": k})
                    k += 1
            records.append({
                "index": len(records), "prompt": [story["segments"][0]["text"],
                                                  story["segments"][2]["text"]],
                "generated": doc, "truth": story["scenes"][1],
                "read": judge.describe(judge.read_image(first, spec)),
                "correct": bool(judge.judge_scene(first, truth, spec)),
                **provenance(models, seed, len(records))})
    image_grid(np.stack(grid), 3).save(out_dir / "interleaved_test.png")
    _write_jsonl(out_dir / "interleaved_test.jsonl", records)
    log(f"[sample] interleaved stories: {len(records)} continued, next-image accuracy "
        f"{np.mean([r['correct'] for r in records]):.3f}")
    return records
