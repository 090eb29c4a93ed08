"""`mmar launch {tpu,gke,slurm,local} [options] [--dry-run] -- COMMAND --config=... --workdir=...`

Everything after `--` is the mmar command every host runs, as one would type it on one
machine; the launcher adds how the processes find each other. `--dry-run` prints exactly
what would run or be submitted (docs/pods.md).
"""
from __future__ import annotations

import argparse
import sys

from mmar.launch import ENGINES, common, engine_module

HELP = {"tpu": "Cloud TPU VM / pod / multi-slice: a bash script of gcloud commands",
        "gke": "a JobSet manifest for GKE (TPU or GPU node pools), applied with kubectl",
        "slurm": "an sbatch script for a GPU cluster (requeue on preemption)",
        "local": "N processes on this machine with fake CPU devices"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmar launch", description=__doc__.split("\n\n")[1],
        usage="mmar launch {tpu,gke,slurm,local} [options] [--dry-run] -- train "
              "--config=FILE.py:PRESET --workdir=DIR [--config.a.b=value ...]")
    sub = p.add_subparsers(dest="engine", required=True)
    for engine in ENGINES:
        s = sub.add_parser(engine, help=HELP[engine], description=HELP[engine],
                           usage=f"mmar launch {engine} [options] [--dry-run] -- "
                                 "COMMAND --config=FILE.py:PRESET --workdir=DIR [...]")
        s.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                       help="print what would run or be submitted; start nothing")
        engine_module(engine).add_arguments(s)
    return p


def main(argv: list[str]) -> int:
    own, run = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, [])
    p = parser()
    args = p.parse_args(own)
    module = engine_module(args.engine)
    try:
        spec = common.RunSpec.from_args(run)
        opts = module.options_from(args)
        extra = {"out": args.out} if getattr(args, "out", None) else {}
        return module.submit(spec, opts, args.dry_run, **extra)
    except ValueError as e:
        print(f"mmar launch {args.engine}: {e}", file=sys.stderr)
        return 2

