"""`mmar text-tokenizer-train`: a byte-level BPE or unigram text tokenizer trained on the text
of the configured sources -> WORKDIR/text_tokenizer/tokenizer.json (Hugging Face `tokenizers`
format) and summary.json (bytes per token on held-out text, against 1.0 for bytes).

Runs when `vocab.text_tokenizer` is `bpe` or `unigram` (for `bytes` or a tokenizer.json path
there is nothing to train); the size is `vocab.text_vocab_size`. Rerun on a directory that
already holds the tokenizer this config asks for, it keeps it (the decoder's ids depend on
it); one of another kind or size is an error. The training: mmar/tokenizers/text/train.py,
the text: mmar/tokenizers/text/corpus.py.
"""
from __future__ import annotations

import json
import os

from etils import epath

from mmar import rundir
from mmar import vocab as vocab_lib
from mmar.errors import UserError
from mmar.tokenizers.text import corpus
from mmar.tokenizers.text import train as text_train


def _write(path: epath.Path, text: str) -> None:
    """Written whole or not at all (a killed job leaves no half file to load)."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(text, encoding="utf-8")
    tmp.rename(path)


def run(cfg, workdir, log=print) -> dict:
    kind = vocab_lib.text_kind(cfg.vocab)
    if kind not in vocab_lib.TRAINED_KINDS:
        log(f"[text-tokenizer] vocab.text_tokenizer={cfg.vocab.text_tokenizer!r}: nothing to "
            "train (bpe and unigram are trained)")
        return {}
    size = vocab_lib.text_size(cfg.vocab)
    path = rundir.text_tokenizer_file(workdir)
    summary_path = path.parent / rundir.SUMMARY
    if path.exists():
        done = rundir.read_json(summary_path) or {}
        if done.get("kind") != kind or done.get("vocab_size") != size:
            raise UserError(
                f"{path} holds a {done.get('kind')} tokenizer of {done.get('vocab_size')} ids; "
                f"this config asks for {kind} of {size} (vocab.text_tokenizer, "
                "vocab.text_vocab_size): use another --workdir, or delete "
                f"{path.parent} and every stage trained on it")
        log(f"[text-tokenizer] already trained: {path} ({kind}, {size} ids, "
            f"{done.get('bytes_per_token')} bytes per token held out)")
        return done
    json_text, summary = text_train.train(corpus.texts(cfg.data, log=log), kind, size, log=log)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(summary_path, json.dumps(summary, indent=1) + "\n")
    _write(path, json_text)   # last: its presence marks the stage done
    log(f"[text-tokenizer] {kind}, {size} ids, trained on {summary['train_texts']:,} texts "
        f"({summary['train_bytes'] / 1e6:.2f} MB) in {summary['seconds']:.1f}s: "
        f"{summary['bytes_per_token']} bytes per token on {summary['held_out_texts']:,} "
        f"held-out texts -> {path}")
    return summary
