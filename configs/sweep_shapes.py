r"""IsoFLOP sweeps on the built-in shapes data (text-to-image + image-to-text pairs).

`mini`: 3 FLOP budgets x 5 widths, 13 runs (d_model 16..128, 2.6k to 0.6M non-embedding
parameters; d_model 128 at the smallest budget would be too short and d_model 16 at the
largest too long, both left out), end to end on 2 CPU cores (time in docs/scaling.md);
`micro`: 1 budget x 2 widths of a few hundred steps, for the tests.

    mmar sweep --config=configs/sweep_shapes.py:mini --workdir=runs/sweep
    mmar sweep --config=configs/sweep_shapes.py:mini --workdir=runs/sweep --dry-run

The base config is configs/t2i_shapes.py (`tiny_flat` for mini: one code per cell, the sweep of docs/scaling.md; `test`
for micro); the `sweep`
section (mmar/scaling/sweep.py) sets the budgets and the model-shape family, and each run is
the base config plus `--config.model.*`, `--config.train.steps` and friends. Every run
shares one image tokenizer, trained once in WORKDIR/tokenizer.

Parameter counts (decoder, embeddings included; checked by tests/test_configs.py):
    mini: 139,648    micro: 51,424
"""
import pathlib

import ml_collections

PRESETS = ("mini", "micro")


def _base(preset):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "t2i_shapes", pathlib.Path(__file__).with_name("t2i_shapes.py"))
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    return base.get_config(preset)


def get_config(arg: str = "mini") -> ml_collections.ConfigDict:
    if arg not in PRESETS:
        raise ValueError(f"unknown preset {arg!r} for configs/sweep_shapes.py; one of {PRESETS}")
    c = _base("tiny_flat" if arg == "mini" else "test")
    with c.unlocked():
        c.preset = arg
        c.sweep = ml_collections.ConfigDict(dict(
            budgets=(3e11, 1e12, 3e12),  # training FLOPs per run (model/flops.py)
            widths=(16, 32, 64, 96, 128),  # d_model of each size; the family gives the rest
            aspect=32,                   # d_model / n_layers
            head_dim=16,
            gqa=2,                       # n_heads / n_kv_heads
            mlp_ratio=2.0,               # mlp_dim / d_model (SwiGLU)
            min_steps=50,                # shorter runs are left out of the grid
            max_steps=10000,             # and longer ones (0 = no limit)
            warmup_fraction=0.05,
            checkpoints_per_run=4,
            params="non_embedding",      # N in the fits: "non_embedding" or "total"
            # report.json scores fitted as error = 1 - score (the shape judge on samples)
            sample_metrics=("t2i_accuracy", "i2t_accuracy"),
            bootstrap=100,               # resamples for the intervals
        ))
        # The base model is the family's middle width (what `mmar train` on this config
        # alone would train); each run overrides it.
        c.model.update(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                       mlp_dim=128)
        c.eval.update(num_examples=64)
        c.sample.update(batch_size=64)
        if arg == "micro":
            c.sweep.update(budgets=(1e10,), widths=(16, 32), aspect=16, min_steps=10,
                           checkpoints_per_run=10, bootstrap=10)
            c.train.update(log_every=25)
            c.model.update(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16,
                           mlp_dim=64)
            c.eval.update(num_examples=8)
            c.sample.update(batch_size=8)
    c.lock()
    return c
