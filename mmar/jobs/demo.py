"""`mmar demo` (what `make demo` runs): tokenizer-train, train and eval in one go, in one
run directory."""
from __future__ import annotations

from mmar.jobs import eval as eval_job
from mmar.jobs import tokenizer_train
from mmar.jobs import train as train_job


def run(cfg, workdir, log=print) -> dict:
    """The three stages in order; returns the eval report."""
    tokenizer_train.run(cfg, workdir, log=log)
    train_job.run(cfg, workdir, log=log)
    return eval_job.run(cfg, workdir, log=log)
