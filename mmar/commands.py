"""What each `mmar` command does, reads, writes and is configured by: the text of
`mmar --help` and `mmar <command> --help`.

Kept apart from mmar/cli.py so that the help is data (one entry per command, read by a test
that checks every command's help against its job) and `--help` loads neither JAX nor a job.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Command:
    summary: str                       # one line, for `mmar --help`
    about: str                         # what it does, for `mmar <command> --help`
    reads: str                         # what it needs in the workdir (or elsewhere)
    writes: str                        # what it leaves there
    sections: tuple[str, ...] = ()     # config sections it uses (config commands)
    flags: tuple[str, ...] = ()        # its own flags beyond the common ones
    usage: str = ""                    # set for commands that take paths, not a config


COMMON_FLAGS = (
    "--config=configs/FILE.py:PRESET   the experiment config (required)",
    "--workdir=DIR                     the run directory (created if missing; required)",
    "--config.SECTION.FIELD=VALUE      override one field (repeatable)",
    "--print-config                    print the effective config and exit",
    "--verbose                         tracebacks for anticipated errors too "
    "(or MMAR_VERBOSE=1)",
    "--distributed / --coordinator_address / --num_processes / --process_id   multi-host "
    "(docs/training.md)",
)

COMMANDS: dict[str, Command] = {
    "text-tokenizer-train": Command(
        "train the text tokenizer (bpe / unigram) -> WORKDIR/text_tokenizer",
        "Trains a byte-level BPE or unigram text tokenizer of vocab.text_vocab_size ids on "
        "the text of the configured sources, streamed, and measures bytes per token on "
        "held-out text; for vocab.text_tokenizer 'bytes' or a tokenizer.json path there is "
        "nothing to train. Keeps a finished one when rerun.",
        "the text of the sources of `data` (data.mixture; built-in ones are generated)",
        "WORKDIR/text_tokenizer/: tokenizer.json (Hugging Face tokenizers), summary.json",
        ("vocab", "data")),
    "tokenizer-train": Command(
        "train the image tokenizer (autoencoder + quantizer) -> WORKDIR/tokenizer",
        "Trains the image tokenizer on the train images of the config's data; resumes from "
        "its newest checkpoint when rerun.",
        "the data set of `data` (built-in sources are generated on first use)",
        "WORKDIR/tokenizer/: checkpoints/<step>/, metrics.jsonl, TensorBoard events, "
        "summary.json",
        ("data", "image_tokenizer", "mesh", "checkpoint", "seed")),
    "pretokenize": Command(
        "encode the train images once -> WORKDIR/tokens (token shards, docs/data.md)",
        "Encodes every configured source's train split with the run's image tokenizer into "
        "token shards that `mmar train` reads with data.pretokenized=True; resumable per "
        "shard, split across processes.",
        "WORKDIR/tokenizer/ (from `mmar tokenizer-train`), the sources of `data.mixture`",
        "WORKDIR/tokens/<source>/: token shards and their metadata",
        ("data", "image_tokenizer", "mesh")),
    "train": Command(
        "train the decoder on tokenized data -> WORKDIR/decoder",
        "Trains the decoder; resumes exactly (params, optimizer, data order) from the newest "
        "readable checkpoint when rerun; an unreadable newer checkpoint is moved to "
        "WORKDIR/decoder/checkpoints.unreadable/.",
        "WORKDIR/tokenizer/ (from `mmar tokenizer-train`), or WORKDIR/tokens/ with "
        "data.pretokenized=True (from `mmar pretokenize`)",
        "WORKDIR/decoder/: checkpoints/<step>/, metrics.jsonl, TensorBoard events, "
        "parameters.txt, summary.json",
        ("data", "vocab", "model", "train", "mesh", "checkpoint", "seed"),
        ("--dry-run                         compile the step for the mesh, print memory and "
         "FLOPs; allocate nothing",
         "--dry_run_devices=N               device count for --dry-run (fake CPU devices)")),
    "sample": Command(
        "text-to-image and image-to-text samples -> WORKDIR/samples",
        "Draws text-to-image and image-to-text samples (and the tasks of eval.tasks) on "
        "held-out data with the configured sampler, judged for `mmar eval`.",
        "WORKDIR/tokenizer/ and WORKDIR/decoder/ (from `mmar train`)",
        "WORKDIR/samples/: PNG grids and JSONL records",
        ("sample", "data", "vocab", "image_tokenizer", "model", "mesh", "eval", "seed")),
    "eval": Command(
        "judge samples, held-out loss, tokenizer reconstruction -> WORKDIR/report.json",
        "Judges the run on samples (drawn again here, as `mmar sample` draws them), held-out "
        "loss in both directions and the tokenizer's reconstructions.",
        "WORKDIR/tokenizer/ and WORKDIR/decoder/",
        "WORKDIR/report.json (and WORKDIR/samples/)",
        ("eval", "sample", "data", "vocab", "image_tokenizer", "model", "mesh", "seed")),
    "demo": Command(
        "tokenizer-train, train and eval in one go (what `make demo` runs)",
        "Runs tokenizer-train, train and eval in order in one run directory (first "
        "text-tokenizer-train when vocab.text_tokenizer is bpe / unigram); each stage "
        "resumes or keeps its finished output when rerun.",
        "nothing (the built-in data is generated)",
        "WORKDIR/tokenizer/, WORKDIR/decoder/, WORKDIR/samples/, WORKDIR/report.json",
        ("data", "vocab", "image_tokenizer", "model", "train", "sample", "eval", "mesh",
         "checkpoint", "seed")),
    "sweep": Command(
        "IsoFLOP grid of train + eval runs, fits and plots -> WORKDIR/scaling "
        "(--dry-run: print one command per run; docs/scaling.md)",
        "Trains one image tokenizer, then one decoder per point of the IsoFLOP grid, "
        "evaluates each, and fits and plots the results; rerunning resumes.",
        "the `sweep` section of a sweep config (configs/sweep_shapes.py)",
        "WORKDIR/tokenizer/, WORKDIR/<run>/ per run, WORKDIR/results.json, WORKDIR/scaling/",
        ("sweep", "data", "vocab", "image_tokenizer", "model", "train", "eval", "mesh"),
        ("--dry-run                         print one `mmar` command per run; run nothing",)),
    "export": Command(
        "CHECKPOINT --format hf --out DIR: transformers/safetensors (docs/export.md)",
        "", "", "", usage="mmar export CHECKPOINT --out DIR [--format hf|mmar] [...]"),
    "import": Command(
        "HF_DIR --out DIR: a transformers Llama/Qwen3/Chameleon/Emu3 checkpoint -> mmar params",
        "", "", "", usage="mmar import HF_DIR --out RUN_DIR [--config FILE.py:PRESET]"),
    "launch": Command(
        "{tpu,gke,slurm,local} [--dry-run] -- train --config=... --workdir=...: "
        "on a TPU pod, GKE, SLURM or N local processes (docs/pods.md)",
        "", "", "", usage="mmar launch {tpu,gke,slurm,local} [options] -- COMMAND ..."),
}
PATH_COMMANDS = ("export", "import")  # take paths (argparse), not --config/--workdir


def usage() -> str:
    """`mmar --help`."""
    lines = ["usage: mmar <command> --config=configs/FILE.py:PRESET --workdir=DIR "
             "[--config.section.field=value ...]", "", "commands:"]
    lines += [f"  {name:<16} {c.summary}" for name, c in COMMANDS.items()]
    lines += ["", "`mmar <command> --help` says what a command reads, writes and takes."]
    return "\n".join(lines)


def command_help(name: str) -> str:
    """`mmar <command> --help` of a config command (the others print argparse's help)."""
    c = COMMANDS[name]
    lines = [f"usage: mmar {name} --config=configs/FILE.py:PRESET --workdir=DIR "
             "[--config.SECTION.FIELD=VALUE ...]", "", c.about, "",
             f"reads:   {c.reads}", f"writes:  {c.writes}", "",
             "config sections: " + ", ".join(c.sections) +
             f"  (every field with its default: mmar {name} --config=... --print-config)",
             "", "flags:"]
    lines += [f"  {f}" for f in COMMON_FLAGS + c.flags]
    return "\n".join(lines)
