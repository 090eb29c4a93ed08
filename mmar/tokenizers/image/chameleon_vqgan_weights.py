"""Chameleon / Anole VQ-GAN weights from torch names: a checkpoint's tensors ->
`chameleon_vqgan.ChameleonVQGAN` (mmar/tokenizers/image/chameleon_vqgan.py).

The module's attribute paths mirror the torch tensor names (``encoder.down.1.block.0.conv1``,
...), so loading is a rename (``kernel`` / ``scale`` <- ``weight``) and an OIHW -> HWIO
transpose, checked name by name and shape by shape: a missing, extra or misshapen tensor is
one ValueError naming it. Sources: `convert_vqgan`'s output (config.json + model.safetensors,
encoder and decoder) or a transformers Chameleon / Anole checkpoint (the encoder under
``model.vqmodel.``).
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmar.tokenizers.image.chameleon_vqgan import (DECODER_HINT, TRANSFORMERS_PREFIX,
                                                   ChameleonVQGAN, VQGANConfig,
                                                   config_from_dict)


def torch_name(path: Sequence[Any]) -> str:
    """An NNX parameter path -> its torch state-dict name (kernel / scale -> weight)."""
    parts = [str(p) for p in path]
    parts[-1] = {"kernel": "weight", "scale": "weight"}.get(parts[-1], parts[-1])
    return ".".join(parts)


def _to_torch_shape(shape: Sequence[int]) -> tuple[int, ...]:
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape)


def _abstract(cfg: VQGANConfig, decoder: bool, precision):
    return nnx.eval_shape(lambda: ChameleonVQGAN(cfg, decoder=decoder, precision=precision,
                                                 rngs=nnx.Rngs(0)))


def _is_decoder_half(name: str) -> bool:
    return name.startswith(("decoder.", "post_quant_conv."))


def _fill(abstract, tensors: Mapping[str, Any], prefix: str, decoder: bool) -> nnx.State:
    """(graphdef, Param state) of `abstract` with every value taken from `tensors` (torch
    names), checked name by name and shape by shape."""
    graphdef, state = nnx.split(abstract, nnx.Param)
    flat = list(nnx.to_flat_state(state))
    wanted = {torch_name(path): (path, var) for path, var in flat}
    given = {name[len(prefix):]: name for name in tensors if name.startswith(prefix)}
    missing = [n for n in wanted if n not in given]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        hint = (f"; an encoder-only checkpoint loads with decoder=False ({DECODER_HINT})"
                if decoder and all(_is_decoder_half(n) for n in missing) else "")
        raise ValueError(f"VQ-GAN checkpoint: missing tensor {prefix + missing[0]!r} (shape "
                         f"{_to_torch_shape(wanted[missing[0]][1].shape)}){more}{hint}")
    # An encoder-only module ignores the decoder half a full checkpoint also holds.
    unexpected = [n for n in given if n not in wanted
                  and not (not decoder and _is_decoder_half(n))]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ValueError(f"VQ-GAN checkpoint: unexpected tensor {given[unexpected[0]]!r}{more}: "
                         f"it has no place in a VQ-GAN of this config (a different "
                         f"channel_multiplier, num_res_blocks or attn_resolutions?)")
    out = []
    for name, (path, var) in wanted.items():
        value = np.asarray(tensors[given[name]], dtype=np.float32)
        expect = _to_torch_shape(var.shape)
        if value.shape != expect:
            raise ValueError(f"VQ-GAN checkpoint: tensor {given[name]!r} has shape "
                             f"{value.shape}, the config gives {expect}")
        if value.ndim == 4:   # torch OIHW -> JAX HWIO
            value = value.transpose(2, 3, 1, 0)
        out.append((path, var.replace(jnp.asarray(value))))
    return graphdef, nnx.from_flat_state(out)


def params_from_torch_names(tensors: Mapping[str, Any], vq_cfg: Mapping[str, Any],
                            prefix: str = "", *, decoder: bool = True,
                            precision: Any = jax.lax.Precision.HIGHEST) -> nnx.State:
    """{torch name: array} -> the `nnx.State` of `ChameleonVQGAN(vq_cfg, decoder=decoder)`'s
    parameters (merge it with the module's graphdef, or `nnx.update` a built module).

    `prefix`: the names' prefix (`TRANSFORMERS_PREFIX` in a transformers checkpoint, "" in
    `convert_vqgan`'s output); names without it are ignored (a transformers checkpoint also
    holds the language model). One ValueError naming the first missing tensor, unexpected
    tensor or wrong shape: a partial load would give wrong codes silently."""
    cfg = config_from_dict(vq_cfg)
    return _fill(_abstract(cfg, decoder, precision), tensors, prefix, decoder)[1]


def from_torch_names(tensors: Mapping[str, Any], vq_cfg: Mapping[str, Any], prefix: str = "",
                     *, decoder: bool = True,
                     precision: Any = jax.lax.Precision.HIGHEST) -> ChameleonVQGAN:
    """`params_from_torch_names`, merged into a ready module."""
    cfg = config_from_dict(vq_cfg)
    graphdef, state = _fill(_abstract(cfg, decoder, precision), tensors, prefix, decoder)
    return nnx.merge(graphdef, state)


def read_safetensors(files: Sequence[pathlib.Path], prefix: str) -> dict[str, np.ndarray]:
    """The tensors named `prefix*` of some safetensors files, float32 numpy. Read through
    the "flax" framework: numpy has no bfloat16, the dtype of transformers checkpoints."""
    from safetensors import safe_open   # optional heavy dependency
    out = {}
    for file in files:
        with safe_open(str(file), framework="flax") as f:
            for name in f.keys():
                if name.startswith(prefix):
                    out[name] = np.asarray(f.get_tensor(name).astype(jnp.float32))
    return out


def load(directory: str | pathlib.Path, *, decoder: bool | None = None,
         precision: Any = jax.lax.Precision.HIGHEST) -> ChameleonVQGAN:
    """A `ChameleonVQGAN` from a directory: `convert_vqgan`'s output (config.json of VQ
    fields + model.safetensors, encoder and decoder; `decoder` defaults to True) or a
    transformers Chameleon / Anole checkpoint (config.json with a `vq_config`, the encoder
    under `model.vqmodel.` in model*.safetensors; `decoder` defaults to False, since those
    checkpoints have no decoder)."""
    directory = pathlib.Path(directory)
    config_path = directory / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_path}: cannot read the VQ-GAN config ({e})") from e
    if "vq_config" in config:
        vq_cfg, prefix = config["vq_config"] or {}, TRANSFORMERS_PREFIX
        decoder = False if decoder is None else decoder
    else:
        vq_cfg, prefix = config, ""
        decoder = True if decoder is None else decoder
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{directory}: no *.safetensors file (expected model.safetensors)")
    return from_torch_names(read_safetensors(files, prefix), vq_cfg, prefix,
                            decoder=decoder, precision=precision)
