"""Launchers: one run on a TPU VM / pod, a GKE cluster (JobSet), a SLURM cluster, or as N
local processes. `mmar launch ENGINE [options] [--dry-run] -- train --config=... --workdir=...`
(docs/pods.md).

For programs (a sweep runner), with no command line:

    from mmar import launch
    runs = [("configs/pretrain.py:100m", "gs://B/sweep/lr3e-4", {"train.lr": 3e-4}), ...]
    scripts = launch.launch_commands("slurm", runs, nodes=2, partition="gpu")   # texts
    launch.submit("slurm", runs[0], dry_run=False, nodes=2, partition="gpu")    # runs one

Options are the fields of ENGINE's `Options` (mmar/launch/ENGINE.py). Each run's name (TPU,
JobSet, SLURM job) defaults to its workdir's last part, so the runs of a sweep do not clash.
"""
from __future__ import annotations

import importlib
from typing import Iterable

from mmar.launch.common import RunSpec

ENGINES = ("tpu", "gke", "slurm", "local")


def engine_module(engine: str):
    if engine not in ENGINES:
        raise ValueError(f"unknown launcher {engine!r}; one of {ENGINES}")
    return importlib.import_module(f"mmar.launch.{engine}")


def render(engine: str, run, **options) -> str:
    """What `mmar launch ENGINE --dry-run` prints for `run` (a RunSpec or a
    (config, workdir[, overrides]) tuple, overrides a dict or `section.field=value` strings)."""
    module = engine_module(engine)
    return module.render(RunSpec.coerce(run), module.Options(**options))


def launch_commands(engine: str, runs: Iterable, **options) -> list[str]:
    """One rendered text per run: a bash script (tpu), a JobSet manifest (gke), an sbatch
    script (slurm) or the process command lines (local)."""
    return [render(engine, run, **options) for run in runs]


def submit(engine: str, run, *, dry_run: bool = True, **options) -> int:
    """Prints (dry_run) or runs/submits one run; returns the exit status."""
    module = engine_module(engine)
    return module.submit(RunSpec.coerce(run), module.Options(**options), dry_run)


__all__ = ["ENGINES", "RunSpec", "render", "launch_commands", "submit"]
