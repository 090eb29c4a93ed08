"""The IsoFLOP grid: every run honours its budget, the shape family, and is a valid config."""
import pathlib

import pytest

from mmar import config as config_lib
from mmar.model import flops
from mmar.scaling import sweep

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load(preset="mini"):
    return config_lib.validate(config_lib.load(f"{ROOT / 'configs/sweep_shapes.py'}:{preset}"))


def test_grid_honours_each_budget():
    cfg = load()
    runs, notes = sweep.plan(cfg)
    tokens_per_step = cfg.data.seq_len * cfg.train.batch_size
    assert {r.budget for r in runs} == set(cfg.sweep.budgets)
    for run in runs:
        run_cfg = config_lib.validate(sweep.run_config(cfg, run))
        per_token = flops.flops_per_token(run_cfg.model, run_cfg.data.seq_len)
        assert run.flops_per_token == per_token
        assert run.tokens == run_cfg.train.steps * tokens_per_step
        # C = FLOPs/token x D, off only by rounding the steps to a whole number
        assert abs(run.flops - run.budget) <= 0.5 * per_token * tokens_per_step
        assert abs(run.flops / run.budget - 1) < 0.02
        assert cfg.sweep.min_steps <= run_cfg.train.steps <= cfg.sweep.max_steps
        assert flops.param_count(run_cfg.model) == run.params
    # the skipped pair is named, and only it is missing from the 3 x 4 grid
    assert len(runs) + len(notes) == len(cfg.sweep.budgets) * len(cfg.sweep.widths)
    assert [n.split(":")[0] for n in notes] == ["C3e11_d128", "C3e12_d16"]
    assert "sweep.min_steps" in notes[0] and "sweep.max_steps" in notes[1]
    assert len({r.name for r in runs}) == len(runs)


def test_shape_family_grows_depth_width_and_heads_together():
    cfg = load()
    shapes = [sweep.shape(cfg.sweep, w) for w in (32, 64, 96, 128)]
    assert [s["n_layers"] for s in shapes] == [1, 2, 3, 4]          # aspect 32
    assert [s["n_heads"] for s in shapes] == [2, 4, 6, 8]           # head_dim 16
    assert [s["n_kv_heads"] for s in shapes] == [1, 2, 3, 4]        # gqa 2
    assert [s["mlp_dim"] for s in shapes] == [64, 128, 192, 256]    # mlp_ratio 2
    runs, _ = sweep.plan(cfg)
    at_c = sorted((r for r in runs if r.budget == 1e12), key=lambda r: r.width)
    assert [r.params for r in at_c] == sorted(r.params for r in at_c)
    assert [r.tokens for r in at_c] == sorted((r.tokens for r in at_c), reverse=True)


@pytest.mark.parametrize("field,value", [("budgets", ()), ("widths", (24,)),
                                         ("params", "all"), ("warmup_fraction", 1.5)])
def test_bad_sweep_field_is_named(field, value):
    cfg = load()
    with cfg.unlocked():
        cfg.sweep[field] = value
    with pytest.raises(sweep.SweepConfigError, match=f"sweep.{field}"):
        sweep.plan(cfg)


def test_command_lines_are_plain_mmar_train():
    import shlex
    cfg = load()
    runs, _ = sweep.plan(cfg)
    lines = sweep.command_lines("configs/sweep_shapes.py:mini", "gs://b/s", runs,
                                ["--config.data.data_dir=/data dir"])
    assert lines[0].startswith("mmar tokenizer-train ") and "--workdir=gs://b/s" in lines[0]
    assert len(lines) == 1 + len(runs)
    for line, run in zip(lines[1:], runs):
        args = shlex.split(line)
        assert args[:2] == ["mmar", "train"] and "--config.data.data_dir=/data dir" in args
        assert f"--workdir=gs://b/s/{run.name}" in args
        assert f"--config.train.steps={run.steps}" in args
