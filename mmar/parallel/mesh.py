"""The device mesh: axes `data`, `fsdp`, `tensor`, sized by config (-1 = the rest).

Axis types are Auto on purpose: sharding is decided by `jax.jit` in/out shardings and the
logical constraints of `mmar.parallel.rules`, the GSPMD way that MaxText also uses.
Multi-slice (ICI x DCN) meshes come with the pod-scale issue.
"""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "tensor")


def axis_sizes(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
    """Resolves -1 and checks that the product is the device count (errors name the field)."""
    sizes = [int(mesh_cfg[a]) for a in AXES]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"mesh: {num_devices} devices do not divide by the fixed axes "
                             f"{dict(zip(AXES, sizes))}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh: axes {dict(zip(AXES, sizes))} need {math.prod(sizes)} devices,"
                         f" {num_devices} are present (set one axis to -1 to take the rest)")
    return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    devices = list(devices) if devices is not None else jax.devices()
    sizes = axis_sizes(mesh_cfg, len(devices))
    return Mesh(np.asarray(devices).reshape(sizes), AXES, axis_types=(AxisType.Auto,) * 3)
