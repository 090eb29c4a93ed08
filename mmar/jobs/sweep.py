"""`mmar sweep`: run an IsoFLOP grid here, one run after another, or print it for a pod
(`--dry-run`). The grid, the run configs and the fits are mmar/scaling/.

Layout of the sweep's workdir:

    WORKDIR/tokenizer/            the image tokenizer, trained once for every run
    WORKDIR/text_tokenizer/       the text tokenizer (bpe / unigram only), trained once too
    WORKDIR/<run>/                an ordinary mmar workdir per run: tokenizer -> ../tokenizer
                                  (a symlink; a copy where links are not possible; the same
                                  for text_tokenizer),
                                  decoder/ (checkpoints, metrics, summary.json),
                                  samples/, report.json, run.json (the run's plan)
    WORKDIR/results.json          one record per finished run: plan + evaluation
    WORKDIR/scaling/              fits (fit.json), plots (PNG) and report.md

Sharing the tokenizer is what keeps the mini sweep within minutes, and it keeps the runs
comparable: every decoder sees the same codes. Resuming is rerunning the same command: a
run whose report.json is there is skipped, one whose decoder finished is only evaluated, and
a killed one resumes from its newest checkpoint (the trainer's exact resume).
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import time

from absl import app

from mmar import config as config_lib
from mmar import rundir
from mmar import vocab as vocab_lib
from mmar.jobs import eval as eval_job
from mmar.jobs import text_tokenizer_train, tokenizer_train
from mmar.jobs import train as train_job
from mmar.scaling import report as scaling_report
from mmar.scaling import sweep

RESULTS = "results.json"


def main(cfg, workdir, *, dry_run: bool, config_spec: str, extra_args=(), log=print) -> None:
    """`mmar sweep`: runs the grid here, or with `dry_run` prints one command per run (notes
    on stderr). A bad `sweep` section is a usage error."""
    try:
        sweep.validate(cfg)
    except sweep.SweepConfigError as e:
        raise app.UsageError(f"bad config: {e}") from None
    if dry_run:
        emit(cfg, workdir, config_spec, extra_args,
             log=lambda m: print(m, file=sys.stderr, flush=True))
        return
    t0 = time.perf_counter()
    run_local(cfg, workdir, log=log)
    log(f"[sweep] done in {time.perf_counter() - t0:.0f}s; report in "
        f"{workdir}/scaling/report.md")


def shared(cfg) -> tuple[str, ...]:
    """The sweep's shared stages: the image tokenizer, and the text tokenizer it trains."""
    if vocab_lib.text_kind(cfg.vocab) in vocab_lib.TRAINED_KINDS:
        return rundir.TEXT_TOKENIZER, rundir.TOKENIZER
    return (rundir.TOKENIZER,)


def link_tokenizer(run_dir: pathlib.Path, names=(rundir.TOKENIZER,)) -> None:
    """run_dir/tokenizer -> ../tokenizer for each of `names` (relative, so the sweep
    directory can move)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        link = run_dir / name
        if link.is_symlink() or link.exists():
            continue
        try:
            os.symlink(os.path.join("..", name), link, target_is_directory=True)
        except OSError:  # no symlinks here (some mounted file systems): copy
            shutil.copytree(run_dir.parent / name, link)


def prepare(workdir: pathlib.Path, run: sweep.Run, names=(rundir.TOKENIZER,)) -> pathlib.Path:
    run_dir = workdir / run.name
    link_tokenizer(run_dir, names)
    (run_dir / "run.json").write_text(json.dumps(run.record(), indent=1))
    return run_dir


def state(run_dir: pathlib.Path, run: sweep.Run) -> str:
    """'done' (evaluated), 'trained' (decoder finished, not evaluated) or 'todo'."""
    report = rundir.read_json(run_dir / rundir.REPORT)
    if report and report.get("decoder_step") == run.steps:
        return "done"
    summary = rundir.summary(run_dir, rundir.DECODER)
    if summary and summary.get("steps") == run.steps:
        return "trained"
    return "todo"


def _tokenizer_done(cfg, workdir: pathlib.Path) -> bool:
    summary = rundir.summary(workdir, rundir.TOKENIZER)
    return bool(summary) and summary.get("steps") == cfg.image_tokenizer.train.steps


def result_record(run: sweep.Run, run_dir: pathlib.Path) -> dict:
    report = rundir.read_json(run_dir / rundir.REPORT) or {}
    summary = rundir.summary(run_dir, rundir.DECODER) or {}
    return {**run.record(), **report, "decoder_seconds": summary.get("train_seconds"),
            "train_loss": summary.get("nll")}


def run_local(cfg, workdir, log=print) -> list[dict]:
    """Trains and evaluates every run of the grid that is not done yet; then fits and writes
    the report. Returns the result records."""
    workdir = pathlib.Path(workdir)
    runs, notes = sweep.plan(cfg)
    for note in notes:
        log(f"[sweep] {note}")
    log(f"[sweep] {len(runs)} runs, {len(cfg.sweep.budgets)} budgets, in {workdir}")
    workdir.mkdir(parents=True, exist_ok=True)
    if rundir.TEXT_TOKENIZER in shared(cfg):
        text_tokenizer_train.run(cfg, workdir, log=log)   # keeps a finished one
    if _tokenizer_done(cfg, workdir):
        log(f"[sweep] tokenizer already trained in {workdir / 'tokenizer'}")
    else:
        tokenizer_train.run(cfg, workdir, log=log)
    t_sweep = time.perf_counter()
    for i, run in enumerate(runs, 1):
        run_dir = prepare(workdir, run, shared(cfg))
        status = state(run_dir, run)
        head = (f"[sweep] run {i}/{len(runs)} {run.name}: N={run.params:,} "
                f"(non-embedding {run.non_embedding_params:,}), D={run.tokens:,} tokens, "
                f"{run.steps} steps, C={run.flops:.3g}")
        if status == "done":
            log(f"{head}: done, skipped")
            continue
        log(head)
        run_cfg = config_lib.validate(sweep.run_config(cfg, run))
        t0 = time.perf_counter()
        if status == "todo":
            train_job.run(run_cfg, run_dir, log=log)
        eval_job.run(run_cfg, run_dir, log=log)
        log(f"[sweep] {run.name} finished in {time.perf_counter() - t0:.0f}s")
    log(f"[sweep] all runs done ({time.perf_counter() - t_sweep:.0f}s in this call)")
    results = [result_record(run, workdir / run.name) for run in runs]
    (workdir / RESULTS).write_text(json.dumps(results, indent=1))
    scaling_report.write(cfg, results, workdir / "scaling", log=log)
    return results


def emit(cfg, workdir, config_spec: str, extra_args=(), log=print) -> list[str]:
    """The dry run: prints one command per line (tokenizer first, then each run) for a pod
    launcher to wrap, and prepares the run directories on a local or shared file system
    (the tokenizer link dangles until `tokenizer-train` has run). Nothing is trained.

    Hook for the pod launchers (mmar/launch/, in progress): where the lines are printed
    below, a `--launcher=NAME` flag would hand `lines[0]` to the launcher, wait for it, then
    submit `lines[1:]` (independent runs, in parallel); the lines stay plain `mmar`
    commands so any launcher can wrap them."""
    runs, notes = sweep.plan(cfg)
    lines = sweep.command_lines(config_spec, str(workdir), runs, extra_args,
                                text_tokenizer=rundir.TEXT_TOKENIZER in shared(cfg))
    if "://" not in str(workdir):
        for run in runs:
            prepare(pathlib.Path(workdir), run, shared(cfg))
    else:  # object stores have no links: each run needs a copy of WORKDIR/tokenizer
        notes.append(f"{workdir} is remote: copy {workdir}/" + " and ".join(shared(cfg))
                     + " into each run directory after they are trained (no links on "
                     "object stores)")
    for note in notes:
        log(f"# {note}")
    for line in lines:
        print(line, flush=True)
    return lines
