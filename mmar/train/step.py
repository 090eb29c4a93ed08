"""The jitted train step: shardings in and out, gradient accumulation, the non-finite guard.

Batch semantics are one number: `train.batch_size` is the global batch in rows, split over
the data-like mesh axes (`data` x `fsdp`, ICI x DCN) and, when `train.grad_accum` > 1, into
that many microbatches run one after another inside the step. So

    train.batch_size = rows per device per microbatch x data-parallel devices x grad_accum

and nothing else changes with accumulation: the optimizer sees one update per step, the
learning rate schedule counts steps, and the loss, gradients and metrics are the microbatch
ones averaged with the task's `batch_weight` (the decoder's: its scored tokens), which is
what the whole batch at once would give.

A task with a `trainable` filter (LoRA: only the adapters, mmar/model/lora.py) trains only
the Params it selects: the step differentiates with respect to those alone (the frozen
ones enter the loss as constants, so no gradient is computed for them), and the optimizer
state is built for them alone (`trained`), so frozen weights cost no Adam moments.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmar.config_fields import ConfigError
from mmar.parallel import rules
from mmar.train import state as state_lib


@dataclasses.dataclass
class Task:
    """The differences between models, as hooks for the one loop."""

    name: str
    make_module: Callable[[nnx.Rngs], nnx.Module]
    loss_fn: Callable[[nnx.Module, dict], tuple[jax.Array, dict]]   # -> (loss, metrics)
    batch_axes: dict[str, tuple]            # logical axis names of each batch array
    tokens_per_example: int = 0             # for tokens/s in the progress line
    flops_per_example: float = 0.0          # training FLOPs, for MFU
    # What the loss averages over in a batch (e.g. the sum of token loss weights), so that
    # accumulated microbatches weigh as they would in one big batch. None: equal weights.
    batch_weight: Callable[[dict], jax.Array] | None = None
    # The optimizer for a train-like config section; None: optim.make_optimizer (AdamW).
    # The image tokenizer uses it for parameter groups (buffers, discriminator).
    make_optimizer: Callable[[Any], optax.GradientTransformation] | None = None
    # An nnx filter of the Params that training updates (LoRA: lora.LoRAParam); None: all.
    # The others are frozen: no gradient, no optimizer state, saved as they are.
    trainable: Any = None


def trained_paths(task: Task, model_state) -> frozenset | None:
    """The flat param paths `task.trainable` selects; None when every Param trains."""
    return None if task.trainable is None else state_lib.paths(model_state, task.trainable)


def trained(task: Task, model_state, tree):
    """The part of a params-like tree (params, shardings, abstract params) that the optimizer
    holds state for: all of it, or the Params of `task.trainable`."""
    keep = trained_paths(task, model_state)
    return tree if keep is None else state_lib.select(tree, keep)


def batch_shardings(task: Task, mesh: Mesh, rule_table=rules.DEFAULT_RULES) -> dict:
    return {k: rules.named_sharding(mesh, names, rule_table)
            for k, names in task.batch_axes.items()}


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch(batch_size: int, grad_accum: int, mesh: Mesh, field="train.batch_size"):
    """The global batch must split evenly into microbatches and over data-parallel devices."""
    dp = data_parallel_size(mesh)
    if batch_size % (grad_accum * dp):
        raise ConfigError(f"{field}={batch_size}: must be a multiple of train.grad_accum="
                         f"{grad_accum} x {dp} data-parallel devices (mesh data x fsdp)")


def _microbatches(batch: dict, task: Task, accum: int, mesh: Mesh, rule_table) -> dict:
    """[B, ...] -> [accum, B/accum, ...], taking every accum-th row, so that each device's
    rows feed every microbatch and no microbatch waits on a few devices."""
    def split(name, x):
        micro = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
        names = (None, *task.batch_axes[name])
        return jax.lax.with_sharding_constraint(
            micro, rules.named_sharding(mesh, names, rule_table))
    return {k: split(k, v) for k, v in batch.items()}


def make_train_step(task: Task, model_state, tx, mesh, param_shardings, opt_shardings, *,
                    rule_table=rules.DEFAULT_RULES, grad_accum: int = 1):
    """jit(step)(params, opt_state, batch) -> (params, opt_state, metrics).

    A step whose loss or gradient norm is not finite returns the old params and optimizer
    state unchanged and reports `nonfinite` = 1; the caller decides to stop or go on.
    With `task.trainable`, `opt_state` is the state of `tx` over `trained(...)` params only;
    the gradient norm is theirs.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    paths = trained_paths(task, model_state)

    def split(p):   # -> (trained, frozen)
        if paths is None:
            return p, {}
        return state_lib.select(p, paths), state_lib.select(p, paths, inside=False)

    def join(trained_part, frozen):
        return trained_part if paths is None else state_lib.combine(trained_part, frozen)

    def loss_and_grads(params, batch, frozen):
        def loss_of(p):
            with rules.use_mesh(mesh, rule_table):
                return task.loss_fn(model_state.merge(join(p, frozen)), batch)
        return jax.value_and_grad(loss_of, has_aux=True)(params)

    def accumulated(params, batch, frozen):
        micro = _microbatches(batch, task, grad_accum, mesh, rule_table)

        def weighted(mb):
            w = task.batch_weight(mb) if task.batch_weight else jnp.float32(1.0)
            w = jnp.asarray(w, jnp.float32)
            return w, jax.tree.map(lambda x: w * x, loss_and_grads(params, mb, frozen))

        def body(total, mb):
            return jax.tree.map(jnp.add, total, weighted(mb)), None

        first = jax.tree.map(lambda x: x[0], micro)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                             jax.eval_shape(weighted, first))
        (weight, total), _ = jax.lax.scan(body, zeros, micro)
        return jax.tree.map(lambda x: x / jnp.maximum(weight, 1e-9), total)

    def step(all_params, opt_state, batch):
        params, frozen = split(all_params)
        if grad_accum > 1:
            (loss, metrics), grads = accumulated(params, batch, frozen)
        else:
            (loss, metrics), grads = loss_and_grads(params, batch, frozen)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        metrics = {**metrics, "loss": loss, "grad_norm": grad_norm,
                   "nonfinite": 1.0 - finite.astype(jnp.float32)}
        return join(keep(new_params, params), frozen), keep(new_opt, opt_state), metrics

    return jax.jit(step, in_shardings=(param_shardings, opt_shardings,
                                       batch_shardings(task, mesh, rule_table)),
                   out_shardings=(param_shardings, opt_shardings, replicated),
                   donate_argnums=(0, 1))


def global_batch(local: dict, shardings: dict) -> dict:
    """Process-local numpy arrays -> global jax.Arrays on the mesh."""
    return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v))
            for k, v in local.items() if k in shardings}


def optimizer_shardings(tx, abstract_params, param_shardings, mesh: Mesh):
    """Leaves that mirror a parameter (Adam's moments) take its sharding; counters and other
    non-parameter leaves are replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return optax.tree_map_params(tx, lambda _, s: s, jax.eval_shape(tx.init, abstract_params),
                                 param_shardings, transform_non_params=lambda _: replicated)


def init_optimizer(tx, params, mesh: Mesh):
    """Optimizer state created directly in its sharding on the mesh."""
    shardings = optimizer_shardings(tx, params, jax.tree.map(lambda x: x.sharding, params),
                                    mesh)
    return jax.jit(tx.init, out_shardings=shardings)(params), shardings
