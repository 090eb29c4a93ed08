"""Convert the released Chameleon VQ-GAN (vqgan.ckpt + vqgan.yaml) for `chameleon_vqgan_weights.load`.

    python -m mmar.tokenizers.image.convert_vqgan vqgan.ckpt vqgan.yaml --out DIR

Why: transformers' Chameleon / Anole checkpoints hold only the VQ-GAN's encoder; the decoder
(codes -> pixels, what image generation needs) exists only in the released taming-style
Lightning checkpoint (Chameleon's ``tokenizer/vqgan.ckpt``, used as is by Anole and
Lumina-mGPT). That file is a pickle: reading it needs torch, and plain unpickling would run
whatever code it names. This reads it once with ``torch.load(weights_only=True)`` (tensors and
plain containers only) and writes what mmar reads without torch:

- ``DIR/model.safetensors``: the ``state_dict`` tensors under their torch names (``encoder.*``,
  ``quant_conv.*``, ``quantize.embedding.weight``, ``post_quant_conv.*``, ``decoder.*``), float32,
  torch layout; the training loss's tensors (``loss.*``: LPIPS and discriminator) dropped;
- ``DIR/config.json``: the ``transformers.ChameleonVQVAEConfig`` fields, read from the yaml's
  ``model.params`` (``embed_dim``, ``n_embed``) and ``model.params.ddconfig``.

The tensors are checked against the config by loading them (`chameleon_vqgan_weights.from_torch_names`)
before anything is written, so a bad pair of files fails here, naming the tensor.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

import numpy as np
import yaml

from mmar.tokenizers.image import chameleon_vqgan, chameleon_vqgan_weights

# ddconfig key -> ChameleonVQVAEConfig field.
DDCONFIG_FIELDS = {
    "ch": "base_channels", "ch_mult": "channel_multiplier", "num_res_blocks": "num_res_blocks",
    "attn_resolutions": "attn_resolutions", "z_channels": "latent_channels",
    "resolution": "resolution", "in_channels": "in_channels", "dropout": "dropout",
    "double_z": "double_latent", "attn_type": "attn_type",
}
REQUIRED_DDCONFIG = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels",
                     "resolution", "in_channels", "out_ch")
# ddconfig options taming has that this module does not implement, with the one value it does.
FIXED_DDCONFIG = {"resamp_with_conv": True, "give_pre_end": False, "tanh_out": False,
                  "use_linear_attn": False}


def config_from_yaml(path: str | pathlib.Path) -> dict[str, Any]:
    """A taming VQModel yaml -> the ChameleonVQVAEConfig-field dict; ValueError naming the
    file and the field that is missing or unsupported."""
    path = pathlib.Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the VQ-GAN yaml ({e})") from e
    try:
        params = doc["model"]["params"]
    except (TypeError, KeyError):
        raise ValueError(f"{path}: no model.params (expected a taming VQModel config)") from None
    dd = params.get("ddconfig") if isinstance(params, dict) else None
    if not isinstance(dd, dict):
        raise ValueError(f"{path}: no model.params.ddconfig mapping")
    for key in ("embed_dim", "n_embed"):
        if key not in params:
            raise ValueError(f"{path}: model.params.{key} is missing")
    for key in REQUIRED_DDCONFIG:
        if key not in dd:
            raise ValueError(f"{path}: model.params.ddconfig.{key} is missing")
    if dd["out_ch"] != dd["in_channels"]:
        raise ValueError(f"{path}: model.params.ddconfig.out_ch = {dd['out_ch']} differs from "
                         f"in_channels = {dd['in_channels']} (the decoder draws images of the "
                         f"encoder's channels)")
    for key, value in FIXED_DDCONFIG.items():
        if key in dd and bool(dd[key]) != value:
            raise ValueError(f"{path}: model.params.ddconfig.{key} = {dd[key]!r} is not "
                             f"supported (only {value})")
    if params.get("remap") is not None:
        raise ValueError(f"{path}: model.params.remap is not supported (codes would need the "
                         f"remap file's index table)")
    cfg = {field: dd[key] for key, field in DDCONFIG_FIELDS.items() if key in dd}
    cfg["embed_dim"], cfg["num_embeddings"] = params["embed_dim"], params["n_embed"]
    cfg = {**chameleon_vqgan.DEFAULTS, **cfg}
    cfg["channel_multiplier"] = list(cfg["channel_multiplier"])
    cfg["attn_resolutions"] = list(cfg["attn_resolutions"] or [])
    try:
        chameleon_vqgan.config_from_dict(cfg)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return cfg


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """The model tensors of a Lightning checkpoint (its `state_dict`; a bare state dict is
    accepted too), float32 numpy, `loss.*` dropped. Only `weights_only=True` loading: a
    checkpoint that needs more (pickled objects) is refused, with how to re-save it."""
    import torch   # optional heavy dependency: only conversion needs it

    path = pathlib.Path(path)
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such checkpoint file") from None
    except Exception as e:   # pickle.UnpicklingError and friends: the message says which
        raise ValueError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); if you trust the file, re-save its "
            f"tensors with torch.save(torch.load(path, weights_only=False)['state_dict'], "
            f"'state_dict.pt') and convert that") from e
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not sd:
        raise ValueError(f"{path}: no state_dict in the checkpoint (top-level keys: "
                         f"{sorted(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt)})")
    out = {}
    for name, t in sd.items():
        if name.startswith("loss."):
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{path}: state_dict[{name!r}] is a {type(t).__name__}, "
                             f"not a tensor")
        out[name] = np.ascontiguousarray(t.detach().to(torch.float32).numpy())
    return out


def convert(ckpt: str | pathlib.Path, config_yaml: str | pathlib.Path,
            out: str | pathlib.Path) -> pathlib.Path:
    """Write `out`/model.safetensors and `out`/config.json; returns `out`."""
    from safetensors.numpy import save_file   # optional heavy dependency

    cfg = config_from_yaml(config_yaml)
    tensors = read_state_dict(ckpt)
    try:   # the same check `load` will do, before writing anything
        chameleon_vqgan_weights.params_from_torch_names(tensors, cfg, decoder=True)
    except ValueError as e:
        raise ValueError(f"{ckpt} with {config_yaml}: {e}") from e
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmar.tokenizers.image.convert_vqgan",
        description="Convert the released Chameleon VQ-GAN (vqgan.ckpt, vqgan.yaml) to "
                    "model.safetensors + config.json for mmar.tokenizers.image.chameleon_vqgan")
    parser.add_argument("ckpt", help="the released checkpoint (vqgan.ckpt)")
    parser.add_argument("config", help="its taming config (vqgan.yaml)")
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    try:
        out = convert(args.ckpt, args.config, args.out)
    except ValueError as e:
        print(f"convert_vqgan: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out / 'model.safetensors'} and {out / 'config.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
