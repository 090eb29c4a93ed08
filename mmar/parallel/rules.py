"""Logical axis names -> mesh axes, and sharding constraints on activations.

Every parameter in mmar names its axes logically (`embed`, `mlp`, `heads`, ...); activations
are constrained with logical names too (`batch`, `length`, `act_embed`, ...). This table is
the only place that says which mesh axis (`data`, `fsdp`, `tensor`) each name lands on, so a
strategy (data parallel, FSDP, tensor parallel, or a mix) is chosen by the mesh sizes alone:
a mesh axis of size 1 shards nothing. `STRATEGIES` holds one short table per strategy
(`mesh.strategy` in the config picks it); the default, `fsdp_tp`, covers pure data
parallelism too when the `fsdp` and `tensor` axes have size 1.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Parameters carry *logical* names in their `out_sharding` metadata; mmar maps them to mesh
# axes itself (`param_shardings` below) and hands the result to `jax.jit`. Flax's eager
# sharding would instead try to place each variable at creation time on a mesh whose axes
# are the logical names, so it is switched off for every module that imports this one.
nnx.use_eager_sharding(False)

# Activations: the batch is split over every data-like axis; the wide activation dims follow
# their weights onto `tensor` (with a `tensor` axis of size 1 that is a no-op).
_ACTIVATIONS = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_vocab", "tensor"),
)
# `lora_rank`: the small inner axis of LoRA adapters (mmar/model/lora.py); their other axis
# shards as its weight's does.
_ALWAYS_REPLICATED = (("head_dim", None), ("layers", None), ("norm", None), ("modality", None),
                      ("targets", None), ("scales", None),
                      ("lora_rank", None))

# One short table per strategy: (logical parameter name, mesh axes). A strategy names the
# mesh axes it uses; `mesh.validate_strategy` refuses a mesh whose other axes are > 1.
STRATEGIES: dict[str, tuple[tuple[str, str | tuple[str, ...] | None], ...]] = {
    # data parallel: every device holds every parameter.
    "dp": (("embed", None), ("mlp", None), ("heads", None), ("kv_heads", None),
           ("vocab", None)),
    # FSDP (ZeRO-3): parameters split along the model dimension, gathered per layer.
    "fsdp": (("embed", "fsdp"), ("mlp", None), ("heads", None), ("kv_heads", None),
             ("vocab", None)),
    # tensor parallel (Megatron): heads, MLP width and vocabulary split over `tensor`.
    "tp": (("embed", None), ("mlp", "tensor"), ("heads", "tensor"), ("kv_heads", "tensor"),
           ("vocab", "tensor")),
    # both, the default: FSDP over `fsdp`, tensor parallelism over `tensor`.
    "fsdp_tp": (("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
                ("kv_heads", "tensor"), ("vocab", "tensor")),
}
# The mesh axes each strategy shards over (besides `data`, which only ever splits the batch).
STRATEGY_AXES = {"dp": ("data", "fsdp"), "fsdp": ("data", "fsdp"), "tp": ("data", "tensor"),
                 "fsdp_tp": ("data", "fsdp", "tensor")}


def for_strategy(name: str) -> tuple:
    """The full rule table (parameters, then activations) of a strategy in `STRATEGIES`."""
    if name not in STRATEGIES:
        raise KeyError(f"mesh.strategy={name!r}: one of {sorted(STRATEGIES)}")
    return STRATEGIES[name] + _ALWAYS_REPLICATED + _ACTIVATIONS


DEFAULT_RULES = for_strategy("fsdp_tp")

_ACTIVE: contextvars.ContextVar[tuple[Mesh, tuple] | None] = contextvars.ContextVar(
    "mmar_mesh_rules", default=None)


def logical_to_spec(names: Sequence[str | None] | None, rules=DEFAULT_RULES, *,
                    shape: Sequence[int] | None = None, mesh: Mesh | None = None
                    ) -> PartitionSpec:
    """PartitionSpec for a tuple of logical names; unknown names are an error, not replicas.

    Given the array's `shape` and the `mesh`, a dimension that the mesh axes do not divide
    is replicated instead (e.g. 1 KV head under 2-way tensor parallelism): the usual GQA
    choice, and the parameter table of every run shows where it happened.
    """
    if names is None:
        return PartitionSpec()
    table = dict(rules)
    out, used = [], set()
    for i, name in enumerate(names):
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no rule in mmar.parallel.rules "
                           f"(known: {sorted(table)})")
        axes = table[name]
        axes_t = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes_t = tuple(a for a in axes_t if a not in used)  # a mesh axis shards one dim only
        if shape is not None and mesh is not None:
            if shape[i] % math.prod(mesh.shape[a] for a in axes_t):
                axes_t = ()
        used.update(axes_t)
        out.append(None if not axes_t else axes_t[0] if len(axes_t) == 1 else axes_t)
    return PartitionSpec(*out)


def named_sharding(mesh: Mesh, names, rules=DEFAULT_RULES, shape=None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, rules, shape=shape, mesh=mesh))


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules=DEFAULT_RULES):
    """Makes `constrain` active: inside, activations are pinned to `mesh` by `rules`."""
    token = _ACTIVE.set((mesh, rules))
    try:
        yield mesh
    finally:
        _ACTIVE.reset(token)


def active() -> tuple[Mesh, tuple] | None:
    """(mesh, rules) inside `use_mesh`, else None: for code that must place work on the mesh
    itself (a Pallas kernel inside `shard_map`, model/splash.py)."""
    return _ACTIVE.get()


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical names; a no-op outside `use_mesh`."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    if len(names) != x.ndim:
        raise ValueError(f"constrain: {len(names)} names {tuple(names)} for an array of "
                         f"shape {x.shape}")
    return jax.lax.with_sharding_constraint(x, named_sharding(mesh, names, rules, x.shape))


def param_shardings(abstract_state, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for an (abstract) nnx.State from each Variable's logical names."""
    def one(var):
        names = var.get_metadata().get("out_sharding") if isinstance(var, nnx.Variable) else None
        if names is None:
            return NamedSharding(mesh, PartitionSpec())
        if len(names) != len(var.shape):
            raise ValueError(f"parameter of shape {var.shape} has {len(names)} logical names "
                             f"{tuple(names)}")
        return named_sharding(mesh, names, rules, var.shape)
    return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
