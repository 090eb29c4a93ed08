"""The config schema's operations: fill a config from mmar/config_fields.py (every field
once, with its default, rule and help), migrate older names, refuse unknown fields, check
each field's rule and print the result.

A preset (`configs/*.py`) lists only what it chooses and ends with `schema.complete(c)`, so
that every field exists for `--config.a.b=value` overrides and `--print-config`.
`mmar.config.validate` runs `complete` again (configs written by hand or saved by an older
mmar load too), then checks each field and the cross-field rules.

Names of older configs (flat: `image_tokenizer.codebook_size`, `sample.sjd_window`,
`model.mot=True`) are moved to their new place by `migrate`, which `complete` runs first.
"""
from __future__ import annotations

import difflib
from typing import Any

import ml_collections

from mmar.config_fields import (OPTIONAL_SECTIONS, RENAMED, SCHEMA, ConfigError, Field,
                                positive_int)

__all__ = ["OPTIONAL_SECTIONS", "RENAMED", "SCHEMA", "ConfigError", "Field", "positive_int",
           "check", "closest", "complete", "is_field", "migrate",
           "render", "unknown_field_error", "RUN_CONFIG"]

# WORKDIR/config.json: a run's whole effective config, written by `mmar import` and
# `mmar train`; `--config=configs/run.py:WORKDIR` reads it back (JSON, never executed).
RUN_CONFIG = "config.json"


# ---- filling, migrating, checking ---------------------------------------------------------

def _lookup(dotted: str):
    node: Any = SCHEMA
    for part in dotted.split(".") if dotted else ():
        node = node[part]
    return node


def _known_names(spec: dict, prefix: str = "") -> list[str]:
    out = []
    for name, sub in spec.items():
        out.append(prefix + name)
        if isinstance(sub, dict):
            out += _known_names(sub, f"{prefix}{name}.")
    return out


def closest(dotted: str) -> list[str]:
    """Known field names closest to `dotted` (for an unknown-field error): close spellings
    of the whole name, then fields elsewhere with the same last part."""
    names = _known_names(SCHEMA)
    leaf = dotted.rsplit(".", 1)[-1]
    hits = difflib.get_close_matches(dotted, names, n=3, cutoff=0.6)
    hits += [n for n in names if n.rsplit(".", 1)[-1] == leaf and n not in hits]
    return hits[:3]


def is_field(dotted: str) -> bool:
    """`dotted` names a field (not a section) of the schema."""
    try:
        return isinstance(_lookup(dotted), Field)
    except (KeyError, TypeError):
        return False


def unknown_field_error(dotted: str) -> ConfigError:
    near = closest(dotted)
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    return ConfigError(f"{dotted}: not a config field{hint} (`mmar <command> --config=... "
                       "--print-config` lists them all)")


def _as_plain(cfg) -> dict:
    return cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)


def migrate(tree: dict, prefix: str = "") -> list[str]:
    """Moves older flat names (RENAMED) to their place in `tree` (a plain nested dict, the
    config at `prefix`) in place; returns one note per move, e.g. for the log."""
    notes = []
    for old, new in RENAMED.items():
        if prefix and not old.startswith(prefix):
            continue
        parts = old[len(prefix):].split(".")
        parent = tree
        for part in parts[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or parts[-1] not in parent:
            continue
        if isinstance(parent[parts[-1]], dict):       # already the new section
            continue
        value = parent.pop(parts[-1])
        for target in new:
            t_parts = target[len(prefix):].split(".")
            node = tree
            for part in t_parts[:-1]:
                node = node.setdefault(part, {})
            if node.setdefault(t_parts[-1], value) != value:
                raise ConfigError(f"{old}={value!r}: renamed to {target}, which the config "
                                  f"also sets (to {node[t_parts[-1]]!r}); set only {target}")
        notes.append(f"{old} is now {' and '.join(new)}")
    return notes


def _fill(tree: dict, spec: dict, where: str) -> None:
    for name, value in tree.items():
        if name not in spec:
            raise unknown_field_error(where + name)
        if isinstance(spec[name], dict) and not isinstance(value, dict):
            raise ConfigError(f"{where}{name}={value!r}: must be a section (fields "
                              f"{', '.join(sorted(spec[name]))})")
    for name, sub in spec.items():
        if isinstance(sub, dict):
            _fill(tree.setdefault(name, {}), sub, f"{where}{name}.")
        elif name not in tree:
            tree[name] = sub.default
        elif isinstance(sub.default, tuple) and isinstance(tree[name], list):
            tree[name] = tuple(tree[name])   # JSON (a saved config) has lists for tuples


def complete(cfg, section: str = "") -> ml_collections.ConfigDict:
    """`cfg` (the whole config, or the section named by `section`, e.g. "model") with older
    names moved (`migrate`) and every missing field at its default; unknown fields raise
    ConfigError naming the field and the closest known names. Returns a new locked
    ConfigDict; sections outside the schema (OPTIONAL_SECTIONS) pass through as they are."""
    tree = _as_plain(cfg)
    migrate(tree, f"{section}." if section else "")
    spec = _lookup(section)
    extra = {k: tree.pop(k) for k in list(tree) if not section and k in OPTIONAL_SECTIONS}
    _fill(tree, spec, f"{section}." if section else "")
    tree.update(extra)
    out = ml_collections.ConfigDict(tree)
    out.lock()
    return out


def check(cfg, section: str = "") -> None:
    """Each field's own rule (type, range, allowed values); ConfigError names the first bad
    field. Cross-field rules are mmar.config.validate's."""
    _check(_as_plain(cfg), _lookup(section), f"{section}." if section else "")


def _check(tree: dict, spec: dict, where: str) -> None:
    for name, sub in spec.items():
        if name not in tree:
            raise ConfigError(f"{where}{name}: missing from the config")
        value = tree[name]
        if isinstance(sub, dict):
            _check(value, sub, f"{where}{name}.")
            continue
        if sub.check is None:
            continue
        try:
            good = sub.check(value)
        except TypeError:
            good = False
        if not good:
            raise ConfigError(f"{where}{name}={value!r}: must be {sub.want}")


def render(cfg) -> str:
    """The config as `dotted.name = value  # help` lines, section by section, every field
    (what `mmar <command> --print-config` prints; values are Python literals, so a line can
    be pasted as `--config.dotted.name=value`)."""
    lines = []

    def walk(tree, spec, prefix):
        for name in sorted(tree, key=lambda k: (isinstance(tree[k], dict), k)):
            value, sub = tree[name], (spec or {}).get(name)
            if isinstance(value, dict):
                lines.append("")
                walk(value, sub if isinstance(sub, dict) else None, f"{prefix}{name}.")
            else:
                note = f"  # {sub.help}" if isinstance(sub, Field) and sub.help else ""
                lines.append(f"{prefix}{name} = {value!r}{note}")
    walk(_as_plain(cfg), SCHEMA, "")
    return "\n".join(lines).strip("\n") + "\n"
