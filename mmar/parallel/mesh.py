"""The device mesh: axes `data`, `fsdp`, `tensor`, built as ICI x DCN.

`mesh.data/fsdp/tensor` size each axis inside one slice (ICI: the fast links of one TPU
slice or one GPU node); `mesh.dcn_data/dcn_fsdp/dcn_tensor` multiply them across slices
(DCN: the data-centre network). A mesh axis's total size is ici x dcn. One size per group
may be -1 (= the devices that are left). Usually only `dcn_data` is > 1: gradients cross
the slow network once per step, parameters never.

Devices are laid out by `jax.experimental.mesh_utils`, which knows TPU topologies (a
`tensor` axis stays on neighbouring chips); across slices it groups devices by
`slice_index`, or by process where devices have none (GPU nodes, CPU tests).

Axis types are Auto on purpose: sharding is decided by `jax.jit` in/out shardings and the
logical constraints of `mmar.parallel.rules`, the GSPMD way that MaxText also uses.
"""
from __future__ import annotations

import math

import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from mmar import schema
from mmar.errors import MeshError
from mmar.parallel import rules

AXES = ("data", "fsdp", "tensor")
DCN_FIELDS = tuple(f"dcn_{a}" for a in AXES)


def _resolve(sizes: list[int], total: int, what: str) -> list[int]:
    known = math.prod(s for s in sizes if s != -1)
    if sizes.count(-1) > 1:
        raise MeshError(f"mesh: at most one {what} axis may be -1, got {sizes}")
    if -1 in sizes:
        if total % known:
            raise MeshError(f"mesh: {total} {what} devices do not divide by the fixed axes "
                             f"{dict(zip(AXES, sizes))}")
        sizes[sizes.index(-1)] = total // known
    if math.prod(sizes) != total:
        raise MeshError(f"mesh: {what} axes {dict(zip(AXES, sizes))} need {math.prod(sizes)}"
                         f" devices, {total} are present (set one axis to -1 to take the rest)")
    return sizes


def axis_sizes(mesh_cfg, num_devices: int, num_slices: int = 1):
    """-> (ici sizes, dcn sizes), each a tuple over AXES, of a complete `mesh` section; errors
    name the mesh fields."""
    dcn = [int(mesh_cfg[f]) for f in DCN_FIELDS]
    dcn = _resolve(dcn, num_slices, "slice (dcn_*)")
    if num_devices % num_slices:
        raise MeshError(f"mesh: {num_devices} devices do not split into {num_slices} slices")
    ici = _resolve([int(mesh_cfg[a]) for a in AXES], num_devices // num_slices, "per-slice")
    return tuple(ici), tuple(dcn)


def num_slices_of(devices, mesh_cfg) -> int:
    """Slices present: distinct `slice_index` (TPU multi-slice), else the dcn product as asked
    (one slice per process group, for GPU nodes and CPU tests); `mesh_cfg` is complete."""
    indices = {getattr(d, "slice_index", None) for d in devices}
    if None not in indices and len(indices) > 1:
        return len(indices)
    dcn = [int(mesh_cfg[f]) for f in DCN_FIELDS]
    if -1 in dcn:
        return jax.process_count() if jax.process_count() > 1 else 1
    return math.prod(dcn)


def validate_strategy(mesh: Mesh, strategy: str) -> None:
    """A strategy shards over some mesh axes only; any other axis > 1 would hold replicas
    that compute the same thing, which is never what was meant."""
    used = rules.STRATEGY_AXES[strategy]
    for axis, size in mesh.shape.items():
        if size > 1 and axis not in used:
            raise MeshError(f"mesh.{axis}={size}: mesh.strategy={strategy!r} shards nothing "
                             f"over `{axis}` (it uses {used}); set mesh.{axis}=1 or change "
                             "the strategy")


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """The mesh of the `mesh` section `mesh_cfg` over `devices` (default: all). The section is
    completed here, so a partial one (`{"data": 1, "fsdp": 1, "tensor": 1}`) takes the
    schema's defaults for the rest."""
    mesh_cfg = schema.complete(mesh_cfg, section="mesh")
    devices = list(devices) if devices is not None else jax.devices()
    num_slices = num_slices_of(devices, mesh_cfg)
    ici, dcn = axis_sizes(mesh_cfg, len(devices), num_slices)
    if num_slices == 1:
        grid = mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
    else:
        by_process = getattr(devices[0], "slice_index", None) is None
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                                    process_is_granule=by_process,
                                                    allow_split_physical_axes=True)
    mesh = Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))
    validate_strategy(mesh, mesh_cfg.strategy)
    return mesh


def from_config(mesh_cfg, devices=None):
    """(mesh, rule table) for the `mesh` section of a config: what every job needs."""
    mesh_cfg = schema.complete(mesh_cfg, section="mesh")
    return make_mesh(mesh_cfg, devices), rules.for_strategy(mesh_cfg.strategy)
