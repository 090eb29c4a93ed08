"""Small decoder configs for the model tests, derived from the `test` preset.

The preset (configs/t2i_shapes.py:test) supplies every model field and its default; the tests
override only the sizes they rely on (a 48-id vocabulary, 16-wide residual stream, 4 query
heads over 2 KV heads) and use no QK-norm and a wide init so that reference comparisons see
large activations.
"""
import pathlib

import ml_collections

from mmar import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PRESET = str(ROOT / "configs/t2i_shapes.py") + ":test"

# What the model tests change relative to the `test` preset's model section.
TINY = dict(vocab_size=48, d_model=16, n_heads=4, n_kv_heads=2, head_dim=8, mlp_dim=24,
            qk_norm=False, init_std=0.2)


def _merge(base: dict, overrides: dict) -> None:
    """Sets `overrides` on `base` in place; a dict value merges into a section
    (`mot=dict(enabled=True)` keeps the other `model.mot` fields)."""
    for name, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(name), dict):
            _merge(base[name], value)
        else:
            base[name] = value


def preset_model(preset: str = PRESET, **overrides) -> ml_collections.ConfigDict:
    """The model section of `preset` (unvalidated), with `overrides`, as a new unlocked dict."""
    cfg = config_lib.load(preset).model.to_dict()
    _merge(cfg, overrides)
    return ml_collections.ConfigDict(cfg)


def tiny_cfg(**overrides) -> ml_collections.ConfigDict:
    """The small decoder the model tests share (override any field by keyword)."""
    return preset_model(**{**TINY, **overrides})
