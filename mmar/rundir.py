"""A run directory: where each job writes, and the one module that loads a trained run.

    WORKDIR/text_tokenizer/  `mmar text-tokenizer-train` (vocab.text_tokenizer bpe /
                           unigram): tokenizer.json, summary.json
    WORKDIR/tokenizer/     `mmar tokenizer-train`: checkpoints/<step>/, metrics.jsonl,
                           TensorBoard events, summary.json
    WORKDIR/tokens/        `mmar pretokenize`: token shards per source (mmar/data/tokens.py)
    WORKDIR/decoder/       `mmar train`: checkpoints/<step>/, metrics.jsonl, summary.json
    WORKDIR/samples/       `mmar sample`: images and JSONL records
    WORKDIR/report.json    `mmar eval`

Each stage reads the previous stage's output from here, so any stage can be rerun alone.
Every job that needs a trained tokenizer or decoder gets it from `load_tokenizer` /
`load` (parameters onto the config's mesh, the newest checkpoint), so the layout above is
known in one place.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

from etils import epath

from mmar import config as config_lib
from mmar import vocab as vocab_lib
from mmar.data import pretokenize, tokens
from mmar.errors import MissingStageError
from mmar.parallel import mesh as mesh_lib
from mmar.tokenizers import text as text_lib
from mmar.tokenizers.image import pretrained as pretrained_tokenizer
from mmar.tokenizers.image.runtime import ImageTokenizer
from mmar.tokenizers.text import model as text_model
from mmar.tokenizers.image.train import tokenizer_task
from mmar.train import trainer
from mmar.train.decoder import decoder_task
from mmar.vocab import Vocab

TOKENIZER = "tokenizer"
TEXT_TOKENIZER = text_lib.RUN_SUBDIR   # "text_tokenizer"
TOKENS = "tokens"
DECODER = "decoder"
SAMPLES = "samples"
REPORT = "report.json"
SUMMARY = "summary.json"     # in TOKENIZER/ and DECODER/: the trainer's final figures
MAKES = {TOKENIZER: "tokenizer-train", DECODER: "train", TOKENS: "pretokenize",
         TEXT_TOKENIZER: "text-tokenizer-train"}


# ---- stages --------------------------------------------------------------------------------

def checkpoint_steps(workdir, stage: str) -> list[int]:
    """The checkpoint steps of `WORKDIR/<stage>/checkpoints` (TOKENIZER or DECODER)."""
    ckpts = epath.Path(workdir) / stage / "checkpoints"
    if not ckpts.is_dir():
        return []
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


def require(workdir, stage: str) -> list[int]:
    """The stage's checkpoint steps; MissingStageError naming the command that makes them
    when there are none (a stage run before the one it needs)."""
    steps = checkpoint_steps(workdir, stage)
    if not steps:
        what = {TOKENIZER: "image tokenizer", DECODER: "decoder"}[stage]
        raise MissingStageError(
            f"no trained {what} in {epath.Path(workdir) / stage}: run `mmar {MAKES[stage]}` "
            "with the same --config and --workdir first")
    return steps


# ---- trained stages ------------------------------------------------------------------------

def load_tokenizer(cfg, workdir, devices=None) -> ImageTokenizer:
    """The image tokenizer of `WORKDIR/tokenizer`, newest checkpoint. `devices`: the mesh's
    devices (default all; `mmar pretokenize` gives each process its local ones, so that
    every host encodes its own images alone). An imported one (`image_tokenizer.pretrained`)
    is read from WORKDIR/tokenizer/pretrained/ (mmar/tokenizers/image/pretrained.py)."""
    if cfg.image_tokenizer.pretrained:
        directory = epath.Path(workdir) / TOKENIZER / pretrained_tokenizer.SUBDIR
        if not directory.is_dir():
            raise MissingStageError(f"image_tokenizer.pretrained="
                                    f"{cfg.image_tokenizer.pretrained!r}: no {directory} "
                                    "(`mmar import` writes it)")
        return pretrained_tokenizer.load(directory, cfg.image_tokenizer,
                                         mesh_lib.from_config(cfg.mesh, devices)[0])
    require(workdir, TOKENIZER)
    mesh, rule_table = mesh_lib.from_config(cfg.mesh, devices)
    model_state, params, step = trainer.load_params(
        tokenizer_task(cfg), mesh, epath.Path(workdir) / TOKENIZER, rule_table=rule_table)
    return ImageTokenizer(model_state, params, step, cfg.image_tokenizer)


def text_tokenizer_file(workdir) -> epath.Path:
    """Where `mmar text-tokenizer-train` writes the run's trained text tokenizer."""
    return epath.Path(workdir) / TEXT_TOKENIZER / text_lib.FILENAME


def load_text_tokenizer(cfg, workdir=None):
    """The run's text tokenizer (`vocab.text_tokenizer`): the byte tokenizer, the file a
    path names, or the bpe / unigram trained into WORKDIR/text_tokenizer (MissingStageError
    naming `mmar text-tokenizer-train` when it is not there). Its size is checked against
    the config's vocabulary."""
    kind = vocab_lib.text_kind(cfg.vocab)
    if kind == "bytes":
        return vocab_lib.ByteTokenizer()
    size = vocab_lib.text_size(cfg.vocab)
    if kind == "file":
        return text_model.load(vocab_lib.tokenizer_file(cfg.vocab), kind=kind, vocab_size=size)
    path = text_tokenizer_file(workdir) if workdir is not None else None
    if path is None or not path.exists():
        raise MissingStageError(
            f"vocab.text_tokenizer={kind!r}: no trained text tokenizer in "
            f"{epath.Path(workdir or 'WORKDIR') / TEXT_TOKENIZER}: run `mmar "
            f"{MAKES[TEXT_TOKENIZER]}` with the same --config and --workdir first")
    return text_model.load(path, kind=kind, vocab_size=size)


@dataclasses.dataclass
class Run:
    """A trained run, ready to sample or score: the validated config, its vocabulary, the
    image tokenizer, the decoder's graph (`model_state`), params and checkpoint step, and
    the text tokenizer (`text.encode(caption)` -> text ids, `text.decode(ids)`)."""
    cfg: Any
    vocab: Vocab
    tokenizer: ImageTokenizer
    model_state: Any
    params: Any
    step: int
    text: Any


def load(cfg, workdir) -> Run:
    """The tokenizer and the decoder of `workdir` (newest checkpoints) on the config's mesh."""
    require(workdir, DECODER)
    text = load_text_tokenizer(cfg, workdir)
    tokenizer = load_tokenizer(cfg, workdir)
    mesh, rule_table = mesh_lib.from_config(cfg.mesh)
    model_state, params, step = trainer.load_params(
        decoder_task(cfg), mesh, pathlib.Path(workdir) / DECODER, rule_table=rule_table)
    return Run(cfg, config_lib.make_vocab(cfg), tokenizer, model_state, params, step, text)


def read_json(path) -> Any:
    """A JSON file's content, or None when it is missing or unreadable (a stage not done)."""
    try:
        return json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path, obj) -> None:
    """JSON written whole or not at all (a temporary file renamed over it): a job killed while
    writing leaves the previous file, never half of one."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def summary(workdir, stage: str) -> dict | None:
    """`WORKDIR/<stage>/summary.json` (stage TOKENIZER or DECODER), None before it is done."""
    return read_json(pathlib.Path(workdir) / stage / SUMMARY)


def train_seconds(workdir) -> float:
    """Training time of the tokenizer and the decoder of a run, from their summaries."""
    return sum(((summary(workdir, stage) or {}).get("train_seconds", 0.0)
                for stage in (TOKENIZER, DECODER)), 0.0)


# ---- token shards --------------------------------------------------------------------------

def tokens_dir(workdir) -> str:
    return os.path.join(os.fspath(workdir), TOKENS)


def latest_tokenizer_step(workdir) -> int:
    """The newest tokenizer checkpoint step; MissingStageError when there is none."""
    return require(workdir, TOKENIZER)[-1]


def tokenizer_identity(cfg, workdir, step: int | None = None) -> dict:
    """What made (or would make) the run's codes (`tokens.tokenizer_identity`): its config and
    the hash of `WORKDIR/tokenizer`'s checkpoint `step` (default: the newest; an imported
    tokenizer: the files of WORKDIR/tokenizer/pretrained/), and the text tokenizer's identity (kind, size, sha256 of its tokenizer.json)."""
    if cfg.image_tokenizer.pretrained:   # an imported one: its files, step 0
        step = 0
        params = os.path.join(os.fspath(workdir), TOKENIZER, pretrained_tokenizer.SUBDIR)
    else:
        step = latest_tokenizer_step(workdir) if step is None else int(step)
        params = os.path.join(os.fspath(workdir), TOKENIZER, "checkpoints", str(step),
                              "params")
    identity = tokens.tokenizer_identity(cfg, params, step)
    identity["text_tokenizer"] = load_text_tokenizer(cfg, workdir).identity()
    return identity


def open_tokens(cfg, workdir, split: str = "train") -> dict:
    """{source name: TokenShardSource} of the run's token shards, checked against its
    tokenizer (TokensError when they were made by another)."""
    identity = tokenizer_identity(cfg, workdir)
    return {name: tokens.open_split(tokens_dir(workdir), name, split, identity=identity,
                                    data_cfg=cfg.data)
            for name in pretokenize.entries(cfg.data)}
