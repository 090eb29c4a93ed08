"""`mmar demo` (what `make demo` runs): [text-tokenizer-train,] tokenizer-train, train and eval
in one go, in one run directory."""
from __future__ import annotations

from mmar import vocab as vocab_lib
from mmar.jobs import eval as eval_job
from mmar.jobs import text_tokenizer_train, tokenizer_train
from mmar.jobs import train as train_job


def run(cfg, workdir, log=print) -> dict:
    """The stages in order (the text tokenizer first when the config trains one: bpe /
    unigram); returns the eval report."""
    if vocab_lib.text_kind(cfg.vocab) in vocab_lib.TRAINED_KINDS:
        text_tokenizer_train.run(cfg, workdir, log=log)
    tokenizer_train.run(cfg, workdir, log=log)
    train_job.run(cfg, workdir, log=log)
    return eval_job.run(cfg, workdir, log=log)
