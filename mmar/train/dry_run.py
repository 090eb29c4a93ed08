"""`mmar train --dry-run`: compile the decoder's train step for a target mesh, allocate nothing.

Parameters, optimizer state and the batch are `ShapeDtypeStruct`s carrying their shardings,
so `jax.jit(...).lower(...).compile()` runs the whole SPMD partitioner for the real mesh
while no array exists. The compiled program's memory analysis then gives the bytes each
device needs: its shard of the arguments (params, optimizer state, batch), the temporaries
(activations kept for the backward pass, gathered FSDP weights, ...) and the outputs (the
new params and optimizer state reuse the donated inputs' buffers). The arguments are also
split into params, optimizer state and batch from their shardings (each device's shard of
every leaf): with LoRA (`model.lora.rank` > 0) the optimizer state is the adapters' only.

On a machine without the target's chips the CLI re-creates the device count with fake CPU
devices (`--dry_run_devices`); XLA:CPU's memory figures then stand in for the
accelerator's (layouts and fusion differ somewhat; see docs/training.md).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

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


def device_bytes(tree) -> int:
    """Bytes of one device's shard of every leaf of a tree of sharded ShapeDtypeStructs (the
    largest shard, for a dimension that does not divide evenly)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(tree))


class StepInputs(NamedTuple):
    step: Any              # the jitted train step (not compiled yet)
    params: Any            # abstract params carrying their shardings
    opt_state: Any         # abstract optimizer state: of the trained params only
    batch: dict            # abstract global batch
    shardings: Any         # the params' shardings
    mesh: Any
    trained_params: int    # how many parameters train (all, or the LoRA adapters)


def abstract_step_inputs(cfg, devices=None) -> StepInputs:
    """The decoder's train step and its abstract inputs for `cfg` on `devices`, allocating
    nothing; the optimizer state is the trained params' (all of them, or the LoRA
    adapters)."""
    mesh, rule_table = mesh_lib.from_config(cfg.mesh, devices)
    task = decoder_task(cfg)
    model_state, params = state_lib.create_abstract(task.make_module, mesh, rule_table)
    tx = optim.make_optimizer(cfg.train)
    trained = step_lib.trained(task, model_state, params)
    opt_shardings = step_lib.optimizer_shardings(
        tx, trained, step_lib.trained(task, model_state, model_state.shardings), mesh)
    opt_state = _with_shardings(jax.eval_shape(tx.init, trained), opt_shardings)
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
    return StepInputs(step, params, opt_state, batch, model_state.shardings, mesh,
                      state_lib.param_count(trained))


def compile_decoder_step(cfg, devices=None):
    """-> (compiled step, abstract params, param shardings, mesh) for `cfg` on `devices`."""
    s = abstract_step_inputs(cfg, devices)
    return s.step.lower(s.params, s.opt_state, s.batch).compile(), s.params, s.shardings, s.mesh


def report(cfg, devices=None, log=print) -> dict:
    """Compiles for `cfg.mesh` on `devices` and logs the per-device memory; returns figures."""
    inputs = abstract_step_inputs(cfg, devices)
    params, shardings, mesh = inputs.params, inputs.shardings, inputs.mesh
    compiled = inputs.step.lower(params, inputs.opt_state, inputs.batch).compile()
    n_params = state_lib.param_count(params)
    per_token = flops.flops_per_token(cfg.model, cfg.data.seq_len)
    mem = compiled.memory_analysis()
    figures = {
        "devices": mesh.size, "mesh": dict(mesh.shape), "parameters": n_params,
        "trained_parameters": inputs.trained_params, "flops_per_token": per_token,
        "argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
        "alias_bytes": mem.alias_size_in_bytes, "temp_bytes": mem.temp_size_in_bytes,
        # Each device's shard of the params, the optimizer state and the batch, from their
        # shardings (together about argument_bytes).
        "param_bytes": device_bytes(params),
        "optimizer_bytes": device_bytes(inputs.opt_state),
        "batch_bytes": device_bytes(inputs.batch),
    }
    # Donated params/optimizer state alias their outputs: count those bytes once.
    figures["peak_bytes"] = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                             - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
    log(state_lib.parameter_overview(params, shardings))
    log(f"[dry-run] {n_params:,} parameters, {per_token / 1e9:.2f} GFLOPs/token (training), "
        f"mesh {dict(mesh.shape)} ({mesh.size} devices), strategy {cfg.mesh.strategy}, "
        f"global batch {cfg.train.batch_size} x {cfg.data.seq_len} tokens, "
        f"grad_accum {cfg.train.grad_accum}, remat {cfg.model.remat}, dtype {cfg.model.dtype}")
    lora_note = (f", LoRA rank {cfg.model.lora.rank}: {inputs.trained_params:,} trained "
                 "parameters (the rest frozen)" if cfg.model.lora.rank else "")
    log(f"[dry-run] per device: params {figures['param_bytes'] / GiB:.2f} GiB, optimizer "
        f"state {figures['optimizer_bytes'] / GiB:.2f} GiB, batch "
        f"{figures['batch_bytes'] / GiB:.2f} GiB{lora_note}")
    log(f"[dry-run] per device: arguments {mem.argument_size_in_bytes / GiB:.2f} GiB "
        f"(params + optimizer + batch), temporaries {mem.temp_size_in_bytes / GiB:.2f} GiB, "
        f"outputs {mem.output_size_in_bytes / GiB:.2f} GiB of which "
        f"{mem.alias_size_in_bytes / GiB:.2f} GiB reuse donated inputs; "
        f"peak about {figures['peak_bytes'] / GiB:.2f} GiB")
    return figures
