"""Multi-host start-up: one `jax.distributed.initialize` per process, before any JAX work.

On TPU pods, GKE and SLURM JAX finds the coordinator, process count and index itself
(`--distributed`); elsewhere (several processes on one machine, a hand-rolled cluster)
they are given: `--coordinator_address=HOST:PORT --num_processes=N --process_id=I`.
After this every process sees the global device list; each loads its own part of the data
and the trainer assembles global batches (`jax.make_array_from_process_local_data`).
"""
from __future__ import annotations

import jax


def initialize(*, auto: bool = False, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Joins the process group when asked to; returns whether it did."""
    explicit = [coordinator_address, num_processes, process_id]
    if not auto and all(v is None for v in explicit):
        return False
    if not auto and any(v is None for v in explicit):
        raise ValueError("--coordinator_address, --num_processes and --process_id go together "
                         "(or pass --distributed to let JAX detect them on a pod or cluster)")
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id={process_id}: must be in [0, {num_processes})")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    return True
