"""docs/data.md's keep-aspect block runs as written (in this process, the `test` preset, a
few steps): stretched pictures in WebDataset shards, a BPE and an image tokenizer, token
shards that keep each image's grid (the same records as encoding in memory), training from
them, `mmar eval` drawing 3 x 5 images for `sample.image_shape=32x52`, and the transformers
export drawing the same greedy codes as mmar's sampler for that grid."""
import ast
import json
import pathlib
import shlex

import jax
import ml_collections
import numpy as np
import PIL.Image
import pytest

from mmar import config as config_lib
from mmar import derived, rundir
from mmar.data import sources
from mmar.data.ingest import example
from mmar.jobs import eval as eval_job
from mmar.jobs import export as export_job
from mmar.jobs import pretokenize, text_tokenizer_train, tokenizer_train
from mmar.jobs import train as train_job
from mmar.sample import plain
from tests.helpers import overrides

ROOT = pathlib.Path(__file__).resolve().parents[2]
JOBS = {"text-tokenizer-train": text_tokenizer_train, "tokenizer-train": tokenizer_train,
        "pretokenize": pretokenize, "train": train_job, "eval": eval_job}
EXTRA = {"tokenizer-train": {"image_tokenizer.train.steps": 2},
         "train": {"train.steps": 2, "checkpoint.every_steps": 2},
         "eval": {"eval.num_examples": 4}}


def doc_lines() -> list[str]:
    text = (ROOT / "docs/data.md").read_text()
    block = text.split("tests/data/test_keep_aspect_e2e.py runs this block")[1]
    return block.split("```bash")[1].split("```")[0].strip().splitlines()


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def job_config(args: list[str], data_dir, extra: dict):
    """The config and work directory a documented `mmar <job> ...` line means."""
    spec = next(a for a in args if a.startswith("--config="))[len("--config="):]
    cfg = config_lib.load(str(ROOT / spec))
    fields = {a[len("--config."):].split("=", 1)[0]: _value(a.split("=", 1)[1])
              for a in args if a.startswith("--config.")}
    cfg = overrides.with_fields(cfg, {**fields, **extra, "data.data_dir": str(data_dir)})
    workdir = next(a for a in args if a.startswith("--workdir="))[len("--workdir="):]
    return config_lib.validate(cfg), pathlib.Path(workdir)


@pytest.mark.e2e
@pytest.mark.slow
def test_keep_aspect_walkthrough(tmp_path, data_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = doc_lines()
    make, flags_line, *commands = lines
    example.main(shlex.split(make)[3:])
    flags = shlex.split(flags_line.partition("=")[2])[0]
    logs, cfgs = [], {}
    for line in commands:
        args = shlex.split(line.replace("$FLAGS", flags))
        if args[1] == "export":
            assert export_job.main("export", args[2:]) == 0
            continue
        cfg, workdir = job_config(args[2:], data_dir, EXTRA.get(args[1], {}))
        cfgs[args[1]] = cfg
        JOBS[args[1]].run(cfg, workdir, log=logs.append)
    assert [shlex.split(c)[1] for c in commands] == [*JOBS, "export"]
    cfg, workdir = cfgs["train"], tmp_path / "runs/wide"
    assert cfg.data.keep_aspect and config_lib.make_vocab(cfg).grid_sides == 5

    # Token shards keep each image's grid: the square and both stretched shapes, exactly as
    # encoding the same files in memory gives them.
    name = cfg.data.mixture
    shards = rundir.open_tokens(cfg, workdir)[name]
    recs = [shards[i] for i in range(len(shards))]
    assert {tuple(g) for r in recs for g in r["grids"]} == {(4, 4), (3, 5), (5, 3)}
    tokenizer = rundir.load_tokenizer(cfg, workdir)
    memory = sources.encoded(name, cfg.data, tokenizer.encode, log=logs.append,
                             downsample=cfg.image_tokenizer.downsample)
    assert len(memory) == len(recs) == 48
    for a, b in zip(recs, (memory[i] for i in range(len(memory)))):
        assert a["grids"] == b["grids"] and a["segments"] == b["segments"]
        for x, y in zip(a["codes"], b["codes"]):
            np.testing.assert_array_equal(x, y)
    assert "[decoder] step 2/2" in "\n".join(logs)

    # `mmar eval` drew 3 x 5 images (24 x 40 pixels): the grid picture is 4 cells of 40 * 3
    # pixels (+ 2 between) wide, and every sample was judged.
    assert derived.grid_for(32, 52, cfgs["eval"]) == (3, 5)
    assert PIL.Image.open(workdir / "samples/t2i_test.png").size[0] == 4 * (40 * 3 + 2)
    t2i = [json.loads(x) for x in (workdir / "samples/t2i_test.jsonl").read_text().splitlines()]
    assert len(t2i) == 4 and all(isinstance(r["correct"], bool) for r in t2i)
    assert "tokenizer_reconstruction_accuracy" in json.loads(
        (workdir / "report.json").read_text())

    # The transformers export draws the grid mmar's sampler draws, greedy, and decodes it.
    import torch
    import transformers
    from mmar.export.assets import ImageDecoder
    hf_dir = workdir / "hf"
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    auto = transformers.AutoTokenizer.from_pretrained(hf_dir)
    images = ImageDecoder.from_pretrained(hf_dir)
    grid = images.grid(32, 52)
    assert grid == (3, 5)
    caption = "a red circle left of a blue square"
    prompt = images.image_prompt(auto(caption).input_ids, grid)
    out = model.generate(torch.tensor([prompt]), do_sample=False,
                         **images.generation_kwargs(grid))
    new = out[:, len(prompt):].numpy()
    run = rundir.load(cfg, workdir)
    greedy = ml_collections.ConfigDict(dict(cfg.sample.to_dict(), temperature_image=0.0,
                                            cfg_scale_image=1.0))
    sampler = plain.Sampler(run.model_state, run.vocab, cfg.model.vocab_size, greedy,
                            num_codes=derived.codes_per_image(cfg))
    codes, _ = sampler.images(run.params, [run.text.encode(caption)], 16, jax.random.key(0),
                              grid=grid)
    assert prompt == [run.vocab.bos, *run.text.encode(caption), run.vocab.boi,
                      run.vocab.size_id(3), run.vocab.size_id(5)]
    np.testing.assert_array_equal(new, run.vocab.image_body(codes[0], grid)[2:][None])
    np.testing.assert_array_equal(images.decode_ids(new, grid),
                                  run.tokenizer.decode(codes, grid=grid))
    assert images.decode_ids(new, grid).shape == (1, 24, 40, 3)
