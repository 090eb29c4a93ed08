"""`mmar <command> --config=configs/FILE.py:PRESET [--config.a.b=value ...] --workdir=DIR`.

Each stage reads the previous stage's output from the work directory (mmar/rundir.py), so any
stage can be rerun alone: tokenizer-train -> train -> sample / eval. `demo` runs them all.
Each command is a job module in mmar/jobs/.
"""
from __future__ import annotations

import math
import os
import sys
import time
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from mmar import config as config_lib
from mmar import errors, schema
from mmar.commands import COMMANDS, PATH_COMMANDS, command_help, usage

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config, e.g. configs/t2i_shapes.py:tiny", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (created if missing)")
_DRY_RUN = flags.DEFINE_bool(
    "dry-run", False, "train: compile the step for the config's mesh and print per-device "
    "memory, parameters, FLOPs/token and shardings; allocates nothing (docs/training.md)")
_PRINT_CONFIG = flags.DEFINE_bool(
    "print-config", False, "print the effective config (every field, defaults filled in, "
    "derived fields set) and exit; runs nothing")
_DRY_RUN_DEVICES = flags.DEFINE_integer(
    "dry_run_devices", 0, "device count to compile for with --dry-run (fake CPU devices); "
    "0 = the product of the mesh sizes")
# Multi-host (docs/training.md): on pods JAX detects these itself with --distributed.
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "join the process group (TPU pods, GKE, SLURM: detected)")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "HOST:PORT of process 0, for hand-started processes")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in the group")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index")
_VERBOSE = flags.DEFINE_bool("verbose", False, "print tracebacks for anticipated errors too "
                             "(also MMAR_VERBOSE=1); unanticipated ones always have one")


def _log(msg: str) -> None:
    print(msg, flush=True)


# The jobs are imported inside the functions below, when their command runs, and only here:
# `mmar --help` and the config check must not load JAX and TensorFlow. This is the one place
# in mmar that imports mmar modules inside functions (tests/test_layering.py allows it).

def _job(command: str):
    """The `run(cfg, workdir, log)` of a config command's job module (mmar/jobs/)."""
    if command == "tokenizer-train":
        from mmar.jobs import tokenizer_train as job
    elif command == "text-tokenizer-train":
        from mmar.jobs import text_tokenizer_train as job
    elif command == "pretokenize":
        from mmar.jobs import pretokenize as job
    elif command == "train":
        from mmar.jobs import train as job
    elif command == "sample":
        from mmar.jobs import sample as job
    elif command == "eval":
        from mmar.jobs import eval as job
    elif command == "demo":
        from mmar.jobs import demo as job
    else:
        raise app.UsageError(f"{command}: not a config command")
    return job.run


def _run(command: str, quiet_libraries: bool) -> None:
    """The command, with an anticipated error (mmar/errors.py) as one line on stderr and
    exit status 1; its traceback only with --verbose. Any other exception keeps its
    traceback: it is a bug."""
    try:
        _run_command(command, quiet_libraries)
    except errors.UserError as e:
        if _VERBOSE.value or os.environ.get("MMAR_VERBOSE", "") not in ("", "0"):
            traceback.print_exc()
        print(f"mmar {command}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


def _check_workdir(workdir: str) -> None:
    """A local run directory must be writable before hours of work go into it."""
    if "://" in workdir:
        return
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".mmar-write-check-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise errors.WorkdirError(f"--workdir={workdir} cannot be written ({e.strerror or e}); "
                                  "give a writable directory") from e


def _run_command(command: str, quiet_libraries: bool) -> None:
    if quiet_libraries:  # Orbax and TFDS log every file they touch at INFO
        logging.set_verbosity(logging.ERROR)
    if _CONFIG.value is None or not (_WORKDIR.value or _DRY_RUN.value or _PRINT_CONFIG.value):
        raise app.UsageError("--config and --workdir are required")
    cfg = config_lib.validate(_CONFIG.value)   # ConfigError: one line naming the field
    if _PRINT_CONFIG.value:
        print(schema.render(cfg), end="")
        return
    if command == "sweep":
        return _sweep(cfg)
    if _DRY_RUN.value:
        if command != "train":
            raise app.UsageError("--dry-run goes with `mmar train` or `mmar sweep`")
        return _dry_run(cfg)
    from mmar.jobs import common
    try:
        common.join_process_group(
            auto=_DISTRIBUTED.value, coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    workdir = _WORKDIR.value
    _check_workdir(workdir)
    run = _job(command)
    t0 = time.perf_counter()
    run(cfg, workdir, log=_log)
    _log(f"[{command}] done in {time.perf_counter() - t0:.0f}s; outputs in {workdir}")


def _sweep(cfg) -> None:
    """`mmar sweep`: runs the grid here, or with --dry-run prints one command per run."""
    if not _WORKDIR.value:
        raise app.UsageError("mmar sweep needs --workdir (the sweep's directory)")
    flag = flags.FLAGS["config"]
    extra = [f"--config.{k}={v}" for k, v in config_flags.get_override_values(flag).items()]
    from mmar.jobs import sweep
    sweep.main(cfg, _WORKDIR.value, dry_run=_DRY_RUN.value,
               config_spec=config_flags.get_config_filename(flag), extra_args=extra, log=_log)


def _dry_run(cfg) -> None:
    """`mmar train --dry-run`: fakes the mesh's device count on the CPU, then compiles."""
    sizes = [cfg.mesh[a] for a in ("data", "fsdp", "tensor", "dcn_data", "dcn_fsdp",
                                   "dcn_tensor")]
    n = _DRY_RUN_DEVICES.value or (math.prod(sizes) if -1 not in sizes else 0)
    if n <= 0:
        raise app.UsageError("--dry-run: the mesh has a -1 axis; give --dry_run_devices=N")
    # Fake CPU devices, set before JAX starts its backend (the job's import starts nothing).
    flags_env = [f for f in os.environ.get("XLA_FLAGS", "").split()
                 if "host_platform_device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join(flags_env + [
        f"--xla_force_host_platform_device_count={n}"])
    from mmar.jobs import train
    train.dry_run(cfg, n, _WORKDIR.value, log=_log)


def _unknown_override(args) -> str:
    """The error for the first `--config.a.b=value` that names no config field ('' if none):
    one line naming it and the closest fields (or its new name, for a renamed field), where
    ml_collections would raise a chain of KeyError/AttributeError tracebacks."""
    for arg in args:
        if not arg.startswith("--config.") or "=" not in arg:
            continue
        dotted = arg[len("--config."):].split("=", 1)[0]
        if dotted.split(".")[0] in schema.OPTIONAL_SECTIONS or schema.is_field(dotted):
            continue
        if dotted in schema.RENAMED:
            return (f"--config.{dotted}: renamed; use --config."
                    f"{' / --config.'.join(schema.RENAMED[dotted])}")
        return str(schema.unknown_field_error(dotted))
    return ""


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command = argv[1]
    if command not in COMMANDS:
        print(f"mmar: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if command not in PATH_COMMANDS + ("launch",) and any(
            a in ("-h", "--help", "--helpfull", "help") for a in argv[2:]):
        print(command_help(command))
        return 0
    if command in PATH_COMMANDS:
        from mmar.jobs import export
        return export.main(command, argv[2:])
    if command == "launch":  # its own flags, then `-- <mmar command>` (mmar/jobs/launch.py)
        from mmar.jobs import launch
        return launch.main(argv[2:])
    bad = _unknown_override(argv[2:])
    if bad:
        print(f"mmar {command}: bad config: {bad}", file=sys.stderr)
        return 2
    quiet = not any(a.startswith(("--verbosity", "-v")) for a in argv[2:])
    app.run(lambda _: _run(command, quiet), argv=[f"mmar {command}"] + argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
