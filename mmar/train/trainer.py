"""The one training loop. Every model (decoder, image tokenizer) runs through `train`.

What differs between models is a `Task`: how to build the module, its loss, and the logical
axis names of each batch array. The loop itself owns: sharded init on the mesh, the jitted
step with explicit in/out shardings, resume from the latest checkpoint (params, optimizer,
data iterator), periodic and final Orbax checkpoints, a save on SIGTERM, CLU metrics and a
progress line, and a hard stop on a non-finite loss (the bad update is never applied).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import signal
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmar.parallel import rules
from mmar.train import checkpoint as checkpoint_lib
from mmar.train import metrics as metrics_lib
from mmar.train import optim
from mmar.train import state as state_lib


class NonFiniteLossError(FloatingPointError):
    pass


@dataclasses.dataclass
class Task:
    """The differences between models, as hooks for the one loop."""

    name: str
    make_module: Callable[[nnx.Rngs], nnx.Module]
    loss_fn: Callable[[nnx.Module, dict], tuple[jax.Array, dict]]   # -> (loss, metrics)
    batch_axes: dict[str, tuple]            # logical axis names of each batch array
    tokens_per_example: int = 0             # for tokens/s in the progress line
    flops_per_example: float = 0.0          # training FLOPs, for MFU


@dataclasses.dataclass
class Result:
    model_state: state_lib.ModelState
    params: Any
    step: int
    metrics: dict
    seconds: float
    start_step: int = 0     # > 0 when resumed; == step when there was nothing left to train


def batch_shardings(task: Task, mesh: Mesh) -> dict:
    return {k: rules.named_sharding(mesh, names) for k, names in task.batch_axes.items()}


def make_train_step(task: Task, model_state, tx, mesh, param_shardings, opt_shardings):
    replicated = NamedSharding(mesh, PartitionSpec())

    def step(params, opt_state, batch):
        def loss_of(p):
            with rules.use_mesh(mesh):
                return task.loss_fn(model_state.merge(p), batch)

        (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        # A non-finite step keeps the old state; the host sees `nonfinite` and stops.
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        metrics = {**metrics, "loss": loss, "grad_norm": grad_norm,
                   "nonfinite": 1.0 - finite.astype(jnp.float32)}
        return keep(new_params, params), keep(new_opt, opt_state), metrics

    return jax.jit(step, in_shardings=(param_shardings, opt_shardings,
                                       batch_shardings(task, mesh)),
                   out_shardings=(param_shardings, opt_shardings, replicated),
                   donate_argnums=(0, 1))


def global_batch(local: dict, shardings: dict) -> dict:
    """Process-local numpy arrays -> global jax.Arrays on the mesh."""
    return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v))
            for k, v in local.items() if k in shardings}


def init_optimizer(tx, params, mesh: Mesh):
    """Optimizer state on the mesh: leaves that mirror a parameter (Adam's moments) take its
    sharding; counters and other non-parameter leaves are replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    shardings = optax.tree_map_params(tx, lambda _, s: s, jax.eval_shape(tx.init, params),
                                      param_shardings,
                                      transform_non_params=lambda _: replicated)
    return jax.jit(tx.init, out_shardings=shardings)(params), shardings


def train(task: Task, *, cfg, mesh: Mesh, data_iter: Iterator, workdir, config=None,
          seed: int = 0, checkpoint_every: int = 1000, max_to_keep: int = 2,
          peak_flops: float = 0.0, log=print) -> Result:
    """Trains `task` for cfg.steps (cfg: lr, warmup_steps, steps, log_every, ... ).

    Resumes from `<workdir>/checkpoints` when it holds a checkpoint, and writes metrics to
    `<workdir>/` (TensorBoard events + metrics.jsonl).
    """
    workdir = pathlib.Path(workdir)
    model_state, params = state_lib.create(task.make_module, mesh, seed)
    tx = optim.make_optimizer(cfg)
    opt_state, opt_shardings = init_optimizer(tx, params, mesh)
    ckpt = checkpoint_lib.Checkpointer(workdir / "checkpoints", max_to_keep=max_to_keep)
    start = 0
    if ckpt.latest_step() is not None:
        restored = ckpt.restore(params=params, param_shardings=model_state.shardings,
                                opt_state=opt_state, opt_shardings=opt_shardings,
                                data_iter=data_iter)
        params, opt_state, start = restored["params"], restored["opt_state"], restored["step"]
        log(f"[{task.name}] resumed from step {start} in {ckpt.directory}")
    n_params = state_lib.param_count(params)
    log(f"[{task.name}] {n_params:,} parameters, mesh {dict(mesh.shape)}, steps {cfg.steps}")

    step_fn = make_train_step(task, model_state, tx, mesh, model_state.shardings,
                              opt_shardings)
    shardings = batch_shardings(task, mesh)
    writer = metrics_lib.make_writer(workdir, is_main=jax.process_index() == 0)
    progress = metrics_lib.Progress(cfg.steps, start, task.name)
    stop = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda s, f: stop.update(signal=s))
    t0, step, last = time.perf_counter(), start, {}
    pending = []
    try:
        while step < cfg.steps:
            batch = global_batch(next(data_iter), shardings)
            params, opt_state, metrics = step_fn(params, opt_state, batch)
            step += 1
            pending.append(metrics)
            if step % cfg.log_every == 0 or step == cfg.steps or stop["signal"]:
                host = jax.device_get(pending)
                pending = []
                if any(m["nonfinite"] for m in host):
                    raise NonFiniteLossError(
                        f"[{task.name}] non-finite loss or gradient before step {step}; the "
                        f"last good state is in {ckpt.directory} (step {ckpt.latest_step()})")
                last = {k: float(np.mean([m[k] for m in host])) for k in host[0]
                        if k != "nonfinite"}
                last["learning_rate"] = float(optim.learning_rate_schedule(cfg)(step - 1))
                writer.write_scalars(step, last)
                bsz = next(iter(batch.values())).shape[0]
                log(progress.line(step, last, tokens_per_step=bsz * task.tokens_per_example,
                                  flops_per_step=bsz * task.flops_per_example,
                                  peak_flops=peak_flops))
            if step % checkpoint_every == 0 or step == cfg.steps or stop["signal"]:
                ckpt.save(step, params=params, opt_state=opt_state, data_iter=data_iter,
                          config=config, force=True)
            if stop["signal"]:
                log(f"[{task.name}] SIGTERM: saved step {step}, stopping")
                break
    finally:
        signal.signal(signal.SIGTERM, previous)
        ckpt.close()
        writer.flush()
    return Result(model_state, params, step, last, time.perf_counter() - t0, start)


def write_summary(path, result: Result, log=print) -> None:
    """`summary.json` of a run: steps, metrics and training seconds summed over resumes."""
    path = pathlib.Path(path)
    if result.step == result.start_step:
        log(f"already trained to step {result.step}; keeping {path}")
        return
    seconds = result.seconds
    if result.start_step and path.exists():
        seconds += json.loads(path.read_text()).get("train_seconds", 0.0)
    path.write_text(json.dumps({"steps": result.step, "train_seconds": seconds,
                                **result.metrics}, indent=1))


def load_params(task: Task, mesh: Mesh, workdir, step: int | None = None):
    """The trained params of `task` from `<workdir>/checkpoints` onto `mesh`."""
    model_state, params = state_lib.create_abstract(task.make_module, mesh)
    ckpt = checkpoint_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints", async_save=False)
    try:
        restored = ckpt.restore(step, params=params, param_shardings=model_state.shardings)
    finally:
        ckpt.close()
    return model_state, restored["params"], restored["step"]
