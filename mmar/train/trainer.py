"""The one training loop. Every model (decoder, image tokenizer) runs through `train`.

What differs between models is a `Task` (step.py): how to build the module, its loss, and
the logical axis names of each batch array. The loop itself owns: sharded init on the mesh,
the jitted step (step.py), resume from the newest good checkpoint (params, optimizer, data
iterator), periodic and final Orbax checkpoints, a save on SIGTERM, CLU metrics, a progress
line, a parameter table, an optional profiler trace, and the non-finite policy: a bad update
is never applied; the run stops (`train.on_nonfinite="stop"`) or skips the step ("skip").
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import time
from typing import Any, Iterator

import jax
import numpy as np
from etils import epath
from jax.sharding import Mesh

from mmar.errors import UserError, WorkdirError
from mmar.parallel import rules
from mmar.train import checkpoint as checkpoint_lib
from mmar.train import metrics as metrics_lib
from mmar.train import optim
from mmar.train import state as state_lib
from mmar.train import step as step_lib


class NonFiniteLossError(UserError, FloatingPointError):
    pass


@dataclasses.dataclass
class Result:
    model_state: state_lib.ModelState
    params: Any
    step: int
    metrics: dict
    seconds: float
    start_step: int = 0     # > 0 when resumed; == step when there was nothing left to train
    skipped_steps: int = 0  # non-finite steps skipped under train.on_nonfinite="skip"


class _Profile:
    """A profiler trace of steps [first, last] (1-based, inclusive) into <workdir>/profile."""

    def __init__(self, steps, workdir, log):
        self.first, self.last = (tuple(steps) + (0, 0))[:2] if steps else (0, 0)
        self.dir, self.log, self.on = epath.Path(workdir) / "profile", log, False

    def before(self, step: int):
        if self.first and step == self.first:
            jax.profiler.start_trace(str(self.dir))
            self.on = True

    def after(self, step: int, outputs):
        if self.on and step >= self.last:
            jax.block_until_ready(outputs)
            jax.profiler.stop_trace()
            self.on = False
            self.log(f"profiler trace of steps {self.first}-{self.last} in {self.dir}")

    def close(self):
        if self.on:
            jax.profiler.stop_trace()


def train(task: step_lib.Task, *, cfg, mesh: Mesh, data_iter: Iterator, workdir, config=None,
          seed: int = 0, checkpoint_every: int = 1000, max_to_keep: int = 2,
          peak_flops: float = 0.0, rule_table=rules.DEFAULT_RULES, log=print) -> Result:
    """Trains `task` for cfg.steps; `cfg` is a complete train-like section (mmar/schema.py:
    `train`, `image_tokenizer.train`: lr, warmup_steps, steps, log_every, grad_accum,
    on_nonfinite, profile_steps, ...).

    Resumes from the newest readable checkpoint in `<workdir>/checkpoints` (a corrupt one is
    skipped with a warning), and writes metrics to `<workdir>/` (TensorBoard events +
    metrics.jsonl, main process only).
    """
    workdir = epath.Path(workdir)
    grad_accum, on_nonfinite = int(cfg.grad_accum), cfg.on_nonfinite
    model_state, params = state_lib.create(task.make_module, mesh, seed, rule_table)
    tx = (task.make_optimizer or optim.make_optimizer)(cfg)
    # Optimizer state for the trained params only (LoRA: the adapters; the rest is frozen).
    opt_state, opt_shardings = step_lib.init_optimizer(
        tx, step_lib.trained(task, model_state, params), mesh)
    ckpt = checkpoint_lib.Checkpointer(workdir / "checkpoints", max_to_keep=max_to_keep)
    start = 0
    # A frozen-base task may start from a checkpoint of its base model (without the trained
    # params): those keep their initial values.
    fresh = step_lib.trained_paths(task, model_state) or frozenset()
    restored = ckpt.restore_newest_good(params=params, param_shardings=model_state.shardings,
                                        opt_state=opt_state, opt_shardings=opt_shardings,
                                        data_iter=data_iter, fresh=fresh, log=log)
    if restored is not None and "fresh" in restored:
        params, start = restored["params"], restored["step"]
        log(f"[{task.name}] initialised the frozen parameters from step {start} in "
            f"{ckpt.directory}, which has no {len(restored['fresh'])} trained ones (e.g. "
            f"{restored['fresh'][0]}): those start fresh, with a fresh optimizer and data "
            "order")
    elif restored is not None and "opt_state" not in restored:
        params, start = restored["params"], restored["step"]     # e.g. from `mmar import`
        log(f"[{task.name}] initialised from the parameters of step {start} in "
            f"{ckpt.directory} (a params-only checkpoint: fresh optimizer and data order)")
    elif restored is not None:
        params, opt_state, start = restored["params"], restored["opt_state"], restored["step"]
        log(f"[{task.name}] resumed from step {start} in {ckpt.directory}")
    if jax.process_index() == 0:
        (workdir / "parameters.txt").parent.mkdir(parents=True, exist_ok=True)
        (workdir / "parameters.txt").write_text(
            state_lib.parameter_overview(params, model_state.shardings))
    trained_note = "" if task.trainable is None else (
        f", {state_lib.param_count(step_lib.trained(task, model_state, params)):,} of them "
        "trained (the rest frozen)")
    log(f"[{task.name}] {state_lib.param_count(params):,} parameters{trained_note} (table in "
        f"{workdir / 'parameters.txt'}), mesh {dict(mesh.shape)}, steps {cfg.steps}, "
        f"grad_accum {grad_accum}")

    step_fn = step_lib.make_train_step(task, model_state, tx, mesh, model_state.shardings,
                              opt_shardings, rule_table=rule_table, grad_accum=grad_accum)
    shardings = step_lib.batch_shardings(task, mesh, rule_table)
    writer = metrics_lib.make_writer(workdir, is_main=jax.process_index() == 0)
    progress = metrics_lib.Progress(cfg.steps, start, task.name)
    profile = _Profile(cfg.profile_steps, workdir, log)
    stop = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda s, f: stop.update(signal=s))
    t0, step, last, skipped = time.perf_counter(), start, {}, 0
    pending = []
    try:
        while step < cfg.steps:
            batch = step_lib.global_batch(next(data_iter), shardings)
            if step == start:
                step_lib.check_batch(next(iter(batch.values())).shape[0], grad_accum, mesh)
            profile.before(step + 1)
            params, opt_state, metrics = step_fn(params, opt_state, batch)
            step += 1
            profile.after(step, metrics)
            pending.append((step, metrics))
            if step % cfg.log_every == 0 or step == cfg.steps or stop["signal"]:
                host = jax.device_get(pending)
                pending = []
                bad = [s for s, m in host if m["nonfinite"]]
                if bad and on_nonfinite == "stop":
                    raise NonFiniteLossError(
                        f"[{task.name}] non-finite loss or gradient at step {bad[0]}; the "
                        f"update was not applied and the last good state is in "
                        f"{ckpt.directory} (step {ckpt.latest_step()})")
                if bad:
                    skipped += len(bad)
                    log(f"[{task.name}] WARNING: skipped non-finite steps {bad} "
                        f"({skipped} so far, train.on_nonfinite='skip')")
                    if skipped > cfg.max_skipped_steps:
                        raise NonFiniteLossError(
                            f"[{task.name}] {skipped} non-finite steps skipped, more than "
                            f"train.max_skipped_steps={cfg.max_skipped_steps}")
                good = [m for s, m in host if not m["nonfinite"]]
                if good:
                    last = {k: float(np.mean([m[k] for m in good])) for k in good[0]
                            if k != "nonfinite"}
                    last["learning_rate"] = float(optim.learning_rate_schedule(cfg)(step - 1))
                    writer.write_scalars(step, last)
                    bsz = next(iter(batch.values())).shape[0]
                    log(progress.line(step, last,
                                      tokens_per_step=bsz * task.tokens_per_example,
                                      flops_per_step=bsz * task.flops_per_example,
                                      peak_flops=peak_flops))
            if step % checkpoint_every == 0 or step == cfg.steps or stop["signal"]:
                with _writing(ckpt, step):
                    ckpt.save(step, params=params, opt_state=opt_state, data_iter=data_iter,
                              config=config, force=True)
            if stop["signal"]:
                log(f"[{task.name}] SIGTERM: saved step {step}, stopping")
                break
    finally:
        signal.signal(signal.SIGTERM, previous)
        profile.close()
        with _writing(ckpt, step):
            ckpt.close()       # waits for the last async save: its write errors surface here
        writer.flush()
    return Result(model_state, params, step, last, time.perf_counter() - t0, start, skipped)


def _os_error(error: BaseException) -> OSError | None:
    """The OSError behind an exception (Orbax wraps those of its writer threads), if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def _writing(ckpt, step: int):
    """A checkpoint write that fails for the file system (full, read-only, gone) becomes one
    WorkdirError saying which checkpoint is the newest good one; other errors pass."""
    try:
        yield
    except Exception as e:
        os_error = _os_error(e)
        if os_error is None or isinstance(e, UserError):
            raise
        raise WorkdirError(
            f"cannot write checkpoint step {step} to {ckpt.directory} "
            f"({os_error.strerror or os_error}); the newest saved checkpoint is step "
            f"{ckpt.latest_step()}: free the space or fix the directory, then rerun the same "
            "command to resume from it") from e


def write_summary(path, result: Result, log=print) -> None:
    """`summary.json` of a run: steps, metrics and training seconds summed over resumes."""
    path = epath.Path(path)
    if result.step == result.start_step:
        log(f"already trained to step {result.step}; keeping {path}")
        return
    seconds = result.seconds
    if result.start_step and path.exists():
        seconds += json.loads(path.read_text()).get("train_seconds", 0.0)
    path.write_text(json.dumps({"steps": result.step, "train_seconds": seconds,
                                **result.metrics}, indent=1))


def load_params(task: step_lib.Task, mesh: Mesh, workdir, step: int | None = None,
                rule_table=rules.DEFAULT_RULES, log=print):
    """The trained params of `task` from `<workdir>/checkpoints` onto `mesh`: checkpoint
    `step`, or the newest that reads back (an unreadable newer one is skipped with a warning
    and left in place: reading never moves files)."""
    model_state, params = state_lib.create_abstract(task.make_module, mesh, rule_table)
    ckpt = checkpoint_lib.Checkpointer(epath.Path(workdir) / "checkpoints", async_save=False)
    targets = dict(params=params, param_shardings=model_state.shardings)
    try:
        restored = (ckpt.restore(step, **targets) if step is not None else
                    ckpt.restore_newest_good(move_aside=False, log=log, **targets))
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
    return model_state, restored["params"], restored["step"]
