"""What every launcher shares: the run spec, quoting, names, and printing or running.

A launcher is a pure function from (RunSpec, engine options) to text: a bash script of
gcloud commands, a JobSet manifest, an sbatch script, or N command lines. `--dry-run` prints
that text and nothing else, so what the tests check is exactly what would run, and no test
needs cloud credentials. Only `run_script` / `pipe_to` start anything (bash, kubectl, sbatch).
Every argument that comes from the user is quoted with `shlex` (workdirs with spaces).
"""
from __future__ import annotations

import dataclasses
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Iterable, Sequence

# The stages that run on many hosts; export/import take paths and run on one machine.
MULTI_HOST_COMMANDS = ("tokenizer-train", "pretokenize", "train", "sample", "eval", "demo")
# Set by the launcher, never by the user: each engine finds the process group its own way.
PROCESS_FLAGS = ("--distributed", "--coordinator_address", "--num_processes", "--process_id")
ROOT = pathlib.Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run: `mmar COMMAND --config=CONFIG --workdir=WORKDIR --config.OVERRIDE ... FLAGS`.

    `config` is a spec string relative to the repository root (`configs/pretrain.py:1b`);
    every launcher starts mmar in the root of a copy of the repository. `overrides` are
    `section.field=value` strings.
    """
    config: str
    workdir: str
    overrides: tuple[str, ...] = ()
    command: str = "train"
    flags: tuple[str, ...] = ()

    def __post_init__(self):
        if self.command not in MULTI_HOST_COMMANDS:
            raise ValueError(f"mmar {self.command}: launchers run one of {MULTI_HOST_COMMANDS}")
        if not self.config or not self.workdir:
            raise ValueError("a run needs --config=FILE.py:PRESET and --workdir=DIR")
        for flag in self.flags:
            if flag.split("=")[0] in PROCESS_FLAGS:
                raise ValueError(f"{flag}: the launcher sets the process-group flags itself")
        object.__setattr__(self, "overrides", tuple(self.overrides))
        object.__setattr__(self, "flags", tuple(self.flags))

    @classmethod
    def from_args(cls, args: Sequence[str]) -> "RunSpec":
        """`train --config=... --workdir=... [--config.a.b=v ...]`, as after `--`."""
        if not args or args[0].startswith("-"):
            raise ValueError("after `--` comes the mmar command, e.g. "
                             "`-- train --config=configs/pretrain.py:1b --workdir=gs://B/run`")
        config = workdir = None
        overrides, flags = [], []
        for arg in args[1:]:
            if arg in ("--config", "--workdir"):
                raise ValueError(f"write {arg}=VALUE (one argument)")
            if arg.startswith("--config="):
                config = arg.split("=", 1)[1]
            elif arg.startswith("--workdir="):
                workdir = arg.split("=", 1)[1]
            elif arg.startswith("--config."):
                overrides.append(arg[len("--config."):])
            else:
                flags.append(arg)
        return cls(config=config, workdir=workdir, overrides=tuple(overrides),
                   command=args[0], flags=tuple(flags))

    @classmethod
    def coerce(cls, run) -> "RunSpec":
        """A RunSpec, or a (config, workdir[, overrides]) tuple as a sweep runner has them."""
        if isinstance(run, cls):
            return run
        config, workdir, *rest = run
        overrides = rest[0] if rest else ()
        if isinstance(overrides, dict):
            overrides = [f"{k}={v}" for k, v in overrides.items()]
        return cls(config=config, workdir=workdir, overrides=tuple(overrides))

    def args(self) -> list[str]:
        """The arguments after `mmar`, in the order they were given."""
        return [self.command, f"--config={self.config}", f"--workdir={self.workdir}",
                *(f"--config.{o}" for o in self.overrides), *self.flags]

    def with_overrides(self, *more: str) -> "RunSpec":
        return dataclasses.replace(self, overrides=self.overrides + tuple(more))

    def overrides_field(self, prefix: str) -> bool:
        return any(o.startswith(prefix) for o in self.overrides)


def across(spec: RunSpec, groups: int) -> RunSpec:
    """The data-parallel axis across slices (TPU multi-slice) or nodes: `mesh.dcn_data`,
    unless the run already sets a `mesh.dcn_*` field. Parameters stay inside a slice; only
    the gradient reduction crosses the slow network (docs/training.md, ICI x DCN)."""
    if groups > 1 and not spec.overrides_field("mesh.dcn_"):
        return spec.with_overrides(f"mesh.dcn_data={groups}")
    return spec


def require_bucket(spec: RunSpec, engine: str) -> None:
    """Hosts of a TPU pod or a GKE job share no disk: checkpoints must live in a bucket."""
    if not spec.workdir.startswith("gs://"):
        raise ValueError(f"{engine}: --workdir={spec.workdir} is not shared by the hosts; "
                         "use a gs://BUCKET/... workdir")


def job_name(spec: RunSpec, name: str | None, limit: int = 40) -> str:
    """The given name, or one made from the workdir's last part (so that each run of a
    sweep gets its own): lower-case letters, digits and '-', as GCE and Kubernetes want."""
    raw = name or spec.workdir.rstrip("/").rsplit("/", 1)[-1]
    clean = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")[:limit].strip("-")
    if not clean or not clean[0].isalpha():
        clean = ("mmar-" + clean)[:limit].strip("-")
    if name and clean != name:
        raise ValueError(f"name {name!r}: use lower-case letters, digits and '-', "
                         f"at most {limit} characters, starting with a letter")
    return clean


def shell(argv: Iterable[str]) -> str:
    return shlex.join(list(argv))


def mmar_argv(python: str, spec: RunSpec, *extra: str) -> list[str]:
    return [python, "-m", "mmar", *spec.args(), *extra]


def pinned_jax(requirements: pathlib.Path = ROOT / "requirements.txt") -> str:
    """The jax version pinned in requirements.txt (the TPU/GPU extra must match it)."""
    match = re.search(r"^jax==(\S+)$", requirements.read_text(), re.M)
    if not match:
        raise ValueError(f"{requirements}: no `jax==VERSION` pin")
    return match.group(1)


def run_script(script: str) -> int:
    """Runs a rendered bash script as printed by --dry-run."""
    return subprocess.run(["bash", "-c", script]).returncode


def pipe_to(argv: Sequence[str], text: str) -> int:
    """`kubectl apply -f -`, `sbatch`: the rendered text on stdin."""
    return subprocess.run(list(argv), input=text, text=True).returncode


def submit_text(text: str, argv: Sequence[str], *, dry_run: bool, out: str | None = None) -> int:
    """Writes the rendered manifest/script to `out` if given; prints it (dry run) or pipes it
    to `argv` (`kubectl apply -f -`, `sbatch`)."""
    if out:
        with open(out, "w") as f:
            f.write(text)
    if dry_run:
        emit(text)
        return 0
    return pipe_to(argv, text)


def emit(text: str, out=None) -> None:
    out = out or sys.stdout
    out.write(text if text.endswith("\n") else text + "\n")
    out.flush()
