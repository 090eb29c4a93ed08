"""What every job's start shares: joining the process group. (Errors the user can fix are
`mmar.errors.UserError`s; the command line prints them as one line, mmar/cli.py.)"""
from __future__ import annotations

from mmar.parallel import distributed


def join_process_group(*, auto: bool, coordinator_address, num_processes, process_id) -> None:
    """Multi-host runs (docs/training.md): join the JAX process group before any job runs;
    ValueError for a bad combination of the flags."""
    distributed.initialize(auto=auto, coordinator_address=coordinator_address,
                           num_processes=num_processes, process_id=process_id)
