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
from flax import nnx, traverse_util
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


def _abstract(make_module, mesh: Mesh, seed: int, rule_table):
    """Graph, abstract Params, the rest of the state (abstract) and the param shardings."""
    abstract_module = nnx.eval_shape(lambda: make_module(nnx.Rngs(seed)))
    graphdef, abstract, other = nnx.split(abstract_module, nnx.Param, ...)
    shardings = rules.param_shardings(abstract, mesh, rule_table)
    return graphdef, abstract, other, nnx.to_pure_dict(shardings)


def create(make_module: Callable[[nnx.Rngs], nnx.Module], mesh: Mesh, seed: int,
           rule_table=rules.DEFAULT_RULES):
    """Returns (ModelState, params) with params sharded on `mesh` by their logical names."""
    graphdef, abstract, _, shardings = _abstract(make_module, mesh, seed, rule_table)

    def init():
        _, params, other = nnx.split(make_module(nnx.Rngs(seed)), nnx.Param, ...)
        return nnx.to_pure_dict(params), other

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    params, other = jax.jit(init, out_shardings=(shardings, replicated))()
    return ModelState(graphdef, abstract, shardings, other), params


def create_abstract(make_module: Callable[[nnx.Rngs], nnx.Module], mesh: Mesh,
                    rule_table=rules.DEFAULT_RULES):
    """(ModelState, params as ShapeDtypeStructs): what a checkpoint restore needs, without
    running (and compiling) the initialisers. Modules whose only state is Params only."""
    graphdef, abstract, other, shardings = _abstract(make_module, mesh, 0, rule_table)
    if jax.tree.leaves(other):
        raise ValueError("create_abstract: the module has non-Param state; use create()")
    return ModelState(graphdef, abstract, shardings, other), nnx.to_pure_dict(abstract)


def paths(model_state: ModelState, var_filter) -> frozenset:
    """The flat paths (key tuples of the pure params dict) of the Params that `var_filter`
    (an nnx filter, e.g. a Variable type) selects."""
    selected, _ = nnx.split_state(model_state.abstract, var_filter, ...)
    return frozenset(traverse_util.flatten_dict(nnx.to_pure_dict(selected)))


def select(tree: dict, keep: frozenset, inside: bool = True) -> dict:
    """The leaves of a pure params-like dict (params, shardings, abstract params) whose path
    is in `keep` (`inside=False`: the others), as a nested dict of the same layout."""
    flat = traverse_util.flatten_dict(tree)
    return traverse_util.unflatten_dict({k: v for k, v in flat.items()
                                         if (k in keep) == inside})


def combine(a: dict, b: dict) -> dict:
    """The union of two `select`ed parts of one tree (disjoint leaves)."""
    return traverse_util.unflatten_dict({**traverse_util.flatten_dict(a),
                                         **traverse_util.flatten_dict(b)})


def param_count(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))


def parameter_overview(params, shardings) -> str:
    """A table of every parameter: path, shape, dtype, mesh axes per dimension, size; and the
    total. Works on concrete or abstract (ShapeDtypeStruct) params alike."""
    rows = []
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    specs = jax.tree.leaves(shardings, is_leaf=lambda x: hasattr(x, "spec"))
    for (path, x), sharding in zip(flat, specs):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        rows.append((name, str(tuple(x.shape)), str(x.dtype), str(tuple(sharding.spec)),
                     f"{x.size:,}"))
    header = ("parameter", "shape", "dtype", "mesh axes", "size")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i < 4 else c.rjust(w)
                              for i, (c, w) in enumerate(zip(r, widths)))
    total = sum(x.size for _, x in flat)
    return "\n".join([fmt(header), *map(fmt, rows), f"total: {total:,} parameters"]) + "\n"
