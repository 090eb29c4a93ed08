"""Every config file and preset builds, validates, and matches the numbers in its docstring."""
import pathlib
import re

import jax
import pytest
from flax import nnx

from mmar import config as config_lib
from mmar.jobs import sample
from mmar.model import flops
from mmar.model.transformer import Decoder

ROOT = pathlib.Path(__file__).resolve().parents[1]
# configs/run.py takes a run directory, not a preset (tests/export/test_pretrained_finetune.py)
CONFIG_FILES = sorted(p for p in (ROOT / "configs").glob("*.py") if p.name != "run.py")


def _presets(path):
    module_text = path.read_text()
    match = re.search(r"PRESETS = \(([^)]*)\)", module_text)
    return [p.strip().strip("\"'") for p in match.group(1).split(",") if p.strip()]


CASES = [(p, preset) for p in CONFIG_FILES for preset in _presets(p)]


def test_there_are_configs():
    assert CASES


@pytest.mark.parametrize("path,preset", CASES, ids=[f"{p.stem}:{a}" for p, a in CASES])
def test_config_builds_and_matches_docstring(path, preset):
    cfg = config_lib.validate(config_lib.load(f"{path}:{preset}"))
    model = nnx.eval_shape(lambda: Decoder(cfg.model, rngs=nnx.Rngs(0)))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n == flops.param_count(cfg.model)
    doc = path.read_text().split('"""')[1]
    counts = dict(re.findall(r"(\w+): ([\d,]+)", doc.split("Parameter counts")[1].split("FLOPs per token")[0]))
    assert int(counts[preset].replace(",", "")) == n, f"docstring of {path.name} is stale"
    per_token = flops.flops_per_token(cfg.model, cfg.data.seq_len)
    assert per_token > 6 * n * 0.5
    if "FLOPs per token" in doc:            # e.g. "1b: 6.36e9", to the digits shown
        stated = dict(re.findall(r"(\w+): ([\d.]+e\d+)", doc.split("FLOPs per token")[1]))
        assert f"{per_token / 1e9:.2f}e9" == stated[preset], f"docstring of {path.name} is stale"


def _set(cfg, dotted, value):
    *sections, name = dotted.split(".")
    for section in sections:
        cfg = cfg[section]
    cfg[name] = value


@pytest.mark.parametrize("field,value,message", [
    ("train.steps", 0, "train.steps=0"),
    ("model.dtype", "float16", "model.dtype='float16'"),
    ("model.n_kv_heads", 3, "model.n_kv_heads=3"),
    ("data.i2t_fraction", 1.5, "data.i2t_fraction=1.5"),
    ("image_tokenizer.fsq.levels", (5, 1), "image_tokenizer.fsq.levels"),
    ("mesh.data", 0, "mesh.data=0"),
    ("model.scan_layers", None, "model.scan_layers=None"),
    ("image_tokenizer.downsample", 4, "image_tokenizer.channel_mult"),  # 3 stages for 8
])
def test_bad_field_is_named(field, value, message):
    cfg = config_lib.load(f"{ROOT / 'configs/t2i_shapes.py'}:test")
    with cfg.unlocked():
        _set(cfg, field, value)
    with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
        config_lib.validate(cfg)


def test_unknown_preset_and_missing_file():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        config_lib.load(f"{ROOT / 'configs/t2i_shapes.py'}:huge")
    with pytest.raises(config_lib.ConfigError, match="does not exist"):
        config_lib.load("configs/nope.py:tiny")


@pytest.mark.parametrize("overrides,message", [
    ({"data.image_order": "zigzag"}, "data.image_order='zigzag'"),
    ({"data.image_order": "rar", "data.pack": True}, "data.pack=True"),
    ({"data.image_order": "randar", "data.mixture": "shapes:1,stories:1"}, "data.mixture="),
    ({"data.image_order": "randar", "data.seq_len": 30, "eval.tasks": ()}, "data.seq_len=30"),
    ({"data.image_order": "randar"}, "eval.tasks"),   # the test preset continues stories
    ({"data.rar.anneal_start": 0.5, "data.rar.anneal_end": 0.25}, "data.rar.anneal_end=0.25"),
    ({"data.image_order": "rar", "image_tokenizer.quantizer": "rq"}, "data.image_order='rar'"),
    ({"sample.randar.schedule": "linear"}, "sample.randar.schedule='linear'"),
    ({"data.image_order": "rar", "sample.image_decoder": "sjd"}, "sample.image_decoder='sjd'"),
    ({"sample.negative_prompt": "lowres", "sample.image_decoder": "zipar"},
     "sample.negative_prompt='lowres'"),
    ({"vocab.emu3_layout_ids": tuple(range(14))}, "vocab.emu3_layout_ids="),
])
def test_image_order_errors_name_the_field(overrides, message):
    cfg = config_lib.load(f"{ROOT / 'configs/t2i_shapes.py'}:test")
    with cfg.unlocked():
        for field, value in overrides.items():
            _set(cfg, field, value)
    with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
        config_lib.validate(cfg)


def test_image_order_derives_the_model():
    rar = config_lib.validate(config_lib.load(f"{ROOT / 'configs/t2i_shapes.py'}:tiny_rar"))
    randar = config_lib.validate(config_lib.load(f"{ROOT / 'configs/t2i_shapes.py'}:tiny_randar"))
    assert rar.model.num_targets == 16 + 1 and randar.model.num_targets == 0
    vocab = config_lib.make_vocab(randar)
    assert vocab.num_positions == 16 and vocab.position_offset == 256 + 5 + 125
    assert config_lib.make_vocab(rar).num_positions == 0


def test_one_seed_override_reseeds_the_tiny_demo_sampling_too():
    """`mmar demo --config.seed=N` (the demo's three-seed report) changes data order,
    initialisation and the sampling key; an explicit sample.seed still wins."""
    cfg = config_lib.load(f"{ROOT / 'configs/t2i_shapes.py'}:tiny")
    cfg.seed = 2
    assert sample.sample_seed(config_lib.validate(cfg)) == 2
    cfg.sample.seed = 5
    assert sample.sample_seed(config_lib.validate(cfg)) == 5
