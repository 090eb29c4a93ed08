"""transformers ``Emu3VQVAE`` state-dict tensors (numpy) -> ``emu3_vqvae.Emu3VQVAE`` params.

The module's parameter paths copy transformers' module names (``encoder.down_block.down.0.
block.0.conv1``, ``decoder.up_block.up.1.attn_norms.0.conv_y``, ...), so the mapping is
mechanical: join the path with dots and rename the leaf (flax ``kernel`` / ``scale`` /
``embedding`` / BatchNorm ``mean`` / ``var`` are torch's ``weight`` / ``running_mean`` /
``running_var``), then move conv kernels from torch's OIDHW / OIHW to DHWIO / HWIO and
transpose Linear weights ([out, in] -> [in, out]). Deriving the names from the module, rather
than listing them, means a config the module builds differently from transformers shows up
as missing / unexpected tensors instead of silently wrong weights.

In a saved ``Emu3ForConditionalGeneration`` the tokenizer sits under ``model.vqmodel.``
(``PREFIX``) next to the language model, whose tensors are ignored; a bare ``Emu3VQVAE``
has no prefix. BatchNorm's ``num_batches_tracked`` counters are accepted and unused (eval
mode never reads them). Only numpy in: mmar reads safetensors itself, torch is not needed.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmar.tokenizers.image.emu3_vqvae import Emu3VQVAE

PREFIX = "model.vqmodel."
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight",
               "mean": "running_mean", "var": "running_var", "bias": "bias"}
_KERNEL_AXES = {5: (2, 3, 4, 1, 0), 4: (2, 3, 1, 0), 2: (1, 0)}  # torch -> flax layout
_UNUSED_SUFFIX = ".num_batches_tracked"


def torch_name(path: tuple) -> str:
    """A module parameter path -> its transformers state-dict name (no prefix)."""
    return ".".join([str(p) for p in path[:-1]] + [_LEAF_NAMES[path[-1]]])


def to_flax_layout(leaf: str, array: np.ndarray) -> np.ndarray:
    """A torch tensor as the flax leaf ``leaf`` holds it (float32)."""
    array = np.asarray(array, dtype=np.float32)
    if leaf == "kernel":
        array = np.transpose(array, _KERNEL_AXES[array.ndim])
    return np.ascontiguousarray(array)


def params_from_torch_names(tensors: Mapping[str, np.ndarray], vq_cfg: Mapping[str, Any],
                            prefix: str = "") -> nnx.State:
    """The ``nnx.State`` (params and BatchNorm statistics) of ``Emu3VQVAE(vq_cfg)`` from
    transformers-named ``tensors``; ``prefix``: ``PREFIX`` for a full Emu3 checkpoint, whose
    tensors outside it are ignored. One ValueError naming every missing, unexpected or
    mis-shaped tensor."""
    abstract = nnx.state(nnx.eval_shape(lambda: Emu3VQVAE(vq_cfg)))
    leaves, problems, used = [], [], set()
    for path, var in nnx.to_flat_state(abstract):
        name = prefix + torch_name(path)
        if name not in tensors:
            problems.append(f"missing tensor {name}")
            continue
        used.add(name)
        array = to_flax_layout(path[-1], tensors[name])
        want = tuple(var.get_value().shape)
        if array.shape != want:
            problems.append(f"tensor {name}: shape {tuple(np.shape(tensors[name]))} is "
                            f"{array.shape} in flax layout, the model needs {want}")
            continue
        leaves.append((path, var.replace(jnp.asarray(array))))
    unexpected = sorted(k for k in tensors if k.startswith(prefix) and k not in used
                        and not k.endswith(_UNUSED_SUFFIX))
    problems += [f"unexpected tensor {k}" for k in unexpected]
    if problems:
        raise ValueError(f"Emu3 VQ-VAE weights ({len(problems)} problems): "
                         + "; ".join(problems))
    return nnx.from_flat_state(leaves)


def load_torch_weights(model: Emu3VQVAE, tensors: Mapping[str, np.ndarray],
                       prefix: str = "") -> Emu3VQVAE:
    """Fill ``model`` in place (``nnx.update``) from transformers-named tensors; returns it."""
    nnx.update(model, params_from_torch_names(tensors, model.config, prefix))
    return model


def from_torch_names(tensors: Mapping[str, np.ndarray], vq_cfg: Mapping[str, Any],
                     prefix: str = "", precision: str | None = "highest") -> Emu3VQVAE:
    """A ready ``Emu3VQVAE`` built from ``vq_cfg`` and filled from ``tensors``: the graph is
    built abstractly (``nnx.eval_shape``), since a random init of every parameter, only to be
    overwritten, takes seconds even at toy sizes."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Emu3VQVAE(vq_cfg, precision=precision)))
    return nnx.merge(graphdef, params_from_torch_names(tensors, vq_cfg, prefix))
