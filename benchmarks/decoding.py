"""Decoding methods compared on the same trained models: forward passes, images/s, judge accuracy.

    PYTHONPATH=. python benchmarks/decoding.py --runs=runs/demo,runs/demo_rar,runs/demo_randar

Each `--runs` entry is a run directory of configs/t2i_shapes.py (`mmar demo
--config=configs/t2i_shapes.py:tiny|tiny_rar|tiny_randar|tiny_var --workdir=DIR`; a missing one is
skipped with that command printed); its config comes from its newest checkpoint. Every method applicable to a run's training order draws
one image for each of the first `--num` test captions with the run's sampling settings
(temperature, CFG scale: `sample.*` of the run), `sample.batch_size` captions per batch,
keys as `mmar sample` draws them (`key(seed)` split once per batch), and is judged by the
shape judge (mmar/eval/judge.py). Reported per method:

- forward passes per image: model calls (prefill included) needed for one batch, i.e. for
  each image in it, since the rows of a batch advance together (in brackets, for SJD /
  LANTERN, the mean pass at which each row had its codes: what one image alone would cost);
- images/s of a second pass over the captions (the first compiles every prompt shape, so
  no compilation is timed), measured in this run;
- ratios of both to plain raster decoding of the same model in the same run, and the
  judge accuracy.

Methods (docs/decoding.md): `plain` (one token per pass, every model), `sjd` / `lantern`
(speculative Jacobi decoding, optionally with LANTERN's relaxed acceptance) and `zipar` on
raster-trained models (`raster`, `rar`), `randar` (random order, several positions per
pass) on RandAR models, `next-scale` (one pass per token map) on next-scale models, whose
ratios are against the plain decoding of the first run listed (list the raster run first).
`--out=FILE.json` also writes the rows.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmar import config as config_lib  # noqa: E402
from mmar import rundir  # noqa: E402
from mmar.data import synthetic  # noqa: E402
from mmar.eval import judge  # noqa: E402
from mmar.export import orbax_reader  # noqa: E402
from mmar.jobs import sample as sample_job  # noqa: E402
from mmar.sample import dispatch  # noqa: E402


def plain(models, caption_ids, key):
    """One code per forward pass: the prefill predicts the first code, each step one more."""
    codes, passes = models.sampler.images(models.params, caption_ids, models.num_codes, key)
    return codes, passes, None


_SAMPLERS = {}


def _image_sampler(models, method: str):
    """One sampler per model and method, so methods that differ only in traced options
    share its compiled programs."""
    key = (id(models), method)
    if key not in _SAMPLERS:
        _SAMPLERS[key] = models, dispatch.image_sampler(
            "raster", models.model_state, models.vocab, models.cfg.model.vocab_size,
            models.cfg.sample, code_vectors=models.code_vectors, method=method)
    return _SAMPLERS[key][1]


def parallel(method: str, **options):
    """SJD / LANTERN / ZipAR (mmar/sample/sjd.py, zipar.py) on a raster model; also the
    pass at which each row finished (a batch runs until its slowest row is done)."""
    def draw(models, caption_ids, key):
        return _image_sampler(models, method).images_rows(models.params, caption_ids,
                                                          models.num_codes, key, **options)
    return draw


def randar(order=None, **options):
    """RandAR decoding (mmar/sample/randar.py): `order` None = random per row, "raster"."""
    def draw(models, caption_ids, key):
        out = models.image_sampler.generate(models.params, caption_ids, models.num_codes, key,
                                            order=order, **options)
        return out.codes, out.forward_passes, None
    return draw


def next_scale(models, caption_ids, key):
    """Next-scale prediction (mmar/sample/next_scale.py): one forward pass per token map."""
    codes, passes = models.image_sampler.images(models.params, caption_ids, models.num_codes,
                                                key)
    return codes, passes, None


def methods_for(order: str) -> list[tuple[str, object]]:
    """(label, draw function) of every method that applies to a model of this order; the
    first is the baseline of the ratios (one code per forward pass in raster order)."""
    if order == "randar":
        def constant(m):
            return {"randar": dict(schedule="constant", tokens_per_step=m)}

        def cosine(steps):
            return {"randar": dict(schedule="cosine", steps=steps)}
        return [("plain", randar("raster", **constant(1))),
                ("randar random order 1/pass", randar(**constant(1))),
                ("randar 2/pass", randar(**constant(2))),
                ("randar 4/pass", randar(**constant(4))),
                ("randar cosine 8 passes", randar(**cosine(8))),
                ("randar cosine 4 passes", randar(**cosine(4)))]
    if order == "rar":
        return [("plain", plain)]
    if order == "next_scale":
        return [("next-scale", next_scale)]
    return [("plain", plain),
            ("sjd L4", parallel("sjd", sjd=dict(window=4))),
            ("sjd L8", parallel("sjd", sjd=dict(window=8))),
            ("sjd L16", parallel("sjd", sjd=dict(window=16))),
            ("sjd L8 greedy", parallel("sjd", sjd=dict(window=8, acceptance="greedy"))),
            ("lantern L8 k6 delta0.1", parallel("sjd", sjd=dict(window=8, lantern_k=6,
                                                                lantern_delta=0.1))),
            ("lantern L8 k6 delta0.3", parallel("sjd", sjd=dict(window=8, lantern_k=6,
                                                                lantern_delta=0.3))),
            ("zipar w1", parallel("zipar", zipar=dict(window=1))),
            ("zipar w2", parallel("zipar", zipar=dict(window=2))),
            ("zipar w3", parallel("zipar", zipar=dict(window=3)))]


def run_method(models, draw, captions: list[str], seed: int) -> dict:
    """Draws and judges one image per caption, batch by batch; times the second pass."""
    text, spec = models.text, synthetic.ShapesSpec.from_config(models.cfg.data)
    size = models.cfg.sample.batch_size
    batches = [captions[i:i + size] for i in range(0, len(captions), size)]
    key = jax.random.key(seed)
    keys = []
    for _ in batches:
        key, sub = jax.random.split(key)
        keys.append(sub)
    for chunk, sub in zip(batches, keys):  # warm-up: compile every prompt shape first
        draw(models, [text.encode(c) for c in chunk], sub)
    images, passes, row_passes, t0 = [], [], [], time.perf_counter()
    for chunk, sub in zip(batches, keys):
        codes, n, rows = draw(models, [text.encode(c) for c in chunk], sub)
        images.append(models.tokenizer.decode(np.asarray(codes)))
        passes.append(n)
        row_passes.append(np.full(len(chunk), n) if rows is None else rows)
    seconds = time.perf_counter() - t0
    images = np.concatenate(images)
    correct = [judge.judge_image(img, c, spec) for img, c in zip(images, captions)]
    return {"images": len(captions), "forward_passes_per_image": float(np.mean(passes)),
            "forward_passes_per_row": float(np.mean(np.concatenate(row_passes))),
            "images_per_s": len(captions) / seconds, "judge_accuracy": float(np.mean(correct))}


def _merge(base, saved) -> None:
    """Saved config values into `base` (its preset), field by field, so that the JSON lists
    of the saved config become the preset's tuples."""
    for key, value in saved.items():
        if key not in base:
            continue
        if hasattr(base[key], "items") and hasattr(value, "items"):
            _merge(base[key], value)
        else:
            base[key] = tuple(value) if isinstance(base[key], tuple) else value


def run_config(workdir: str):
    """The config a run was trained with (saved in its newest decoder checkpoint; the reader
    completes it by the schema, so a run from an older mmar has every field)."""
    saved = orbax_reader.CheckpointReader(orbax_reader.find_step_dir(workdir, "decoder"))
    saved = saved.config().to_dict()
    cfg = config_lib.load(f"{ROOT}/configs/t2i_shapes.py:{saved['preset'] or 'tiny'}")
    with cfg.unlocked():
        _merge(cfg, saved)
    return config_lib.validate(cfg)


def load_models(workdir: str):
    return sample_job.Models(rundir.load(run_config(workdir), workdir))


def table(rows: list[dict]) -> str:
    head = ("| model | method | forward passes / image (row mean) | fewer passes than plain "
            "| images/s | vs plain | judge accuracy |\n|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {r['model']} | {r['method']} | {r['forward_passes_per_image']:.2f} "
        f"({r['forward_passes_per_row']:.2f}) | {r['passes_ratio']:.2f}x | "
        f"{r['images_per_s']:.1f} | {r['speed_ratio']:.2f}x | {r['judge_accuracy']:.3f} |\n"
        for r in rows)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default="runs/demo,runs/demo_rar,runs/demo_randar",
                   help="trained run directories, comma-separated (see the docstring)")
    p.add_argument("--num", type=int, default=200, help="test captions per method")
    p.add_argument("--methods", default="", help="comma-separated labels to run (default all)")
    p.add_argument("--out", default="", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    wanted = {m for m in args.methods.split(",") if m}
    rows, first = [], None
    for workdir in args.runs.split(","):
        name = pathlib.Path(workdir).name
        if not pathlib.Path(workdir, "decoder").is_dir():
            print(f"[decoding] {workdir}: no trained run; make one with `mmar demo "
                  f"--config=configs/t2i_shapes.py:PRESET --workdir={workdir}`")
            continue
        models = load_models(workdir)
        captions = [r["caption"] for r in models.records("test")][:args.num]
        order = models.cfg.data.image_order
        base = None
        for label, draw in methods_for(order):
            if wanted and label not in wanted and label != "plain":
                continue
            result = run_method(models, draw, captions, sample_job.sample_seed(models.cfg))
            # a next-scale run has no raster decoding of its own: its ratios are against
            # the plain decoding of the first run listed (the raster model, same machine)
            base = base or (first if order == "next_scale" and first else result)
            first = first or result
            row = {"model": name, "method": label, **result,
                   "passes_ratio": base["forward_passes_per_image"]
                   / result["forward_passes_per_image"],
                   "speed_ratio": result["images_per_s"] / base["images_per_s"]}
            rows.append(row)
            print(f"[decoding] {name} {label}: {json.dumps(result)}", flush=True)
    print(table(rows))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
