"""N processes on one machine, each with D fake CPU devices: a multi-host run without hosts.

Each process gets `XLA_FLAGS=--xla_force_host_platform_device_count=D` (and JAX_PLATFORMS=cpu,
so that the devices are the fake ones even where a GPU is present) and the explicit
process-group flags `--coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=I`,
exactly as on a hand-rolled cluster. Their output lines are prefixed with `[I] `. If one
process fails the others are stopped (a JAX process group cannot lose a member), and the
launcher exits with the failed process's status. The multi-host tests use this launcher.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence

from mmar.launch import common


@dataclasses.dataclass(frozen=True)
class Options:
    num_processes: int = 2
    devices_per_process: int = 4     # fake CPU devices; 0 = leave the platform alone
    port: int = 0                    # 0 = a free port
    python: str = sys.executable

    def __post_init__(self):
        if self.num_processes < 1:
            raise ValueError(f"local: --num_processes={self.num_processes} must be >= 1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(opts: Options) -> dict[str, str]:
    """The variables each process gets on top of the launcher's own environment."""
    if not opts.devices_per_process:
        return {}
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
            if "host_platform_device_count" not in f]
    flags = " ".join(kept + [f"--xla_force_host_platform_device_count="
                             f"{opts.devices_per_process}"])
    return {"XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}


def commands(spec: common.RunSpec, opts: Options, port: int) -> list[list[str]]:
    n = opts.num_processes
    return [common.mmar_argv(opts.python, spec, f"--coordinator_address=127.0.0.1:{port}",
                             f"--num_processes={n}", f"--process_id={i}") for i in range(n)]


def render(spec: common.RunSpec, opts: Options, port: int | None = None) -> str:
    """One line per process, with its environment, as a shell would run it."""
    port = port or opts.port or free_port()
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in environment(opts).items())
    return "\n".join(f"{env} {common.shell(argv)}".strip()
                     for argv in commands(spec, opts, port)) + "\n"


def _pump(index: int, stream, out, lock) -> None:
    for line in stream:
        with lock:
            out.write(f"[{index}] {line}")
            out.flush()


def supervise(argvs: Sequence[Sequence[str]], env: dict[str, str] | None = None,
              out=None, poll_s: float = 0.2) -> int:
    """Starts every command, prefixes its output lines with its index, waits for all; on
    the first failure stops the rest and returns that status (0 if all succeed)."""
    out = out or sys.stdout
    lock = threading.Lock()
    procs = [subprocess.Popen(list(a), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace")
             for a in argvs]
    pumps = [threading.Thread(target=_pump, args=(i, p.stdout, out, lock), daemon=True)
             for i, p in enumerate(procs)]
    for t in pumps:
        t.start()
    status = 0
    try:
        while True:
            codes = [p.poll() for p in procs]    # every one, so each exit is seen
            failed = [c for c in codes if c not in (None, 0)]
            if failed or None not in codes:
                status = failed[0] if failed else 0
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        status = 130
    finally:
        for i, p in enumerate(procs):
            if p.poll() is None:
                if status:
                    with lock:
                        out.write(f"[launch] stopping process {i}\n")
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for t in pumps:
            t.join(timeout=5)
    return status


def add_arguments(parser) -> None:
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=4,
                        help="fake CPU devices per process (0: the real platform)")
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0: free)")


def options_from(args) -> Options:
    return Options(num_processes=args.num_processes,
                   devices_per_process=args.devices_per_process, port=args.port)


def submit(spec: common.RunSpec, opts: Options, dry_run: bool) -> int:
    port = opts.port or free_port()
    if dry_run:
        common.emit(render(spec, opts, port))
        return 0
    env = dict(os.environ, **environment(opts))
    return supervise(commands(spec, opts, port), env=env)
