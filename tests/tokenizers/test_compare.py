"""The comparison command in docs/tokenizers.md (on the `test` preset, 2 steps), the metrics
on known inputs, and the decoder trained and sampled end to end on RQ codes (depth-2 id
ranges)."""
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from mmar.tokenizers.image import metrics

ROOT = pathlib.Path(__file__).resolve().parents[2]


def doc_command() -> list[str]:
    text = (ROOT / "docs/tokenizers.md").read_text()
    block = text.split("tests/tokenizers/test_compare.py runs this")[1].split("```bash")[1]
    return block.split("```")[0].replace("\\\n", " ").split()


def _run(args, data_dir):
    env = dict(os.environ, MMAR_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.e2e
@pytest.mark.slow
def test_doc_command_writes_the_table(tmp_path, data_dir):
    args = []
    for a in doc_command()[1:]:   # drop "python"
        if a.startswith("--config="):
            a = f"--config={ROOT}/" + re.sub(r":tiny\w*", ":test", a.split("=", 1)[1])
        elif a.startswith("--workdir="):
            a = f"--workdir={tmp_path}"
        elif a.startswith("--steps="):
            a = "--steps=2"
        args.append(a)
    out = _run(args + ["--only=vq,rq"], data_dir)
    assert "| vq |" in out and "| rq |" in out
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["quantizer"] for r in rows] == ["vq", "rq"]
    assert rows[0]["bits_per_image"] == rows[1]["bits_per_image"] == 96
    assert rows[1]["tokens_per_image"] == 2 * rows[0]["tokens_per_image"]
    for r in rows:
        assert 0 < r["usage"] <= 1 and r["perplexity"] >= 1 and r["encode_images_per_s"] > 0
        assert np.isfinite(r["photo_psnr"]) and 0 <= r["judge_accuracy"] <= 1


def test_metrics_on_known_inputs():
    a = np.zeros((2, 16, 16, 3), np.uint8)
    b = a.copy()
    b[1] = 255 // 10 * 1  # 25/255 off everywhere in image 1
    r = metrics.reconstruction(a, b)
    mse1 = (25 / 255) ** 2
    assert r["mse"] == pytest.approx(mse1 / 2)
    assert r["psnr"] == pytest.approx((100 + 10 * np.log10(1 / mse1)) / 2)
    s = metrics.code_stats(np.array([0, 0, 1, 3]), 8)
    assert s["usage"] == pytest.approx(3 / 8)
    p = np.array([0.5, 0.25, 0.25])
    assert s["perplexity"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    crops = metrics.photo_crops(32, 10)
    assert crops.shape == (10, 32, 32, 3) and crops.dtype == np.uint8 and crops.std() > 10


@pytest.mark.e2e
@pytest.mark.slow
def test_decoder_trains_on_rq_codes(tmp_path, data_dir):
    config = f"--config={ROOT / 'configs/t2i_shapes.py'}:test"
    over = ["--config.image_tokenizer.quantizer=rq", "--config.image_tokenizer.train.steps=2",
            "--config.image_tokenizer.rq.codebook_size=8", "--config.train.steps=4",
            "--config.data.seq_len=96"]
    outs = {command: _run(["-m", "mmar", command, config, f"--workdir={tmp_path}", *over],
                          data_dir)
            for command in ("text-tokenizer-train", "tokenizer-train", "train", "sample")}
    assert "[decoder] step 4/4" in outs["train"]
    # The samplers draw h * w * depth codes per image (mmar.derived.codes_per_image), which
    # the tokenizer decodes: images, captions, stories and digits of an RQ run.
    t2i = (tmp_path / "samples" / "t2i_test.jsonl").read_text().splitlines()
    assert len(t2i) == 8 and (tmp_path / "samples" / "t2i_test.png").is_file()
    for what in ("text-to-image on test", "image-to-text", "interleaved stories", "digits"):
        assert f"[sample] {what}" in outs["sample"], what
