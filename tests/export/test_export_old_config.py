"""A run saved by an older mmar, whose config has the flat names (`model.mot_tile`,
`image_tokenizer.levels`, ...), still reads back, exports and imports: every place that reads
a saved config completes it with mmar/schema.py first."""
import json
import pathlib

import jax
import ml_collections
import numpy as np

from mmar import config as config_lib
from mmar import schema
from mmar.export import assets, hf, import_hf
from mmar.export.orbax_reader import CheckpointReader
from tests.helpers import export_runs as helpers

FLAT = pathlib.Path(__file__).resolve().parents[1] / "config_fixtures/t2i_shapes_test_flat.json"


def _old_run(tmp_path):
    """(config, params, flat config as an older mmar saved it) of a random-weight run whose
    decoder checkpoint carries the flat config."""
    flat = json.loads(FLAT.read_text())
    assert "mot_tile" in flat["model"] and "levels" in flat["image_tokenizer"]
    cfg = config_lib.validate(ml_collections.ConfigDict(flat))
    params = helpers.write_run(tmp_path / "run", cfg)
    # What an older `validate` saved: the flat names with the derived fields filled in.
    flat["model"].update(vocab_size=cfg.model.vocab_size, num_targets=cfg.model.num_targets)
    saved = tmp_path / "run/decoder/checkpoints/5/config/metadata"
    assert saved.is_file()
    saved.write_text(json.dumps(flat))
    return cfg, params, flat


def test_old_flat_config_reads_back_exports_and_imports(tmp_path):
    cfg, params, flat = _old_run(tmp_path)
    step_dir = tmp_path / "run/decoder/checkpoints/5"
    assert CheckpointReader(step_dir).config().to_dict() == cfg.to_dict()

    out = hf.export(tmp_path / "run", tmp_path / "hf", fmt="mmar", log=lambda _: None)
    exported = json.loads((out / "mmar_config.json").read_text())
    assert exported["model"]["mot"]["tile"] == flat["model"]["mot_tile"]
    assert "mot_tile" not in exported["model"]

    # an export written by an older mmar: flat mmar_config.json and image tokenizer config
    (out / "mmar_config.json").write_text(json.dumps(flat))
    tok_config = out / assets.IMAGE_DIR / "config.json"
    tok = json.loads(tok_config.read_text())
    tok["image_tokenizer"] = flat["image_tokenizer"]
    tok_config.write_text(json.dumps(tok))

    cfg2, params2, text_size = import_hf.load_params(out)
    assert text_size is None and cfg2.to_dict() == cfg.to_dict()
    flat_params, flat_params2 = jax.tree.leaves_with_path(params), \
        jax.tree.leaves_with_path(params2)
    assert [p for p, _ in flat_params] == [p for p, _ in flat_params2]
    for (path, a), (_, b) in zip(flat_params, flat_params2):
        assert np.array_equal(a, b), path

    decoder = assets.ImageDecoder.from_pretrained(out)
    codes = np.zeros((1, decoder.codes_per_image), np.int32)
    images = decoder.decode_codes(codes)
    assert images.shape == (1, cfg.data.image_size, cfg.data.image_size, 3)
    assert schema.complete(tok["image_tokenizer"], section="image_tokenizer").to_dict() == \
        cfg.image_tokenizer.to_dict()
