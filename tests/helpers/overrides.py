"""Config fields set by dotted name, as `--config.a.b=value` sets them on the command line:
tests that run a documented command's overrides in-process say them the same way."""
from __future__ import annotations

import ml_collections

from mmar import config as config_lib


def set_field(cfg, dotted: str, value) -> None:
    """`--config.a.b.c=value` on a ConfigDict (unlocked)."""
    *sections, name = dotted.split(".")
    for section in sections:
        cfg = cfg[section]
    cfg[name] = value


def with_fields(cfg, fields: dict) -> ml_collections.ConfigDict:
    """A copy of `cfg` with `fields` ({dotted name: value}) set, validated."""
    out = ml_collections.ConfigDict(cfg.to_dict())
    with out.unlocked():
        for dotted, value in fields.items():
            set_field(out, dotted, value)
    return config_lib.validate(out)
