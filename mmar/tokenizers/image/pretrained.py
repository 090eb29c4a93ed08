"""A released image tokenizer (Chameleon's VQ-GAN, Emu3's VQ-VAE) as the run's runtime
tokenizer: uint8 images <-> codes through the same `ImageTokenizer` as mmar's own.

`mmar import` copies the checkpoint's image tokenizer tensors, names and bytes as they were,
into WORKDIR/tokenizer/pretrained/ (model.safetensors + config.json: {kind, vq_config};
mmar/export/unified.py). Here they fill the JAX ports; nothing is trained
(`image_tokenizer.pretrained` names which port). A Chameleon import has the encoder only
(transformers' class has no decoder) until the released VQ-GAN's decoder weights, converted by
mmar/tokenizers/image/convert_vqgan.py, are placed beside it (`mmar import --image_decoder`).

On a mesh the tokenizer is data parallel: its parameters (tens of millions) replicated on
every device, each call's images split over all of them (`ImageTokenizer.batch_sharding`).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from mmar.tokenizers.image import chameleon_vqgan_weights, emu3_vqvae_weights
from mmar.tokenizers.image.runtime import ImageTokenizer

SUBDIR = "pretrained"   # WORKDIR/tokenizer/pretrained/


@dataclasses.dataclass(frozen=True)
class _Graph:
    """`ImageTokenizer`'s model_state for a module built from released weights: the graph,
    merged with the params pytree inside its jitted encode / decode."""
    graphdef: Any

    def merge(self, params) -> nnx.Module:
        return nnx.merge(self.graphdef, params)


def load(directory, tok_cfg, mesh=None) -> ImageTokenizer:
    """The runtime tokenizer of an imported image tokenizer directory; ValueError naming the
    file when it is not the kind `image_tokenizer.pretrained` says. `mesh`: replicate the
    parameters on it and split each call's images over all its devices."""
    directory = pathlib.Path(directory)
    config_path = directory / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{config_path}: cannot read the imported image tokenizer ({e})"
                         ) from None
    if config.get("kind") != tok_cfg.pretrained:
        raise ValueError(f"{config_path}: kind={config.get('kind')!r}, the config says "
                         f"image_tokenizer.pretrained={tok_cfg.pretrained!r}")
    tensors = chameleon_vqgan_weights.read_safetensors(sorted(directory.glob("*.safetensors")), "")
    vq_cfg = config.get("vq_config") or {}
    if tok_cfg.pretrained == "chameleon_vqgan":
        decoder = any(name.startswith("decoder.") for name in tensors)
        module = chameleon_vqgan_weights.from_torch_names(tensors, vq_cfg, decoder=decoder)
    else:
        module = emu3_vqvae_weights.from_torch_names(
            {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}, vq_cfg)
    graphdef, params = nnx.split(module)
    if mesh is None:
        return ImageTokenizer(_Graph(graphdef), params, 0, tok_cfg)
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    batch = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))
    return ImageTokenizer(_Graph(graphdef), params, 0, tok_cfg, batch_sharding=batch)
