"""`mmar train --dry-run`: compile the decoder's train step for a target mesh, allocate nothing.

Parameters, optimizer state and the batch are `ShapeDtypeStruct`s carrying their shardings,
so `jax.jit(...).lower(...).compile()` runs the whole SPMD partitioner for the real mesh
while no array exists. The compiled program's memory analysis then gives the bytes each
device needs: its shard of the arguments (params, optimizer state, batch), the temporaries
(activations kept for the backward pass, gathered FSDP weights, ...) and the outputs (the
new params and optimizer state reuse the donated inputs' buffers).

On a machine without the target's chips the CLI re-creates the device count with fake CPU
devices (`--dry_run_devices`); XLA:CPU's memory figures then stand in for the
accelerator's (layouts and fusion differ somewhat; see docs/training.md).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mmar.model import flops
from mmar.parallel import mesh as mesh_lib
from mmar.train import optim
from mmar.train import state as state_lib
from mmar.train import step as step_lib
from mmar.train.decoder import decoder_task

GiB = 2 ** 30


def _with_shardings(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def compile_decoder_step(cfg, devices=None):
    """-> (compiled step, abstract params, param shardings, mesh) for `cfg` on `devices`."""
    mesh, rule_table = mesh_lib.from_config(cfg.mesh, devices)
    task = decoder_task(cfg)
    model_state, params = state_lib.create_abstract(task.make_module, mesh, rule_table)
    tx = optim.make_optimizer(cfg.train)
    opt_shardings = step_lib.optimizer_shardings(tx, params, model_state.shardings, mesh)
    opt_state = _with_shardings(jax.eval_shape(tx.init, params), opt_shardings)
    params = _with_shardings(params, model_state.shardings)
    grad_accum = cfg.train.grad_accum
    step_lib.check_batch(cfg.train.batch_size, grad_accum, mesh)
    batch_shardings = step_lib.batch_shardings(task, mesh, rule_table)
    shape = (cfg.train.batch_size, cfg.data.seq_len)
    dtypes = {"loss_weights": jnp.float32}
    batch = {k: jax.ShapeDtypeStruct(shape, dtypes.get(k, jnp.int32), sharding=s)
             for k, s in batch_shardings.items()}
    step = step_lib.make_train_step(task, model_state, tx, mesh, model_state.shardings,
                                    opt_shardings, rule_table=rule_table,
                                    grad_accum=grad_accum)
    return step.lower(params, opt_state, batch).compile(), params, model_state.shardings, mesh


def report(cfg, devices=None, log=print) -> dict:
    """Compiles for `cfg.mesh` on `devices` and logs the per-device memory; returns figures."""
    compiled, params, shardings, mesh = compile_decoder_step(cfg, devices)
    n_params = state_lib.param_count(params)
    per_token = flops.flops_per_token(cfg.model, cfg.data.seq_len)
    mem = compiled.memory_analysis()
    figures = {
        "devices": mesh.size, "mesh": dict(mesh.shape), "parameters": n_params,
        "flops_per_token": per_token,
        "argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
        "alias_bytes": mem.alias_size_in_bytes, "temp_bytes": mem.temp_size_in_bytes,
    }
    # Donated params/optimizer state alias their outputs: count those bytes once.
    figures["peak_bytes"] = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                             - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
    log(state_lib.parameter_overview(params, shardings))
    log(f"[dry-run] {n_params:,} parameters, {per_token / 1e9:.2f} GFLOPs/token (training), "
        f"mesh {dict(mesh.shape)} ({mesh.size} devices), strategy {cfg.mesh.strategy}, "
        f"global batch {cfg.train.batch_size} x {cfg.data.seq_len} tokens, "
        f"grad_accum {cfg.train.grad_accum}, remat {cfg.model.remat}, dtype {cfg.model.dtype}")
    log(f"[dry-run] per device: arguments {mem.argument_size_in_bytes / GiB:.2f} GiB "
        f"(params + optimizer + batch), temporaries {mem.temp_size_in_bytes / GiB:.2f} GiB, "
        f"outputs {mem.output_size_in_bytes / GiB:.2f} GiB of which "
        f"{mem.alias_size_in_bytes / GiB:.2f} GiB reuse donated inputs; "
        f"peak about {figures['peak_bytes'] / GiB:.2f} GiB")
    return figures
