"""Interleaved mode: continue shape stories (text, image, text, ...) and judge the next image.

A held-out story is cut after its second text, `<boi>` is appended, and the model continues
for `sample.interleaved_tokens` tokens: first the next image (whose content the text only
names as a change of the first image, so the model must read the earlier image), then
whatever text and images it chooses, every image whole (mmar/sample/decode.py). The first
generated image is judged against the story's true scene with `judge.judge_scene` (same
objects in the same grid cells): the next-image accuracy of `mmar eval`.

The stories are the `test` split of the `mmar_stories` data set (mmar/data/builders/
generated.py: `make_stories(spec, n, seed=1)`), generated in memory, so evaluating needs no
prepared data set. Guidance (`sample.cfg_scale_image`) applies to the codes of that first
image; its unconditional twin is `<bos> <boi>`, as for text-to-image, and gets the same
later tokens.
"""
from __future__ import annotations

import pathlib

import jax
import numpy as np

from mmar.data import stories, synthetic
from mmar.eval import judge
from mmar.sample.decode import split_document
from mmar.vocab import ByteTokenizer


def story_prompts(models, n: int):
    """(prompt ids, story) for the first n held-out stories: text0 <boi>img0<eoi> text1 <boi>."""
    spec = synthetic.ShapesSpec.from_config(models.cfg.data)
    v, text = models.vocab, ByteTokenizer()
    out = []
    for story in stories.make_stories(spec, n, seed=1):
        t0, t1 = story["segments"][0]["text"], story["segments"][2]["text"]
        codes = models.tokenizer.encode(story["images"][0][None])[0]
        ids = [v.bos, *text.encode(t0), v.boi, *v.image_ids(codes).tolist(), v.eoi,
               *text.encode(t1), v.boi]
        out.append((ids, story))
    return out


def continue_stories(models, out_dir: pathlib.Path, log=print) -> list[dict]:
    from mmar.sample import generate  # the job's helpers (that module imports this one)
    cfg, v, text = models.cfg, models.vocab, ByteTokenizer()
    spec = synthetic.ShapesSpec.from_config(cfg.data)
    items = story_prompts(models, cfg.eval.num_examples)
    steps = max(int(cfg.sample.interleaved_tokens), models.num_codes + 1)
    key, seed = jax.random.key(cfg.sample.seed + 3), cfg.sample.seed + 3
    records, grid = [], []
    for chunk in generate._batches(items, cfg.sample.batch_size):
        key, sub = jax.random.split(key)
        ids = models.sampler.run(models.params, [p for p, _ in chunk], steps, sub,
                                 n=models.num_codes, allow_images=True)
        for (_, story), row in zip(chunk, ids.tolist()):
            row = row[:row.index(v.eos) + 1] if v.eos in row else row
            segments = split_document([v.boi] + row, v)
            images = [np.asarray(c) for kind, c in segments if kind == "image"]
            pictures = models.tokenizer.decode(np.stack(images)) if images else []
            truth = synthetic.objects_from_json(story["scenes"][1])
            first = pictures[0]
            grid += [story["images"][0], story["images"][1], first]
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
                **generate.provenance(models, seed, len(records))})
    generate.image_grid(np.stack(grid), 3).save(out_dir / "interleaved_test.png")
    generate._write_jsonl(out_dir / "interleaved_test.jsonl", records)
    log(f"[sample] interleaved stories: {len(records)} continued, next-image accuracy "
        f"{np.mean([r['correct'] for r in records]):.3f}")
    return records
