"""Every image quantizer through every job (issue 25, item 7): `mmar demo` on the `test`
preset (text tokenizer, image tokenizer, decoder, sample, eval) then `mmar export`, for FSQ,
VQ, LFQ and RQ, the `tiny` preset's factorised FSQ with 2-D image positions, and VAR's
multi-scale codes decoded next-scale (both exported with --format mmar: the hf format refuses
them), in-process to stay fast.
Before, an RQ demo trained both models and then failed in sampling (the sampler drew codes per image without the RQ depth); a sampler that
draws a code of another depth's range is an error at decoding (`check_depths`), so a demo
that finishes has drawn every code from its own depth."""
import json

import numpy as np
import pytest

from mmar import derived
from mmar.export import assets, hf
from mmar.jobs import demo
from tests.helpers import overrides, text_tokenizers

FAST = {"image_tokenizer.train.steps": 4, "train.steps": 4, "checkpoint.every_steps": 4,
        "eval.num_examples": 4, "eval.tasks": ("frechet",)}
QUANTIZERS = {  # the overrides a user passes on the command line (docs/tokenizers.md)
    "fsq": {},
    "vq": {"image_tokenizer.quantizer": "vq"},
    "lfq": {"image_tokenizer.quantizer": "lfq"},
    "rq": {"image_tokenizer.quantizer": "rq", "data.seq_len": 96},
    # the `tiny` preset's: factorised FSQ (where x what sub-codes) and 2-D image positions
    "fsq_groups_2d": {"image_tokenizer.arch": "patch_alpha", "image_tokenizer.fsq.levels":
                      (5,) * 6, "image_tokenizer.fsq.groups": 2, "data.seq_len": 96,
                      "model.image_positions": "2d"},
    # VAR's multi-scale codes, decoded next-scale (docs/decoding.md)
    "msrq_next_scale": {"image_tokenizer.quantizer": "msrq",
                        "data.image_order": "next_scale", "data.seq_len": 96},
}


@pytest.mark.parametrize("quantizer", list(QUANTIZERS))
@pytest.mark.e2e
@pytest.mark.slow
def test_demo_and_export(quantizer, test_config, tmp_path):
    cfg = overrides.with_fields(test_config, {**FAST, **QUANTIZERS[quantizer],
                                              "model.vocab_size": 0})
    text_tokenizers.install(tmp_path, cfg)    # the demo finds it trained
    logs = []
    report = demo.run(cfg, tmp_path, log=logs.append)
    assert any("[text-tokenizer] already trained" in line for line in logs)
    assert report["num_examples"] == 4 and 0.0 <= report["t2i_accuracy"] <= 1.0
    t2i = [json.loads(x) for x in
           (tmp_path / "samples" / "t2i_test.jsonl").read_text().splitlines()]
    assert len(t2i) == 4
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["t2i_accuracy"] == report["t2i_accuracy"]

    if cfg.data.image_order == "next_scale":   # block-causal: refused by hf, named
        assert any("next-scale: 4 images of 30 codes in 1 batches, 4 forward passes" in line
                   for line in logs)
        with pytest.raises(ValueError, match=r"data\.image_order='next_scale'.*--format mmar"):
            hf.export(tmp_path, tmp_path / "hf", log=lambda _: None)
        check = json.loads((tmp_path / "tokenizer" / "check.json").read_text())
        assert list(check["judge_by_scales"]) == ["1", "2", "3", "4"]
        assert "collisions" not in check          # no code covers one cell
        out = hf.export(tmp_path, tmp_path / "native", fmt="mmar", log=lambda _: None)
    elif cfg.model.image_positions == "2d":   # no transformers class has them: refused, named
        with pytest.raises(ValueError, match=r"model\.image_positions='2d'.*--format mmar"):
            hf.export(tmp_path, tmp_path / "hf", log=lambda _: None)
        check = json.loads((tmp_path / "tokenizer" / "check.json").read_text())
        assert len(check["sub_codes_name"]) == 2    # judged per sub-code
        out = hf.export(tmp_path, tmp_path / "native", fmt="mmar", log=lambda _: None)
    else:
        out = hf.export(tmp_path, tmp_path / "hf", log=lambda _: None)
    decoder = assets.ImageDecoder.from_pretrained(out)
    n = derived.codes_per_image(cfg)
    assert decoder.codes_per_image == n
    depth = derived.quantizer_depth(cfg.image_tokenizer)
    per_depth = derived.num_image_codes(cfg.image_tokenizer) // depth
    codes = (np.arange(n) % depth) * per_depth + np.arange(n) % per_depth   # each in range
    images = decoder.decode_ids(codes[None] + decoder.layout["image_offset"])
    assert images.shape == (1, 32, 32, 3) and images.dtype == np.uint8
