"""Images of 256 and 512 pixels through every job (issue 20): with downsample 16 an image is
256 or 1,024 codes; the shapes data, the image tokenizer, the decoder, the samplers and the
export work at that size (`test` preset, a few steps, a few images: what is checked is
shapes and that nothing assumes 32 pixels, not quality)."""
import json

import numpy as np
import pytest

from mmar import config as config_lib
from mmar import derived, rundir
from mmar.export import assets, hf
from mmar.jobs import sample as sample_job
from mmar.jobs import tokenizer_train
from mmar.jobs import train as train_job
from tests.helpers import overrides, text_tokenizers

SIZES = {  # what a user passes on the command line (docs/tokenizers.md, "Image size")
    256: {"data.image_size": 256, "image_tokenizer.downsample": 16,
          "image_tokenizer.channel_mult": (1, 1, 1, 1), "data.seq_len": 320},
    512: {"data.image_size": 512, "image_tokenizer.downsample": 16,
          "image_tokenizer.channel_mult": (1, 1, 1, 1), "data.seq_len": 1088},
}
SMALL = {"data.num_train": 16, "data.num_test": 2, "data.num_unseen": 2,
         "image_tokenizer.train.steps": 2, "image_tokenizer.train.batch_size": 8,
         "train.steps": 2, "train.batch_size": 8, "checkpoint.every_steps": 2,
         "eval.num_examples": 2, "model.vocab_size": 0}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.e2e
@pytest.mark.slow
def test_tokenizer_decoder_sample_export(size, test_config, tmp_path):
    cfg = overrides.with_fields(test_config, {**SMALL, **SIZES[size]})
    n = derived.codes_per_image(cfg)
    assert n == (size // 16) ** 2
    text_tokenizers.install(tmp_path, cfg)
    logs = []
    tokenizer_train.run(cfg, tmp_path, log=logs.append)
    train_job.run(cfg, tmp_path, log=logs.append)

    run = rundir.load(cfg, tmp_path)
    models = sample_job.Models(run)
    images = np.stack([r["image"] for r in models.records("test")])
    assert images.shape == (2, size, size, 3)
    codes = run.tokenizer.encode(images)
    assert codes.shape == (2, n)
    assert run.tokenizer.decode(codes).shape == (2, size, size, 3)

    out = sample_job.run(cfg, tmp_path, log=logs.append, models=models)
    assert len(out["t2i_test"]) == 2 and len(out["i2t_test"]) == 2
    assert models.images["t2i_test"].shape == (2, size, size, 3)
    t2i = [json.loads(x) for x in (tmp_path / "samples/t2i_test.jsonl").read_text().splitlines()]
    assert len(t2i) == 2

    hf.export(tmp_path, tmp_path / "hf", log=lambda _: None)
    decoder = assets.ImageDecoder.from_pretrained(tmp_path / "hf")
    assert decoder.codes_per_image == n
    np.testing.assert_array_equal(decoder.decode_ids(run.vocab.image_ids(codes)),
                                  run.tokenizer.decode(codes))


def test_the_documented_command_is_the_one_tested():
    """docs/tokenizers.md's 256-pixel command sets exactly SIZES[256] (and the vocabulary
    size recomputed), and its config validates: the run above is that command's."""
    import pathlib
    import shlex
    root = pathlib.Path(__file__).resolve().parents[1]
    text = (root / "docs/tokenizers.md").read_text()
    (line,) = [l.strip() for l in text.splitlines() if l.strip().startswith(
        "mmar demo --config=configs/t2i_shapes.py:test --workdir=runs/px256")]
    flags = {}
    for arg in shlex.split(line)[4:]:
        name, value = arg.removeprefix("--config.").split("=", 1)
        flags[name] = value
    want = {k: str(v).replace(" ", "") for k, v in SIZES[256].items()}
    assert flags == {**want, "model.vocab_size": "0"}
    cfg = config_lib.load(str(root / "configs/t2i_shapes.py") + ":test")
    cfg = overrides.with_fields(cfg, {**SIZES[256], "model.vocab_size": 0})
    assert derived.codes_per_image(cfg) == 256
