"""Reading an mmar Orbax checkpoint one parameter (or one layer of one) at a time.

Why not `CheckpointManager.restore`: it restores whole arrays onto a mesh, so exporting a
model bigger than one host would need that many devices, and a stacked parameter
([layers, ...]) would land in memory whole. Orbax stores each parameter as a TensorStore
array (zarr, inside an OCDBT database by default), whatever mesh wrote it; reading that array
directly gives any slice on any topology, here one host with one CPU device, holding only
the slice asked for. The tests check that a checkpoint written from an 8-device sharded mesh
reads back exactly like a 1-device one.
"""
from __future__ import annotations

import ast
import json
import pathlib

import ml_collections
import numpy as np
import tensorstore as ts

from mmar import schema
from mmar.model import lora


def find_step_dir(path, kind: str = "decoder") -> pathlib.Path:
    """The checkpoint step directory for `path`: a run workdir (`<path>/<kind>/checkpoints`),
    a stage dir (`<path>/checkpoints`), a `checkpoints` dir (latest numeric step) or a step
    dir (has `params/`)."""
    path = pathlib.Path(path)
    for candidate in (path / kind / "checkpoints", path / "checkpoints", path):
        if (candidate / "params").is_dir():
            return candidate
        steps = sorted((int(p.name), p) for p in candidate.glob("*")
                       if p.name.isdigit() and (p / "params").is_dir())
        if steps:
            return steps[-1][1]
    raise FileNotFoundError(f"{path}: no mmar {kind} checkpoint (looked for "
                            f"{kind}/checkpoints/<step>/params, checkpoints/<step>/params and "
                            "params/)")


def run_dir_of(step_dir: pathlib.Path, kind: str = "decoder") -> pathlib.Path | None:
    """The run workdir above `<workdir>/<kind>/checkpoints/<step>`, if the layout is that."""
    step_dir = pathlib.Path(step_dir).absolute()
    if step_dir.parent.name == "checkpoints" and step_dir.parent.parent.name == kind:
        return step_dir.parent.parent.parent
    return None


class CheckpointReader:
    """The `params` item of one Orbax step directory, by dotted name ('blocks.attn.q')."""

    def __init__(self, step_dir):
        self.step_dir = pathlib.Path(step_dir)
        self.params_dir = self.step_dir / "params"
        meta_file = self.params_dir / "_METADATA"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{meta_file}: missing; is {self.step_dir} an Orbax step "
                                    "directory written by mmar?")
        try:
            tree = json.loads(meta_file.read_text())["tree_metadata"]
        except (ValueError, KeyError) as e:
            raise ValueError(f"{meta_file}: unreadable Orbax metadata ({e})") from None
        self.names = sorted(".".join(str(k) for k in ast.literal_eval(key)) for key in tree)
        self._ocdbt = (self.params_dir / "manifest.ocdbt").is_file()
        self._arrays: dict[str, ts.TensorStore] = {}

    def _open(self, name: str) -> ts.TensorStore:
        if name in self._arrays:
            return self._arrays[name]
        if name not in self.names:
            raise KeyError(f"{self.params_dir}: no parameter {name!r}")
        base = self.params_dir.absolute().as_uri() + "/"
        kvstore = ({"driver": "ocdbt", "base": base, "path": name} if self._ocdbt
                   else {"driver": "file", "path": str(self.params_dir.absolute() / name)})
        errors = []
        for driver in ("zarr3", "zarr"):
            try:
                array = ts.open({"driver": driver, "kvstore": kvstore}, open=True,
                                read=True).result()
                break
            except ValueError as e:
                errors.append(str(e).split("[")[0])
        else:
            raise ValueError(f"{self.params_dir}: cannot open {name!r}: {errors}")
        self._arrays[name] = array
        return array

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._open(name).shape)

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(self._open(name).dtype.numpy_dtype)

    def read(self, name: str, index: int | None = None) -> np.ndarray:
        """The whole parameter, or `[index]` of its leading (`layers`) axis."""
        array = self._open(name)
        return np.asarray((array if index is None else array[index]).read().result())

    def config(self) -> ml_collections.ConfigDict:
        """The run's config, saved beside the params as JSON, completed by the schema: a
        checkpoint written by an older mmar (flat names such as `model.mot_tile`) reads back
        with its fields in their current place and every newer field at its default."""
        path = self.step_dir / "config" / "metadata"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the checkpoint has no saved config")
        return schema.complete(json.loads(path.read_text()))


class LoRAMergedReader:
    """A `CheckpointReader` of a LoRA run (model/lora.py) seen as the plain model it
    stands for: the adapters `<name>_lora_a` / `<name>_lora_b` are not listed, and reading a
    weight that has them returns W + alpha / r * A @ B (`lora.merged_weight`, float32, in
    W's dtype), one layer slice at a time like the plain reader. An export therefore writes
    the fine-tuned weights into the base model's tensors: transformers, and any tool of the
    released model, loads them with no adapter code."""

    def __init__(self, reader: CheckpointReader, alpha: float):
        self.reader, self.alpha = reader, float(alpha)
        self.step_dir = reader.step_dir
        suffixes = (lora.A_SUFFIX, lora.B_SUFFIX)
        self.names = [n for n in reader.names if not n.endswith(suffixes)]
        self.adapted = {n for n in self.names if n + lora.A_SUFFIX in reader.names}

    def shape(self, name: str) -> tuple[int, ...]:
        return self.reader.shape(name)

    def dtype(self, name: str) -> np.dtype:
        return self.reader.dtype(name)

    def read(self, name: str, index: int | None = None) -> np.ndarray:
        w = self.reader.read(name, index)
        if name not in self.adapted:
            return w
        a = self.reader.read(name + lora.A_SUFFIX, index)
        b = self.reader.read(name + lora.B_SUFFIX, index)
        return lora.merged_weight(w, a, b, self.alpha / a.shape[-1])

    def config(self) -> ml_collections.ConfigDict:
        """The run's config with `model.lora.rank` = 0: what the merged weights are."""
        cfg = self.reader.config()
        cfg.model.lora.rank = 0
        return cfg
