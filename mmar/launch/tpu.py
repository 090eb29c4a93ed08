"""Cloud TPU VMs and pods: create, copy the code, install, train on every worker, stop, delete.

Rendered as one bash script of `gcloud` commands (what `--dry-run` prints and what runs):

- one slice: `gcloud compute tpus tpu-vm create`; several slices (or `queued=True`):
  `gcloud compute tpus queued-resources create --node-count=N --node-prefix=NAME`, whose
  nodes are NAME-0 ... NAME-{N-1}. For multi-slice the TPU runtime gives every worker its
  MEGASCALE_* settings and `jax.distributed.initialize()` reads them, as MaxText does on
  queued resources; mmar only adds `mesh.dcn_data=N` (unless the run sets a dcn_* field).
- every host runs the same `mmar train ... --distributed` (`tpu-vm ssh --worker=all`),
  detached with nohup so that a dropped ssh connection does not end the run; its output
  goes to REMOTE_DIR/mmar.log on each worker, checkpoints and metrics to the gs://
  workdir.
- one stage per launch: `-- tokenizer-train ...` first, then (with `--steps=run`) `-- train ...`.
- `stop` sends SIGTERM, on which mmar saves a checkpoint and exits; the same `run` step
  later (on the same or a new TPU) resumes from it. `delete` removes the TPU or the queued
  resource.
"""
from __future__ import annotations

import dataclasses
import shlex

from mmar.launch import common

STEPS = ("create", "copy", "install", "run", "logs", "stop", "delete")
DEFAULT_STEPS = ("create", "copy", "install", "run")
# TPU software versions per generation (cloud.google.com/tpu/docs/runtimes).
RUNTIMES = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite",
            "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
LOG, PID = "mmar.log", "mmar.pid"


@dataclasses.dataclass(frozen=True)
class Options:
    name: str | None = None          # default: from the workdir's last part
    project: str | None = None       # default: gcloud's configured project
    zone: str | None = None          # default: gcloud's configured zone
    accelerator_type: str = "v5p-64"
    runtime_version: str | None = None   # default: RUNTIMES by generation
    num_slices: int = 1
    queued: bool = False             # a queued resource even for one slice
    spot: bool = False
    src: str = "."                   # the local checkout that is copied to the workers
    remote_dir: str = "mmar"         # on each worker, relative to the home directory
    steps: tuple[str, ...] = DEFAULT_STEPS

    def __post_init__(self):
        bad = [s for s in self.steps if s not in STEPS]
        if bad:
            raise ValueError(f"tpu: unknown step(s) {bad}; steps are {STEPS}")
        if self.num_slices < 1:
            raise ValueError(f"tpu: num_slices={self.num_slices} must be >= 1")


def runtime_version(opts: Options) -> str:
    if opts.runtime_version:
        return opts.runtime_version
    generation = opts.accelerator_type.rsplit("-", 1)[0]
    if generation not in RUNTIMES:
        raise ValueError(f"tpu: no default runtime for {opts.accelerator_type}; "
                         "give --runtime_version")
    return RUNTIMES[generation]


def _where(opts: Options) -> list[str]:
    return [f"--project={opts.project}"] * bool(opts.project) + \
        [f"--zone={opts.zone}"] * bool(opts.zone)


def nodes(name: str, opts: Options) -> list[str]:
    """The TPU VMs (slices) to ssh into."""
    if opts.num_slices > 1:
        return [f"{name}-{i}" for i in range(opts.num_slices)]
    return [name]


def _queued(opts: Options) -> bool:
    return opts.queued or opts.num_slices > 1


def _ssh(node: str, opts: Options, remote: str, worker: str = "all") -> str:
    return common.shell(["gcloud", "compute", "tpus", "tpu-vm", "ssh", node, *_where(opts),
                         f"--worker={worker}", f"--command={remote}"])


def _create(name: str, opts: Options) -> list[str]:
    spot = ["--spot"] if opts.spot else []
    if not _queued(opts):
        return [common.shell(["gcloud", "compute", "tpus", "tpu-vm", "create", name,
                              *_where(opts), f"--accelerator-type={opts.accelerator_type}",
                              f"--version={runtime_version(opts)}", *spot])]
    count = ([f"--node-count={opts.num_slices}", f"--node-prefix={name}"]
             if opts.num_slices > 1 else [f"--node-id={name}"])
    describe = common.shell(["gcloud", "compute", "tpus", "queued-resources", "describe",
                             name, *_where(opts), "--format=value(state.state)"])
    return [common.shell(["gcloud", "compute", "tpus", "queued-resources", "create", name,
                          *_where(opts), f"--accelerator-type={opts.accelerator_type}",
                          f"--runtime-version={runtime_version(opts)}", *count, *spot]),
            "# a queued resource waits for capacity: poll until it is ACTIVE",
            f'until [ "$({describe})" = ACTIVE ]; do sleep 60; done']


def _copy(name: str, opts: Options) -> list[str]:
    archive = f"/tmp/{name}-code.tgz"
    lines = [common.shell(["tar", "-czf", archive, "--exclude=.venv", "--exclude=.git",
                           "--exclude=runs", "--exclude=__pycache__", "-C", opts.src, "."])]
    remote = (f"rm -rf {shlex.quote(opts.remote_dir)} && mkdir -p "
              f"{shlex.quote(opts.remote_dir)} && tar -xzf {name}-code.tgz -C "
              f"{shlex.quote(opts.remote_dir)}")
    for node in nodes(name, opts):
        lines.append(common.shell(["gcloud", "compute", "tpus", "tpu-vm", "scp", archive,
                                   f"{node}:{name}-code.tgz", *_where(opts), "--worker=all"]))
        lines.append(_ssh(node, opts, remote))
    return lines


def _install(name: str, opts: Options) -> list[str]:
    """The pinned requirements plus the TPU build of the same jax, in REMOTE_DIR/.venv."""
    jax = common.pinned_jax()
    remote = (f"cd {shlex.quote(opts.remote_dir)} && python3 -m venv .venv && "
              ".venv/bin/pip install -q -r requirements.txt && "
              f".venv/bin/pip install -q {shlex.quote(f'jax[tpu]=={jax}')} && "
              ".venv/bin/pip install -q --no-deps -e .")
    return [_ssh(node, opts, remote) for node in nodes(name, opts)]


def train_command(spec: common.RunSpec, opts: Options) -> str:
    """What each worker runs, from REMOTE_DIR: the same command on every host."""
    spec = common.across(spec, opts.num_slices)
    argv = common.mmar_argv(".venv/bin/python", spec, "--distributed")
    return (f"cd {shlex.quote(opts.remote_dir)} && (nohup {common.shell(argv)} > {LOG} 2>&1 "
            f"< /dev/null & echo $! > {PID})")


def render(spec: common.RunSpec, opts: Options) -> str:
    """The bash script for `opts.steps`, in the order of STEPS."""
    common.require_bucket(spec, "tpu")
    name = common.job_name(spec, opts.name)
    kind = (f"{opts.num_slices} x {opts.accelerator_type}, queued resource" if _queued(opts)
            else opts.accelerator_type)
    lines = ["#!/usr/bin/env bash",
             f"# mmar launch tpu: {name} ({kind}): mmar {spec.command} -> {spec.workdir}",
             "set -euo pipefail"]
    delete = (["gcloud", "compute", "tpus", "queued-resources", "delete", name, *_where(opts),
               "--force", "--quiet"] if _queued(opts) else
              ["gcloud", "compute", "tpus", "tpu-vm", "delete", name, *_where(opts), "--quiet"])
    for step in (s for s in STEPS if s in opts.steps):
        lines.append(f"# {step}")
        if step == "create":
            lines += _create(name, opts)
        elif step == "copy":
            lines += _copy(name, opts)
        elif step == "install":
            lines += _install(name, opts)
        elif step == "run":
            lines += [_ssh(node, opts, train_command(spec, opts)) for node in nodes(name, opts)]
        elif step == "logs":   # the first host of the first slice logs for the run
            lines.append(_ssh(nodes(name, opts)[0], opts,
                              f"tail -n 100 {shlex.quote(opts.remote_dir)}/{LOG}", worker="0"))
        elif step == "stop":   # SIGTERM: mmar saves a checkpoint, then exits
            remote = (f'kill -TERM "$(cat {shlex.quote(opts.remote_dir)}/{PID})" '
                      "2>/dev/null || true")
            lines += [_ssh(node, opts, remote) for node in nodes(name, opts)]
        elif step == "delete":
            lines.append(common.shell(delete))
    return "\n".join(lines) + "\n"


def add_arguments(parser) -> None:
    parser.add_argument("--name", help="TPU / queued resource name (default: from workdir)")
    parser.add_argument("--project")
    parser.add_argument("--zone")
    parser.add_argument("--accelerator_type", default=Options.accelerator_type)
    parser.add_argument("--runtime_version")
    parser.add_argument("--num_slices", type=int, default=1)
    parser.add_argument("--queued", action="store_true",
                        help="create a queued resource even for one slice")
    parser.add_argument("--spot", action="store_true")
    parser.add_argument("--src", default=".", help="the checkout to copy (default: .)")
    parser.add_argument("--remote_dir", default=Options.remote_dir)
    parser.add_argument("--steps", default=",".join(DEFAULT_STEPS),
                        help=f"comma-separated, from {','.join(STEPS)}")


def options_from(args) -> Options:
    return Options(name=args.name, project=args.project, zone=args.zone,
                   accelerator_type=args.accelerator_type, runtime_version=args.runtime_version,
                   num_slices=args.num_slices, queued=args.queued, spot=args.spot,
                   src=args.src, remote_dir=args.remote_dir,
                   steps=tuple(s for s in args.steps.split(",") if s))


def submit(spec: common.RunSpec, opts: Options, dry_run: bool) -> int:
    script = render(spec, opts)
    if dry_run:
        common.emit(script)
        return 0
    return common.run_script(script)
