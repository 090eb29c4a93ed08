"""`mmar <command> --config=configs/FILE.py:PRESET [--config.a.b=value ...] --workdir=DIR`.

Each stage reads the previous stage's output from the work directory, so any stage can be
rerun alone: tokenizer-train -> train -> sample / eval. `demo` runs them all.
"""
from __future__ import annotations

import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = {
    "tokenizer-train": "train the image tokenizer (autoencoder + quantizer) -> WORKDIR/tokenizer",
    "pretokenize": "encode the train images once -> WORKDIR/tokens (token shards, "
                   "docs/data.md)",
    "train": "train the decoder on tokenized data -> WORKDIR/decoder",
    "sample": "text-to-image and image-to-text samples -> WORKDIR/samples",
    "eval": "judge samples, held-out loss, tokenizer reconstruction -> WORKDIR/report.json",
    "demo": "tokenizer-train, train and eval in one go (what `make demo` runs)",
    "sweep": "IsoFLOP grid of train + eval runs, fits and plots -> WORKDIR/scaling "
             "(--dry-run: print one command per run; docs/scaling.md)",
    "export": "CHECKPOINT --format hf --out DIR: transformers/safetensors (docs/export.md)",
    "import": "HF_DIR --out DIR: a transformers Llama/Qwen3 checkpoint -> mmar params",
    "launch": "{tpu,gke,slurm,local} [--dry-run] -- train --config=... --workdir=...: "
              "on a TPU pod, GKE, SLURM or N local processes (docs/pods.md)",
}
PATH_COMMANDS = ("export", "import")  # take paths (argparse), not --config/--workdir

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config, e.g. configs/t2i_shapes.py:tiny", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (created if missing)")
_DRY_RUN = flags.DEFINE_bool(
    "dry-run", False, "train: compile the step for the config's mesh and print per-device "
    "memory, parameters, FLOPs/token and shardings; allocates nothing (docs/training.md)")
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


def usage() -> str:
    lines = ["usage: mmar <command> --config=configs/FILE.py:PRESET --workdir=DIR "
             "[--config.section.field=value ...]", "", "commands:"]
    lines += [f"  {name:<16} {text}" for name, text in COMMANDS.items()]
    lines += ["", "`mmar <command> --help` lists every flag."]
    return "\n".join(lines)


def _log(msg: str) -> None:
    print(msg, flush=True)


def _run(command: str, quiet_libraries: bool) -> None:
    from mmar import config as config_lib
    if quiet_libraries:  # Orbax and TFDS log every file they touch at INFO
        logging.set_verbosity(logging.ERROR)
    if _CONFIG.value is None or not (_WORKDIR.value or _DRY_RUN.value):
        raise app.UsageError("--config and --workdir are required")
    try:
        cfg = config_lib.validate(_CONFIG.value)
    except config_lib.ConfigError as e:
        raise app.UsageError(f"bad config: {e}") from None
    if command == "sweep":
        return _sweep(cfg)
    if _DRY_RUN.value:
        if command != "train":
            raise app.UsageError("--dry-run goes with `mmar train` or `mmar sweep`")
        return _dry_run(cfg)
    from mmar.parallel import distributed
    try:
        distributed.initialize(auto=_DISTRIBUTED.value, coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    workdir = _WORKDIR.value
    # Imported here, not at the top, so that `mmar --help` does not load JAX and TensorFlow.
    from mmar.eval import report
    from mmar.sample import generate
    from mmar.tokenizers.image import train as tokenizer_train
    from mmar.train import decoder
    t0 = time.perf_counter()
    if command in ("tokenizer-train", "demo"):
        tokenizer_train.run(cfg, workdir, log=_log)
    if command == "pretokenize":
        from mmar.data import pretokenize
        _or_exit(lambda: pretokenize.run(cfg, workdir, log=_log))
    if command in ("train", "demo"):
        _or_exit(lambda: decoder.run(cfg, workdir, log=_log))
    if command == "sample":
        generate.run(cfg, workdir, log=_log)
    if command in ("eval", "demo"):
        report.run(cfg, workdir, log=_log)
    _log(f"[{command}] done in {time.perf_counter() - t0:.0f}s; outputs in {workdir}")


def _sweep(cfg) -> None:
    """`mmar sweep`: runs the grid here, or with --dry-run prints one command per run."""
    from mmar.scaling import runner, sweep
    if not _WORKDIR.value:
        raise app.UsageError("mmar sweep needs --workdir (the sweep's directory)")
    try:
        sweep.validate(cfg)
    except sweep.SweepConfigError as e:
        raise app.UsageError(f"bad config: {e}") from None
    if _DRY_RUN.value:
        flag = flags.FLAGS["config"]
        extra = [f"--config.{k}={v}" for k, v in
                 config_flags.get_override_values(flag).items()]
        runner.emit(cfg, _WORKDIR.value, config_flags.get_config_filename(flag), extra,
                    log=lambda m: print(m, file=sys.stderr, flush=True))
        return
    t0 = time.perf_counter()
    runner.run_local(cfg, _WORKDIR.value, log=_log)
    _log(f"[sweep] done in {time.perf_counter() - t0:.0f}s; report in "
         f"{_WORKDIR.value}/scaling/report.md")


def _or_exit(job) -> None:
    """Token shards that do not fit the run: one line on stderr and exit status 1."""
    from mmar.data.tokens import TokensError
    try:
        job()
    except TokensError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


def _dry_run(cfg) -> None:
    import json
    import math
    import os
    sizes = [cfg.mesh.get(a, 1) for a in ("data", "fsdp", "tensor", "dcn_data", "dcn_fsdp",
                                          "dcn_tensor")]
    n = _DRY_RUN_DEVICES.value or (math.prod(sizes) if -1 not in sizes else 0)
    if n <= 0:
        raise app.UsageError("--dry-run: the mesh has a -1 axis; give --dry_run_devices=N")
    # Fake CPU devices, set before JAX starts its backend (nothing has touched it yet).
    flags_env = [f for f in os.environ.get("XLA_FLAGS", "").split()
                 if "host_platform_device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join(flags_env + [
        f"--xla_force_host_platform_device_count={n}"])
    import jax
    jax.config.update("jax_platforms", "cpu")
    from mmar.train import dry_run
    figures = dry_run.report(cfg, jax.devices()[:n], log=_log)
    if _WORKDIR.value:
        os.makedirs(_WORKDIR.value, exist_ok=True)
        path = os.path.join(_WORKDIR.value, "dry_run.json")
        with open(path, "w") as f:
            json.dump(figures, f, indent=1)
        _log(f"[dry-run] figures in {path}")


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command = argv[1]
    if command not in COMMANDS:
        print(f"mmar: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if command in PATH_COMMANDS:
        from mmar.export import cli as export_cli  # lazily, like the stage modules
        return export_cli.main(command, argv[2:])
    if command == "launch":  # its own flags, then `-- <mmar command>` (mmar/launch/cli.py)
        from mmar.launch import cli as launch_cli
        return launch_cli.main(argv[2:])
    quiet = not any(a.startswith(("--verbosity", "-v")) for a in argv[2:])
    app.run(lambda _: _run(command, quiet), argv=[f"mmar {command}"] + argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
