"""SLURM GPU clusters: an sbatch script that runs `srun mmar train ... --distributed`.

JAX detects a SLURM job by itself (coordinator = first node, process count and index from
SLURM_NTASKS / SLURM_PROCID) and, by default, gives each process the GPU numbered by its
SLURM_LOCALID: one process per GPU (`per="gpu"`, JAX's usual layout). With `per="node"` one
process per node drives all its GPUs; the script then sets JAX_LOCAL_DEVICE_IDS=0,...,G-1
(else every process would see only GPU 0) and the launcher sets `mesh.dcn_data` to the node
count, so that parameters stay inside a node (NVLink) and only gradients cross nodes.

Preemption and time limits: `--requeue` puts a preempted job back in the queue, and SLURM's
SIGTERM reaches mmar, which saves a checkpoint. Shortly before the time limit
(`--signal=B:USR1@S`) the script sends SIGTERM to the run itself, waits for that checkpoint
and requeues the job. A requeued job runs the same script, and mmar resumes from the newest
checkpoint in the workdir (which must be on a shared filesystem or gs://). The log is
appended to (`--open-mode=append`), one file per job id.
"""
from __future__ import annotations

import dataclasses
import os
import shlex

from mmar.launch import common


@dataclasses.dataclass(frozen=True)
class Options:
    name: str | None = None          # job name (default: from the workdir's last part)
    nodes: int = 1
    gpus_per_node: int = 8
    per: str = "gpu"                 # one process per "gpu" or per "node"
    partition: str | None = None
    account: str | None = None
    time: str = "24:00:00"
    signal_seconds: int = 300        # USR1 this long before the time limit
    chdir: str = "."                 # the checkout on the shared filesystem
    python: str = ".venv/bin/python"     # relative to chdir, as `make install` makes it
    setup: tuple[str, ...] = ()      # shell lines run first (module load ..., source ...)

    def __post_init__(self):
        if self.per not in ("gpu", "node"):
            raise ValueError(f"slurm: --per={self.per}: gpu or node")
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise ValueError("slurm: --nodes and --gpus_per_node must be >= 1")


def render(spec: common.RunSpec, opts: Options) -> str:
    name = common.job_name(spec, opts.name)
    tasks = opts.gpus_per_node if opts.per == "gpu" else 1
    if opts.per == "node":
        spec = common.across(spec, opts.nodes)
    directives = [f"--job-name={name}", f"--nodes={opts.nodes}",
                  f"--ntasks-per-node={tasks}", f"--gpus-per-node={opts.gpus_per_node}",
                  f"--time={opts.time}", f"--output={name}-%j.out", "--open-mode=append",
                  "--requeue", f"--signal=B:USR1@{opts.signal_seconds}"]
    directives += [f"--partition={opts.partition}"] * bool(opts.partition)
    directives += [f"--account={opts.account}"] * bool(opts.account)
    for d in directives:
        if any(c.isspace() for c in d):
            raise ValueError(f"slurm: #SBATCH {d}: no spaces in SBATCH values")
    chdir = os.path.abspath(opts.chdir)
    run = common.shell(["srun", "--kill-on-bad-exit=1",
                        *common.mmar_argv(opts.python, spec, "--distributed")])
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives),
             f"# mmar launch slurm: {opts.nodes} node(s) x {opts.gpus_per_node} GPU(s), one "
             f"process per {opts.per}: mmar {spec.command} -> {spec.workdir}",
             "set -uo pipefail", f"cd {shlex.quote(chdir)}", *opts.setup]
    if opts.per == "node":
        lines.append("export JAX_LOCAL_DEVICE_IDS=" +
                     ",".join(map(str, range(opts.gpus_per_node))))
    lines += [
        'echo "[mmar] job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on '
        '${SLURM_JOB_NODELIST}"',
        "# Near the time limit: SIGTERM makes mmar save a checkpoint; then requeue, and the",
        "# requeued job resumes from it. On preemption SLURM's own SIGTERM does the saving.",
        "on_time_limit() {",
        '  echo "[mmar] time limit near: checkpoint, then requeue"',
        '  kill -TERM "$run_pid"; wait "$run_pid"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "  exit 0",
        "}",
        "trap on_time_limit USR1",
        "trap 'wait \"$run_pid\"' TERM",
        f"{run} &",
        "run_pid=$!",
        'wait "$run_pid"',
    ]
    return "\n".join(lines) + "\n"


def add_arguments(parser) -> None:
    d = Options.__dataclass_fields__
    parser.add_argument("--name", help="job name (default: from the workdir)")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus_per_node", type=int, default=d["gpus_per_node"].default)
    parser.add_argument("--per", choices=("gpu", "node"), default="gpu",
                        help="one process per GPU (JAX's default on SLURM) or per node")
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--time", default=d["time"].default)
    parser.add_argument("--signal_seconds", type=int, default=d["signal_seconds"].default)
    parser.add_argument("--chdir", default=".", help="the checkout (shared filesystem)")
    parser.add_argument("--python", default=d["python"].default)
    parser.add_argument("--setup", action="append", default=[],
                        help="a shell line to run first (repeatable)")
    parser.add_argument("--out", help="also write the script to this file")


def options_from(args) -> Options:
    return Options(name=args.name, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                   per=args.per, partition=args.partition, account=args.account,
                   time=args.time, signal_seconds=args.signal_seconds, chdir=args.chdir,
                   python=args.python, setup=tuple(args.setup))


def submit(spec: common.RunSpec, opts: Options, dry_run: bool, out: str | None = None) -> int:
    return common.submit_text(render(spec, opts), ["sbatch"], dry_run=dry_run, out=out)
