"""The sample job: text-to-image, image-to-text and interleaved stories on held-out data.

Writes under `<workdir>/samples/`: `t2i_<split>.png` (a grid of generated images, captions
in `t2i_<split>.jsonl` in the same order), `i2t_<split>.jsonl` (true and generated captions),
`interleaved_test.png` / `.jsonl` (stories continued after their second text: true first
image, true next image, generated next image per row; the generated text and images of each
continuation in the JSONL) and `digits_test.png` / `.jsonl` ("the digit N" prompts). Every
sample is judged (shape judge, digits classifier) so `mmar eval` can count without
re-sampling, and every JSONL record carries its sampling `settings` and `seed`: the key of a
sample is `jax.random.split` of `key(seed)` once per batch of `sample.batch_size`, in order
(`batch`, `row` in the record), so a record can be re-drawn exactly.
"""
from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
from PIL import Image

from mmar import config as config_lib
from mmar.data import pipeline, synthetic
from mmar.eval import digits, geneval, judge
from mmar.parallel import mesh as mesh_lib
from mmar.sample import interleaved, speculative
from mmar.sample.decode import Sampler
from mmar.sample.randar import RandarSampler
from mmar.tokenizers.image.train import ImageTokenizer
from mmar.train import trainer
from mmar.train.decoder import SUBDIR, decoder_task
from mmar.vocab import ByteTokenizer

SAMPLES = "samples"


class Models:
    """The trained tokenizer and decoder of a run directory, ready to sample."""

    def __init__(self, cfg, workdir):
        self.cfg, self.vocab = cfg, config_lib.make_vocab(cfg)
        self.tokenizer = ImageTokenizer(cfg, workdir)
        mesh, rule_table = mesh_lib.from_config(cfg.mesh)
        self.model_state, self.params, self.step = trainer.load_params(
            decoder_task(cfg), mesh, pathlib.Path(workdir) / SUBDIR, rule_table=rule_table)
        self.num_codes = (cfg.data.image_size // cfg.image_tokenizer.downsample) ** 2
        # The sampler follows the training order (mmar/data/orders.py): raster and RAR
        # decode in raster order (RAR with its target embeddings); RandAR images come from
        # the RandAR sampler (parallel decoding by sample.randar_*), its captions from the
        # plain one. `image_sampler` draws every image; `sampler` every text.
        order = config_lib.image_order(cfg)
        self.sampler = Sampler(self.model_state, self.vocab, cfg.model.vocab_size, cfg.sample,
                               num_codes=self.num_codes, target_aware=order == "rar")
        if cfg.image_tokenizer.quantizer != "rq":   # latent neighbours for LANTERN
            self.sampler.code_vectors = speculative.code_vectors(self.tokenizer)
        self.image_sampler = self.sampler if order != "randar" else RandarSampler(
            self.model_state, self.vocab, cfg.model.vocab_size, cfg.sample,
            num_codes=self.num_codes)
        self._records = {}
        self.images = {}  # generated images by sample set, kept for `mmar eval`

    def records(self, split: str) -> list[dict]:
        """The first eval.num_examples records of a split, read once per split and run."""
        if split not in self._records:
            source = pipeline.shapes_split(self.cfg.data, split)
            n = min(self.cfg.eval.num_examples, len(source))
            self._records[split] = [source[i] for i in range(n)]
        return self._records[split]


def image_grid(images: np.ndarray, columns: int, scale: int = 3) -> Image.Image:
    """uint8 [N, H, W, 3] -> one PNG-ready picture, `columns` wide, 2px gaps."""
    n, h, w, _ = images.shape
    rows = -(-n // columns)
    gap = 2
    canvas = np.full((rows * (h * scale + gap), columns * (w * scale + gap), 3), 64, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        big = img.repeat(scale, 0).repeat(scale, 1)
        y, x = r * (h * scale + gap), c * (w * scale + gap)
        canvas[y:y + h * scale, x:x + w * scale] = big
    return Image.fromarray(canvas)


def _batches(items, size):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def provenance(models: Models, seed: int, index: int) -> dict:
    """What re-draws sample `index`: its settings, seed, batch and row in the batch."""
    batch, row = divmod(index, models.cfg.sample.batch_size)
    return {"settings": dict(models.image_sampler.settings(), **models.sampler.settings(),
                             **speculative.decoder_options(models.sampler),
                             batch_size=models.cfg.sample.batch_size),
            "seed": seed, "batch": batch, "row": row}


def draw_images(models: Models, captions: list[str], seed: int, log=print) -> np.ndarray:
    """uint8 images [N, H, W, 3] for captions, batch by batch from key(seed)."""
    text, key, images, passes = ByteTokenizer(), jax.random.key(seed), [], []
    for chunk in _batches(captions, models.cfg.sample.batch_size):
        key, sub = jax.random.split(key)
        ids = [text.encode(c) for c in chunk]
        if isinstance(models.image_sampler, RandarSampler):
            result = models.image_sampler.generate(models.params, ids, models.num_codes, sub)
            codes = result.codes
            passes.append(result.forward_passes)
        else:
            codes = models.image_sampler.images(models.params, ids, models.num_codes, sub)
        images.append(models.tokenizer.decode(codes))
    if passes:
        log(f"[sample] RandAR: {len(captions)} images of {models.num_codes} codes in "
            f"{len(passes)} batches, {passes[0]} forward passes per batch")
    return np.concatenate(images)


def text_to_image(models: Models, split: str, out_dir: pathlib.Path, log=print) -> list[dict]:
    cfg = models.cfg
    spec = synthetic.ShapesSpec.from_config(cfg.data)
    captions = [r["caption"] for r in models.records(split)]
    n = len(captions)
    images = draw_images(models, captions, cfg.sample.seed, log)
    models.images[f"t2i_{split}"] = images  # for the Frechet distance in `mmar eval`
    records = [{"index": i, "caption": c, "correct": bool(judge.judge_image(img, c, spec)),
                "read": judge.describe(judge.read_image(img, spec)),
                "categories": geneval.categories(img, c, spec),
                **provenance(models, cfg.sample.seed, i)}
               for i, (c, img) in enumerate(zip(captions, images))]
    image_grid(images, cfg.eval.grid_columns).save(out_dir / f"t2i_{split}.png")
    _write_jsonl(out_dir / f"t2i_{split}.jsonl", records)
    acc = np.mean([r["correct"] for r in records])
    log(f"[sample] text-to-image on {split}: {n} images, judge accuracy {acc:.3f}")
    return records


def image_to_text(models: Models, split: str, out_dir: pathlib.Path, log=print) -> list[dict]:
    cfg, text = models.cfg, ByteTokenizer()
    spec = synthetic.ShapesSpec.from_config(cfg.data)
    recs = models.records(split)
    n = len(recs)
    codes = models.tokenizer.encode(np.stack([r["image"] for r in recs]))
    key = jax.random.key(cfg.sample.seed + 1)
    generated = []
    for chunk in _batches(codes, cfg.sample.batch_size):
        key, sub = jax.random.split(key)
        generated += [text.decode(ids) for ids in models.sampler.captions(models.params, chunk,
                                                                          sub)]
    records = [{"index": i, "caption": r["caption"], "generated": g,
                "correct": bool(judge.judge_caption(synthetic.objects_from_json(r["objects"]),
                                                    g, spec)),
                **provenance(models, cfg.sample.seed + 1, i)}
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
    out_dir = pathlib.Path(workdir) / SAMPLES
    out_dir.mkdir(parents=True, exist_ok=True)
    models = models or Models(cfg, workdir)
    out = {"t2i_test": text_to_image(models, "test", out_dir, log),
           "t2i_unseen": text_to_image(models, "unseen", out_dir, log),
           "i2t_test": image_to_text(models, "test", out_dir, log)}
    if "stories" in cfg.eval.get("tasks", ()):
        out["stories_test"] = interleaved.continue_stories(models, out_dir, log)
    if "digits" in cfg.eval.get("tasks", ()):
        out["digits_test"] = digits_to_image(models, out_dir, log)
    return out


def digits_to_image(models: Models, out_dir: pathlib.Path, log=print) -> list[dict]:
    """Class-conditional real-image generation: "the digit N", judged by a classifier
    trained on the real digits (mmar/eval/digits.py)."""
    cfg = models.cfg
    n = min(cfg.eval.num_examples, 1000)
    labels = [i % 10 for i in range(n)]
    images = draw_images(models, [f"the digit {k}" for k in labels], cfg.sample.seed + 2,
                         log)
    predicted = digits.classifier(cfg.data.image_size).predict(images)
    records = [{"index": i, "caption": f"the digit {k}", "label": k, "predicted": int(p),
                "correct": bool(p == k), **provenance(models, cfg.sample.seed + 2, i)}
               for i, (k, p) in enumerate(zip(labels, predicted))]
    image_grid(images, 10).save(out_dir / "digits_test.png")
    _write_jsonl(out_dir / "digits_test.jsonl", records)
    log(f"[sample] digits: {n} images, classifier agrees with the prompt on "
        f"{np.mean([r['correct'] for r in records]):.3f}")
    return records
