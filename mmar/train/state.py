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


def _abstract(make_module, mesh: Mesh, seed: int):
    """Graph, abstract Params, the rest of the state (abstract) and the param shardings."""
    abstract_module = nnx.eval_shape(lambda: make_module(nnx.Rngs(seed)))
    graphdef, abstract, other = nnx.split(abstract_module, nnx.Param, ...)
    return graphdef, abstract, other, nnx.to_pure_dict(rules.param_shardings(abstract, mesh))


def create(make_module: Callable[[nnx.Rngs], nnx.Module], mesh: Mesh, seed: int):
    """Returns (ModelState, params) with params sharded on `mesh` by their logical names."""
    graphdef, abstract, _, shardings = _abstract(make_module, mesh, seed)

    def init():
        _, params, other = nnx.split(make_module(nnx.Rngs(seed)), nnx.Param, ...)
        return nnx.to_pure_dict(params), other

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    params, other = jax.jit(init, out_shardings=(shardings, replicated))()
    return ModelState(graphdef, abstract, shardings, other), params


def create_abstract(make_module: Callable[[nnx.Rngs], nnx.Module], mesh: Mesh):
    """(ModelState, params as ShapeDtypeStructs): what a checkpoint restore needs, without
    running (and compiling) the initialisers. Modules whose only state is Params only."""
    graphdef, abstract, other, shardings = _abstract(make_module, mesh, 0)
    if jax.tree.leaves(other):
        raise ValueError("create_abstract: the module has non-Param state; use create()")
    return ModelState(graphdef, abstract, shardings, other), nnx.to_pure_dict(abstract)


def param_count(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
