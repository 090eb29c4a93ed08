"""Sharded model parameters as a pure pytree, and the way back to an NNX module.

The trainer works on pure nested dicts of arrays (what optax and Orbax handle best) and
rebuilds the NNX module inside the jitted step with `ModelState.merge`. Parameters are created
directly in their final sharding: `jax.jit(init, out_shardings=...)` never materialises a
full copy on one device.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
from flax import nnx
from jax.sharding import Mesh

from mmar.parallel import rules


@dataclasses.dataclass(frozen=True)
class ModelState:
    """How to turn pure parameter dicts back into a module (static under jit)."""

    graphdef: Any
    abstract: Any          # nnx.State of abstract Params (shapes, dtypes, logical names)
    shardings: Any         # pure dict of NamedSharding, the same tree as the params
    other: Any             # non-Param state (e.g. constants), usually empty

    def merge(self, params) -> nnx.Module:
        state = jax.tree.map(lambda v: v, self.abstract)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state, self.other)


def create(make_module: Callable[[nnx.Rngs], nnx.Module], mesh: Mesh, seed: int):
    """Returns (ModelState, params) with params sharded on `mesh` by their logical names."""
    abstract_module = nnx.eval_shape(lambda: make_module(nnx.Rngs(seed)))
    graphdef, abstract, _ = nnx.split(abstract_module, nnx.Param, ...)
    shardings = nnx.to_pure_dict(rules.param_shardings(abstract, mesh))

    def init():
        _, params, other = nnx.split(make_module(nnx.Rngs(seed)), nnx.Param, ...)
        return nnx.to_pure_dict(params), other

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    params, other = jax.jit(init, out_shardings=(shardings, replicated))()
    return ModelState(graphdef, abstract, shardings, other), params


def param_count(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
