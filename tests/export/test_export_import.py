"""`mmar import` of a text LLM saved by transformers, and the errors on what cannot map."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmar.export import hf, import_hf  # noqa: E402
from mmar.export.orbax_reader import CheckpointReader  # noqa: E402
from tests.helpers import export_runs as helpers  # noqa: E402

TEXT_VOCAB = 300


@pytest.mark.parametrize("qwen3,tied", [(False, False), (True, True)])
def test_import_text_llm_extends_vocab(tmp_path, qwen3, tied):
    model = helpers.save_llm(tmp_path / "llm", qwen3, tied)
    base = helpers.make_config()
    cfg, params, text_size = import_hf.load_params(tmp_path / "llm", base)
    assert text_size == TEXT_VOCAB
    # text ids keep their rows; then 5 specials and 125 image codes; padded to 128
    assert cfg.model.vocab_size == 512 and cfg.model.qk_norm == qwen3
    assert cfg.model.tie_embeddings == tied
    emb = params["embed"]["embedding"]
    np.testing.assert_array_equal(emb[:TEXT_VOCAB],
                                  model.model.embed_tokens.weight.detach().numpy())
    assert np.all(np.isfinite(emb)) and not np.allclose(emb[TEXT_VOCAB], emb[TEXT_VOCAB + 1])
    tokens = np.random.default_rng(0).integers(0, TEXT_VOCAB, (2, 24)).astype(np.int32)
    with torch.no_grad():
        want = model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    got = helpers.mmar_logits(cfg, params, tokens)
    diff = float(np.abs(got[..., :TEXT_VOCAB] - want).max())
    print(f"\n[import] {'qwen3' if qwen3 else 'llama'}: max |logit diff| on text ids = {diff:.3g}")
    assert diff < 1e-4


@pytest.mark.e2e
def test_import_cli_writes_a_checkpoint_mmar_can_export(tmp_path):
    helpers.save_llm(tmp_path / "llm", qwen3=False)
    env = dict(os.environ, PYTHONPATH=str(helpers.ROOT))
    proc = subprocess.run([sys.executable, "-m", "mmar", "import", str(tmp_path / "llm"),
                           "--out", str(tmp_path / "run"),
                           f"--config={helpers.ROOT}/configs/t2i_shapes.py:test"],
                          cwd=helpers.ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reader = CheckpointReader(tmp_path / "run/decoder/checkpoints/0")
    assert reader.shape("embed.embedding") == (512, 32)
    layout = json.loads((tmp_path / "run/decoder/vocab.json").read_text())
    assert layout["special_ids"]["<boi>"] == TEXT_VOCAB + 3 and layout["image_offset"] == 305
    # the same directory again: refused, nothing overwritten
    again = subprocess.run(proc.args, cwd=helpers.ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 1 and "already holds a checkpoint" in again.stderr


@pytest.mark.parametrize("field,value", [("attention_bias", True), ("hidden_act", "gelu"),
                                         ("rope_scaling", {"rope_type": "linear", "factor": 2.0}),
                                         ("model_type", "mistral")])
def test_import_refuses_what_cannot_map(tmp_path, field, value):
    helpers.save_llm(tmp_path / "llm", qwen3=False)
    path = tmp_path / "llm" / "config.json"
    config = json.loads(path.read_text())
    config[field] = value
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"config.json: {field}="):
        import_hf.load_params(tmp_path / "llm", helpers.make_config())


def test_import_names_a_missing_tensor_and_a_bad_file(tmp_path):
    helpers.save_llm(tmp_path / "llm", qwen3=False)
    with pytest.raises(ValueError, match="not an mmar export: pass --config"):
        import_hf.load_params(tmp_path / "llm")
    (tmp_path / "llm" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad")
    with pytest.raises(ValueError, match="model.safetensors: not a safetensors file"):
        import_hf.load_params(tmp_path / "llm", helpers.make_config())


def test_export_refuses_unmappable_checkpoints(tmp_path):
    cfg = helpers.make_config()
    with pytest.raises(ValueError, match="model.mot.enabled=True: a Mixture-of-Transformers"):
        cfg.model.mot.enabled = True
        hf.check_mappable(cfg.model, hf.expected_names(cfg.model))
    cfg = helpers.make_config()
    names = hf.expected_names(cfg.model) | {"blocks.attn.q_image"}
    with pytest.raises(ValueError, match=r"unexpected \['blocks.attn.q_image'\].*--format mmar"):
        hf.check_mappable(cfg.model, names)
    with pytest.raises(FileNotFoundError, match="no mmar decoder checkpoint"):
        hf.export(tmp_path / "nothing", tmp_path / "out")
