"""What every job's start and end share: joining the process group, and the one-line exit on
token shards that do not fit the run."""
from __future__ import annotations

import sys

from mmar.data.tokens import TokensError
from mmar.parallel import distributed


def join_process_group(*, auto: bool, coordinator_address, num_processes, process_id) -> None:
    """Multi-host runs (docs/training.md): join the JAX process group before any job runs;
    ValueError for a bad combination of the flags."""
    distributed.initialize(auto=auto, coordinator_address=coordinator_address,
                           num_processes=num_processes, process_id=process_id)


def or_exit(job) -> None:
    """Runs `job()`; token shards that do not fit the run: one line on stderr, exit status 1."""
    try:
        job()
    except TokensError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
