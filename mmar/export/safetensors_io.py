"""Streaming safetensors writer and a lazy (mmap) reader, in plain numpy.

Why not the `safetensors` package: its writers take a whole dict of tensors, so a shard
would sit in memory twice (the dict and the bytes). Here the header is written first, from
shapes known in advance, and each tensor is produced and written one after another, so an
export holds one tensor (or one layer slice of a stacked tensor) at a time. The format is the
documented one (8-byte little-endian header size, JSON header, raw little-endian data); the
tests read every file back with the real `safetensors` package and with transformers.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Callable, Sequence

import ml_dtypes
import numpy as np

DTYPES = {"F64": np.dtype(np.float64), "F32": np.dtype(np.float32),
          "F16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16),
          "I64": np.dtype(np.int64), "I32": np.dtype(np.int32), "I16": np.dtype(np.int16),
          "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_)}
CODES = {v: k for k, v in DTYPES.items()}
INDEX = "model.safetensors.index.json"


@dataclasses.dataclass(frozen=True)
class Planned:
    """One tensor to write: its name, shape, dtype and a function that produces it."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def _header(tensors: Sequence[Planned], metadata: dict) -> bytes:
    header, offset = {"__metadata__": metadata}, 0
    for t in tensors:
        header[t.name] = {"dtype": CODES[np.dtype(t.dtype)], "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw


def write_file(path, tensors: Sequence[Planned], metadata: dict | None = None) -> None:
    """Writes one safetensors file, producing the tensors one at a time."""
    with open(path, "wb") as f:
        f.write(_header(tensors, metadata or {"format": "pt"}))
        for t in tensors:
            array = np.asarray(t.produce(), dtype=t.dtype)
            array = np.ascontiguousarray(array).reshape(array.shape)  # 0-d stays 0-d
            if array.shape != tuple(t.shape):
                raise ValueError(f"{t.name}: produced shape {array.shape}, planned {t.shape}")
            f.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())


def write_sharded(out_dir, tensors: Sequence[Planned], max_shard_bytes: int,
                  prefix: str = "model", metadata: dict | None = None) -> list[str]:
    """`model.safetensors`, or `model-0000i-of-0000N.safetensors` + `model.safetensors.index.json`
    (the transformers naming) when the total is above `max_shard_bytes`. Returns file names."""
    out_dir = pathlib.Path(out_dir)
    shards, current, size = [], [], 0
    for t in tensors:
        if current and size + t.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(t)
        size += t.nbytes
    if current:
        shards.append(current)
    if len(shards) == 1:
        write_file(out_dir / f"{prefix}.safetensors", shards[0], metadata)
        return [f"{prefix}.safetensors"]
    names = [f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        write_file(out_dir / name, shard, metadata)
        weight_map.update({t.name: name for t in shard})
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
    (out_dir / f"{prefix}.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return names


class SafetensorsDir:
    """The tensors of a directory (`model.safetensors` or an index + shards), read lazily:
    `get(name)` maps the file and copies out that one tensor."""

    def __init__(self, directory, prefix: str = "model"):
        directory = pathlib.Path(directory)
        index = directory / f"{prefix}.safetensors.index.json"
        single = directory / f"{prefix}.safetensors"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise ValueError(f"{index}: not a safetensors index ({e})") from None
            files = {name: directory / f for name, f in weight_map.items()}
        elif single.is_file():
            files = None
        else:
            raise FileNotFoundError(f"{directory}: neither {single.name} nor {index.name}")
        self._entries = {}
        for path in sorted(set(files.values())) if files else [single]:
            for name, entry in read_header(path).items():
                self._entries[name] = (path, entry)

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name][1]["shape"])

    def dtype(self, name: str) -> np.dtype:
        return DTYPES[self._entries[name][1]["dtype"]]

    def get(self, name: str) -> np.ndarray:
        if name not in self._entries:
            raise KeyError(f"tensor {name!r} is not in the checkpoint")
        path, entry = self._entries[name]
        start, end = entry["data_offsets"]
        dtype = DTYPES[entry["dtype"]].newbyteorder("<")
        base = 8 + int.from_bytes(path.open("rb").read(8), "little")
        mm = np.memmap(path, dtype=np.uint8, mode="r", offset=base + start, shape=(end - start,))
        # copied out of the map first: a 0-d view of a memmap keeps shape (1,)
        return np.array(mm).view(dtype).reshape(tuple(entry["shape"]))


def read_header(path) -> dict:
    """{name: {dtype, shape, data_offsets}} of one file; a clear error when it is not one."""
    path = pathlib.Path(path)
    with path.open("rb") as f:
        raw = f.read(8)
        size = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if not 0 < size < 100_000_000:
            raise ValueError(f"{path}: not a safetensors file (bad header size)")
        try:
            header = json.loads(f.read(size))
        except ValueError as e:
            raise ValueError(f"{path}: not a safetensors file ({e})") from None
    header.pop("__metadata__", None)
    data_bytes = path.stat().st_size - 8 - size
    for name, entry in header.items():
        if entry.get("dtype") not in DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {entry.get('dtype')!r}")
        end = int(entry.get("data_offsets", (0, 0))[1])
        if end > data_bytes:   # a copy cut short: reading would fail deep in mmap
            raise ValueError(f"{path}: truncated: tensor {name!r} ends at byte {end:,} of the "
                             f"data, the file holds {data_bytes:,}; copy it again")
    return header
