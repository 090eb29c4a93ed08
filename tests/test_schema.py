"""The config schema (mmar/schema.py): one definition per field, presets that list only what
they use, older flat configs that still load, and one-line errors for unknown fields."""
import ast
import json
import pathlib
import subprocess
import sys

import pytest

from mmar import config as config_lib
from mmar import schema

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests/config_fixtures"
# Options of alternatives: a preset that does not use the alternative must not list them.
ALTERNATIVES = {"image_tokenizer": {"vq": "vq", "lfq": "lfq", "rq": "rq"},
                "sample": {"sjd": "sjd", "zipar": "zipar", "randar": "randar"}}


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


@pytest.mark.parametrize("fixture,preset", [("tiny", "tiny_flat"), ("test", "test"),
                                            ("tiny_randar", "tiny_randar")])
def test_an_old_flat_config_migrates_to_the_preset(fixture, preset):
    """The flat config of a preset as an older mmar wrote it (checkpoints save their config)
    completes to exactly today's preset of the same settings (the `tiny` of then is
    `tiny_flat` now: `tiny` moved to factorised codes)."""
    old = json.loads((FIXTURES / f"t2i_shapes_{fixture}_flat.json").read_text())
    assert "sjd_window" in old["sample"] and "levels" in old["image_tokenizer"]
    migrated = schema.complete(old).to_dict()
    today = config_lib.load(f"configs/t2i_shapes.py:{preset}").to_dict()
    # newer than the fixtures and set by the test preset (its 20-step tokenizer: 'warn')
    for tree in (migrated, today):
        tree["image_tokenizer"].pop("check")
        tree.pop("preset")   # the name the preset has today
    assert _plain(migrated) == _plain(today)


def test_migration_moves_each_name_and_says_so():
    tree = {"sample": {"sjd_window": 4, "randar_steps": 3}, "model": {"mot": True},
            "image_tokenizer": {"codebook_size": 512, "quantizer": "rq"}}
    notes = schema.migrate(tree)
    assert tree["sample"] == {"sjd": {"window": 4}, "randar": {"steps": 3}}
    assert tree["model"] == {"mot": {"enabled": True}}
    assert tree["image_tokenizer"]["vq"]["codebook_size"] == 512
    assert tree["image_tokenizer"]["rq"]["codebook_size"] == 512
    assert any(n.startswith("sample.sjd_window is now sample.sjd.window") for n in notes)


def test_every_preset_is_complete_and_valid():
    for spec in ["configs/t2i_shapes.py:" + p for p in ("tiny", "tiny_flat", "tiny_rar",
                                                         "tiny_randar", "test")] + \
                ["configs/pretrain.py:100m", "configs/sweep_shapes.py:micro"]:
        cfg = config_lib.load(spec)
        schema.check(schema.complete(cfg))
        assert schema.complete(cfg).to_dict().keys() == cfg.to_dict().keys(), spec


@pytest.mark.parametrize("preset", ["tiny", "tiny_flat", "tiny_rar", "tiny_randar",
                                    "tiny_var", "test"])
def test_a_preset_sets_only_the_options_of_what_it_uses(preset):
    """The options of a quantizer, a parallel decoder or MoT that a preset does not use stay
    at their defaults (a preset shows only the alternative it uses)."""
    cfg = config_lib.load(f"configs/t2i_shapes.py:{preset}")
    default = schema.complete({})
    tok = cfg.image_tokenizer
    for name in ("fsq", "vq", "lfq", "rq", "msrq"):
        if name != tok.quantizer:
            assert tok[name].to_dict() == default.image_tokenizer[name].to_dict(), name
    decoder = cfg.sample.image_decoder
    for name in ("sjd", "zipar"):
        if name != decoder:
            assert cfg.sample[name].to_dict() == default.sample[name].to_dict(), name
    if cfg.data.image_order != "randar":
        assert cfg.sample.randar.to_dict() == default.sample.randar.to_dict()
    if not cfg.model.mot.enabled:
        assert cfg.model.mot.to_dict() == default.model.mot.to_dict()
    tiny = config_lib.load("configs/t2i_shapes.py:tiny")
    assert tiny.image_tokenizer.quantizer == "fsq" and tiny.sample.image_decoder == "plain"


def test_unknown_field_is_one_error_naming_the_closest_fields():
    with pytest.raises(schema.ConfigError) as e:
        schema.complete({"model": {"atention": "xla"}})
    assert str(e.value).startswith("model.atention: not a config field")
    assert "model.attention" in str(e.value)
    with pytest.raises(schema.ConfigError, match=r"^nonexistent: not a config field"):
        schema.complete({"nonexistent": 1})


def test_a_bad_value_names_the_field_and_what_is_allowed():
    cfg = schema.complete({"sample": {"sjd": {"acceptance": "sometimes"}}})
    with pytest.raises(schema.ConfigError,
                       match=r"^sample\.sjd\.acceptance='sometimes': must be one of"):
        schema.check(cfg)


def test_a_section_completes_alone_with_the_same_defaults():
    """Library code that gets one section (a Decoder's `model`) fills it the same way."""
    model = schema.complete({"d_model": 64, "mot": True}, section="model")
    assert model.d_model == 64 and model.mot.enabled is True and model.mot.tile == 128
    assert model.attention == schema.SCHEMA["model"]["attention"].default


def test_no_config_default_is_restated_in_the_code():
    """`cfg.get("field", default)` on a schema field restates its default (and they drifted
    apart before: randar_steps was 8, 1 and 0 in three places)."""
    names = {n.rsplit(".", 1)[-1] for n in schema._known_names(schema.SCHEMA)}
    offenders = []
    for path in sorted((ROOT / "mmar").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "get" and len(node.args) == 2
                    and isinstance(node.args[0], ast.Constant)
                    and node.args[0].value in names
                    and "cfg" in ast.unparse(node.func.value)):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} "
                                 f"{ast.unparse(node)}")
    assert not offenders, "\n".join(offenders)


def _mmar(*args):
    return subprocess.run([sys.executable, "-m", "mmar", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.e2e
def test_print_config_as_the_readme_shows_it():
    """README's `--print-config` command prints every field of the schema once, defaults
    filled and derived fields set, and an override shows in it."""
    line = next(l for l in (ROOT / "README.md").read_text().splitlines()
                if l.startswith("mmar ") and "--print-config" in l)
    args = line.split()[1:] + ["--config.sample.sjd.window=4"]
    proc = _mmar(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = [l.split(" = ")[0] for l in proc.stdout.splitlines() if " = " in l]
    assert sorted(printed) == sorted(n for n in schema._known_names(schema.SCHEMA)
                                     if schema.is_field(n))
    assert "sample.sjd.window = 4  #" in proc.stdout
    assert "model.vocab_size = 384  #" in proc.stdout        # derived, not the 0 default


@pytest.mark.e2e
@pytest.mark.parametrize("override,says", [
    ("--config.nonexistent=1", "nonexistent: not a config field"),
    ("--config.model.atention=xla", "did you mean model.attention"),
    ("--config.sample.sjd_window=4", "renamed; use --config.sample.sjd.window"),
])
def test_an_unknown_override_is_one_line(override, says):
    proc = _mmar("train", "--config=configs/t2i_shapes.py:test", "--print-config", override)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and says in proc.stderr
    assert "Traceback" not in proc.stderr
