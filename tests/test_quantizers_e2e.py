"""Every image quantizer through every job (issue 25, item 7): `mmar demo` on the `test`
preset (text tokenizer, image tokenizer, decoder, sample, eval) then `mmar export`, for FSQ,
VQ, LFQ and RQ, in-process to stay fast. Before, an RQ demo trained both models and then
failed in sampling (the sampler drew codes per image without the RQ depth); a sampler that
draws a code of another depth's range is an error at decoding (`check_depths`), so a demo
that finishes has drawn every code from its own depth."""
import json
import shutil

import ml_collections
import numpy as np
import pytest

from mmar import config as config_lib
from mmar import derived
from mmar.export import assets, hf
from mmar.jobs import demo, text_tokenizer_train

FAST = {"image_tokenizer.train.steps": 4, "train.steps": 4, "checkpoint.every_steps": 4,
        "eval.num_examples": 4, "eval.tasks": ("frechet",)}
QUANTIZERS = {  # the overrides a user passes on the command line (docs/tokenizers.md)
    "fsq": {},
    "vq": {"image_tokenizer.quantizer": "vq"},
    "lfq": {"image_tokenizer.quantizer": "lfq"},
    "rq": {"image_tokenizer.quantizer": "rq", "data.seq_len": 96},
}


def set_field(cfg, dotted: str, value) -> None:
    *sections, name = dotted.split(".")
    for section in sections:
        cfg = cfg[section]
    cfg[name] = value


@pytest.fixture(scope="module")
def text_tokenizer_dir(test_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    text_tokenizer_train.run(test_config, root, log=lambda _: None)
    return root / "text_tokenizer"


@pytest.mark.parametrize("quantizer", list(QUANTIZERS))
@pytest.mark.e2e
@pytest.mark.slow
def test_demo_and_export(quantizer, test_config, text_tokenizer_dir, tmp_path):
    cfg = ml_collections.ConfigDict(test_config.to_dict())
    with cfg.unlocked():
        cfg.model.vocab_size = 0
        for field, value in {**FAST, **QUANTIZERS[quantizer]}.items():
            set_field(cfg, field, value)
    cfg = config_lib.validate(cfg)
    shutil.copytree(text_tokenizer_dir, tmp_path / "text_tokenizer")
    logs = []
    report = demo.run(cfg, tmp_path, log=logs.append)
    assert any("[text-tokenizer] already trained" in line for line in logs)
    assert report["num_examples"] == 4 and 0.0 <= report["t2i_accuracy"] <= 1.0
    t2i = [json.loads(x) for x in
           (tmp_path / "samples" / "t2i_test.jsonl").read_text().splitlines()]
    assert len(t2i) == 4
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["t2i_accuracy"] == report["t2i_accuracy"]

    hf.export(tmp_path, tmp_path / "hf", log=lambda _: None)
    decoder = assets.ImageDecoder.from_pretrained(tmp_path / "hf")
    n = derived.codes_per_image(cfg)
    assert decoder.codes_per_image == n
    depth = derived.quantizer_depth(cfg.image_tokenizer)
    per_depth = derived.num_image_codes(cfg.image_tokenizer) // depth
    codes = (np.arange(n) % depth) * per_depth + np.arange(n) % per_depth   # each in range
    images = decoder.decode_ids(codes[None] + decoder.layout["image_offset"])
    assert images.shape == (1, 32, 32, 3) and images.dtype == np.uint8
