"""IsoFLOP grids: from FLOP budgets and a model-shape family to a list of ordinary runs.

A sweep config is an ordinary experiment config plus a `sweep` section (configs/
sweep_shapes.py). For each budget C and each width of the family, the run's model is the
family's shape at that width (N parameters, F training FLOPs per token from model/flops.py)
and its data is D = C / F tokens, i.e. `train.steps = round(D / tokens per step)`. Every run
is the base config plus a few overrides (`--config.model.d_model=...`), so it is exactly
what `mmar train` would run with those flags, locally or on a pod.

The family ties depth, width and heads together the usual way (Kaplan et al.; Chinchilla
kept d_model / n_layers in a narrow band): n_layers = round(d_model / aspect),
n_heads = d_model / head_dim, n_kv_heads = n_heads / gqa (or n_heads where gqa does not
divide it), mlp_dim = mlp_ratio * d_model rounded up to a multiple of 8.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import shlex

from mmar.errors import UserError
from mmar.model import flops

# Fields of the `sweep` section and what a good value looks like (checked here, not in
# mmar/config.py: only sweep configs have the section).
_CHECKS = (
    ("budgets", lambda v: len(v) > 0 and all(isinstance(x, (int, float)) and x > 0
                                             for x in v), "a non-empty tuple of FLOPs > 0"),
    ("widths", lambda v: len(v) > 0 and all(isinstance(x, int) and x > 0 for x in v),
     "a non-empty tuple of d_model values"),
    ("aspect", lambda v: isinstance(v, (int, float)) and v > 0, "a number > 0"),
    ("head_dim", lambda v: isinstance(v, int) and v > 0, "a positive int"),
    ("gqa", lambda v: isinstance(v, int) and v > 0, "a positive int"),
    ("mlp_ratio", lambda v: isinstance(v, (int, float)) and v > 0, "a number > 0"),
    ("min_steps", lambda v: isinstance(v, int) and v > 0, "a positive int"),
    ("max_steps", lambda v: isinstance(v, int) and v >= 0, "an int >= 0 (0 = no limit)"),
    ("warmup_fraction", lambda v: isinstance(v, float) and 0 <= v < 1, "a float in [0, 1)"),
    ("checkpoints_per_run", lambda v: isinstance(v, int) and v > 0, "a positive int"),
    ("params", lambda v: v in ("total", "non_embedding"), "'total' or 'non_embedding'"),
    ("sample_metrics", lambda v: all(isinstance(x, str) and x for x in v),
     "a tuple of report.json keys (scores in [0, 1]; () = none)"),
    ("bootstrap", lambda v: isinstance(v, int) and v >= 0, "an int >= 0"),
)


class SweepConfigError(UserError, ValueError):
    """A `sweep` field has a bad value; the message starts with `sweep.<field>`."""


def validate(cfg) -> None:
    if "sweep" not in cfg:
        raise SweepConfigError("sweep: section missing (a sweep config is a base config plus "
                               "a `sweep` section, see configs/sweep_shapes.py)")
    for name, ok, want in _CHECKS:
        if name not in cfg.sweep:
            raise SweepConfigError(f"sweep.{name}: missing from the config")
        value = cfg.sweep[name]
        try:
            good = ok(value)
        except TypeError:
            good = False
        if not good:
            raise SweepConfigError(f"sweep.{name}={value!r}: must be {want}")
    for width in cfg.sweep.widths:
        if width % cfg.sweep.head_dim:
            raise SweepConfigError(f"sweep.widths: {width} is not a multiple of "
                                   f"sweep.head_dim={cfg.sweep.head_dim}")


def shape(sweep_cfg, width: int) -> dict:
    """The family's model fields at `width` (d_model)."""
    heads = width // sweep_cfg.head_dim
    kv = heads // sweep_cfg.gqa if heads % sweep_cfg.gqa == 0 else heads
    mlp = int(math.ceil(sweep_cfg.mlp_ratio * width / 8) * 8)
    return {"d_model": width, "n_layers": max(1, int(round(width / sweep_cfg.aspect))),
            "n_heads": heads, "n_kv_heads": kv, "head_dim": sweep_cfg.head_dim,
            "mlp_dim": mlp}


def budget_name(budget: float) -> str:
    """1.2e12 -> '1.2e12' (no '+', safe in paths and shells)."""
    return f"{budget:.2g}".replace("e+", "e")


@dataclasses.dataclass(frozen=True)
class Run:
    name: str             # directory under the sweep's workdir
    budget: float         # the budget C the run was planned for (FLOPs)
    width: int
    params: int           # N, total (embeddings and head included)
    non_embedding_params: int
    flops_per_token: float
    steps: int
    tokens: int           # D = steps x batch x seq_len
    flops: float          # flops_per_token x tokens: C up to the rounding of steps
    overrides: tuple      # ((dotted field, value), ...) on top of the base config

    def record(self) -> dict:
        out = dataclasses.asdict(self)
        out["overrides"] = dict(self.overrides)
        return out


def _model_cfg(cfg, fields):
    model = copy.deepcopy(cfg.model)
    with model.unlocked():
        model.update(fields)
    return model


def plan(cfg) -> tuple[list[Run], list[str]]:
    """-> (runs, notes). A (budget, width) pair whose run would be shorter than
    `sweep.min_steps` is left out, with a note: too few steps to get past warmup; so is one
    longer than `sweep.max_steps` (0 = no limit): a model far below the budget's optimum,
    and on a CPU the slowest run of all (per-step overhead), so the grid slides with C."""
    validate(cfg)
    s = cfg.sweep
    seq_len, batch = cfg.data.seq_len, cfg.train.batch_size
    runs, notes = [], []
    for budget in sorted(s.budgets):
        for width in sorted(s.widths, reverse=True):  # the longest run last
            fields = shape(s, width)
            model = _model_cfg(cfg, fields)
            per_token = flops.flops_per_token(model, seq_len)
            steps = int(round(budget / (per_token * seq_len * batch)))
            name = f"C{budget_name(budget)}_d{width}"
            if steps < s.min_steps:
                notes.append(f"{name}: left out, {steps} steps < sweep.min_steps="
                             f"{s.min_steps}")
                continue
            if s.max_steps and steps > s.max_steps:
                notes.append(f"{name}: left out, {steps} steps > sweep.max_steps="
                             f"{s.max_steps}")
                continue
            tokens = steps * seq_len * batch
            overrides = tuple([(f"model.{k}", v) for k, v in fields.items()] + [
                ("train.steps", steps),
                ("train.warmup_steps", int(round(s.warmup_fraction * steps))),
                ("checkpoint.every_steps", max(1, -(-steps // s.checkpoints_per_run))),
            ])
            runs.append(Run(name, float(budget), width, flops.param_count(model),
                            flops.non_embedding_param_count(model), per_token, steps,
                            tokens, per_token * tokens, overrides))
    return runs, notes


def run_config(cfg, run: Run):
    """The base config with the run's overrides: what `mmar train <overrides>` builds."""
    out = copy.deepcopy(cfg)
    with out.unlocked():
        for dotted, value in run.overrides:
            section, field = dotted.split(".")
            out[section][field] = value
    return out


def command_lines(config_spec: str, workdir: str, runs: list[Run],
                  extra_args=(), text_tokenizer: bool = False) -> list[str]:
    """One shell-quoted `mmar` command per line: the shared tokenizers first (the text
    tokenizer when `text_tokenizer`), then each run's training. A pod launcher wraps each
    line (mmar/launch/); `mmar sweep` run afterwards evaluates the finished runs and fits
    (finished runs are not trained again)."""
    base = [f"--config={config_spec}", *extra_args]
    stages = ["text-tokenizer-train"] * bool(text_tokenizer) + ["tokenizer-train"]
    lines = [shlex.join(["mmar", stage, *base, f"--workdir={workdir}"]) for stage in stages]
    for run in runs:
        lines.append(shlex.join(["mmar", "train", *base, f"--workdir={workdir}/{run.name}",
                                 *[f"--config.{k}={v}" for k, v in run.overrides]]))
    return lines
