"""Export of decoders trained in other image orders (mmar/data/orders.py): RAR is refused
for transformers (its target embedding has no Llama slot); RandAR is a plain Llama whose
logits on a RandAR row (P c pairs sharing RoPE positions) match transformers'."""
import json

import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmar import config as config_lib  # noqa: E402
from mmar.data import orders, sequences  # noqa: E402
from mmar.export import hf  # noqa: E402
from mmar.train import state as state_lib  # noqa: E402
from tests.helpers import export_runs as helpers  # noqa: E402


def _config(order):
    cfg = helpers.make_config(qk_norm=False, n_heads=4, n_kv_heads=2, head_dim=8)
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    with cfg.unlocked():
        cfg.data.update(image_order=order, seq_len=80)
        cfg.eval.tasks = ("frechet",)
        cfg.model.vocab_size = 0
    return config_lib.validate(cfg)


def test_rar_export_is_refused_naming_the_order(tmp_path):
    cfg = _config("rar")
    helpers.write_run(tmp_path / "run", cfg)
    with pytest.raises(ValueError, match="data.image_order='rar'"):
        hf.export(tmp_path / "run", tmp_path / "hf", log=lambda _: None)
    hf.export(tmp_path / "run", tmp_path / "native", fmt="mmar", log=lambda _: None)
    assert (tmp_path / "native" / "mmar_config.json").exists()


def test_randar_export_matches_transformers_on_a_randar_row(tmp_path):
    cfg = _config("randar")
    vocab = config_lib.make_vocab(cfg)
    params = helpers.write_run(tmp_path / "run", cfg)
    out = hf.export(tmp_path / "run", tmp_path / "hf", log=lambda _: None)
    layout = json.loads((out / "mmar.json").read_text())
    assert layout["image_order"] == "randar"
    assert layout["position_offset"] == vocab.position_offset
    assert layout["num_position_ids"] == 16
    codes = np.random.default_rng(0).integers(0, vocab.num_image_codes, 16)
    row = sequences.pair_example([97, 98, 99], vocab.image_ids(codes), vocab, 80,
                                 image_first=False)
    row = orders.randar_row(row, vocab, 80, np.random.default_rng(1))
    n = int(row["segment_ids"].sum())
    tokens, positions = row["tokens"][None, :n], row["positions"][None, :n]
    model = state_lib.create_abstract(helpers.decoder_module(cfg),
                                      helpers.one_device_mesh())[0].merge(params)
    want = np.asarray(model(tokens, positions, np.ones_like(tokens)))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        got = hf_model(torch.tensor(tokens, dtype=torch.long),
                       position_ids=torch.tensor(positions, dtype=torch.long)).logits.numpy()
    assert float(np.abs(got - want).max()) < 1e-4
