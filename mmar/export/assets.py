"""The files around the exported weights, and the small API that turns codes into images.

- `tokenizer.json` + `tokenizer_config.json`: the run's text tokenizer (bytes as a
  `tokenizers` BPE with no merges, id b = byte b; or its tokenizer.json) plus the special
  tokens at their mmar ids (mmar/tokenizers/text/export.py). `AutoTokenizer` loads it
  without custom code, prepends `<bos>` (mmar prompts start with it) and encodes captions
  to exactly mmar's ids.
- `generation_config.json`: bos/eos/pad ids.
- `mmar.json`: the id layout (specials, image-code offset and count, codes per image) that
  a caller needs to build image prompts and constrain generation to image codes.
- `image_tokenizer/`: the image tokenizer's weights (safetensors) and config (JSON);
  `ImageDecoder` rebuilds its decoder from them (no pickle, no Orbax needed).
"""
from __future__ import annotations

import json
import pathlib
import shutil

import jax
import numpy as np
from PIL import Image

from mmar import derived, schema
from mmar import vocab as vocab_lib
from mmar.export import orbax_reader
from mmar.export import safetensors_io as st
from mmar.parallel import mesh as mesh_lib
from mmar.tokenizers import text as text_lib
from mmar.tokenizers.image import autoencoder
from mmar.tokenizers.image.runtime import check_depths
from mmar.tokenizers.text import export as text_export
from mmar.train import state as state_lib
from mmar.vocab import SPECIALS

IMAGE_DIR = "image_tokenizer"
MMAR_JSON = "mmar.json"


def write_text_tokenizer(out_dir, vocab, cfg, text=None) -> dict[str, str]:
    """tokenizer.json + tokenizer_config.json for `AutoTokenizer` (mmar/tokenizers/text/
    export.py); `text` is the run's text tokenizer (a `TextTokenizer`; None for bytes). A
    tokenizer mmar trained is also kept as is in text_tokenizer/tokenizer.json, from which
    `mmar import` restores the run's. Returns special name -> its string in the file."""
    kind = vocab_lib.text_kind(cfg.vocab)
    if kind == "bytes":
        data = text_export.byte_level_json()
    elif text is None:
        raise ValueError(f"vocab.text_tokenizer={cfg.vocab.text_tokenizer!r}: the export "
                         "needs the run's tokenizer.json")
    else:
        data = json.loads(text.json_text)
    if vocab.pinned:   # a checkpoint's own tokenizer: its specials are already in it
        names = _token_names(data, dict(zip(SPECIALS, vocab.pinned)))
    else:
        data, names = text_export.with_specials(data, vocab.text_size)
    out_dir = pathlib.Path(out_dir)
    (out_dir / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=1))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(
        text_export.tokenizer_config(names, cfg.data.seq_len), indent=1))
    kept = out_dir / text_lib.RUN_SUBDIR
    if kind in vocab_lib.TRAINED_KINDS:
        kept.mkdir(exist_ok=True)
        (kept / text_lib.FILENAME).write_text(text.json_text, encoding="utf-8")
    elif kept.is_dir():
        shutil.rmtree(kept)   # a re-export of another run must not leave a stale one
    return names


def _token_names(data: dict, ids: dict[str, int]) -> dict[str, str]:
    """special name -> the string of its id in a parsed tokenizer.json."""
    strings = {int(t["id"]): t["content"] for t in data.get("added_tokens") or []}
    model_vocab = data["model"]["vocab"]
    if isinstance(model_vocab, dict):
        strings = {**{int(i): s for s, i in model_vocab.items()}, **strings}
    missing = [name for name, i in ids.items() if i not in strings]
    if missing:
        raise ValueError(f"the text tokenizer has no token for {missing} (ids "
                         f"{[ids[n] for n in missing]}, vocab.special_ids)")
    return {name: strings[i] for name, i in ids.items()}


def write_generation_config(out_dir, vocab) -> None:
    (pathlib.Path(out_dir) / "generation_config.json").write_text(json.dumps({
        "bos_token_id": vocab.bos, "eos_token_id": vocab.eos, "pad_token_id": vocab.pad,
        "do_sample": False}, indent=1))


def write_mmar_json(out_dir, cfg, vocab, *, fmt, step, codes_shape,
                    special_tokens: dict | None = None) -> None:
    layout = {
        "format": fmt, "step": step, "text_tokenizer": cfg.vocab.text_tokenizer,
        "text_size": vocab.text_size,
        "special_ids": dict(zip(SPECIALS, (vocab.pad, vocab.bos, vocab.eos, vocab.boi,
                                            vocab.eoi))),
        # the strings of the specials in tokenizer.json (their names unless the file had them)
        "special_tokens": special_tokens or {name: name for name in SPECIALS},
        "image_offset": vocab.image_offset, "num_image_codes": vocab.num_image_codes,
        # RandAR (mmar/data/orders.py): P_k = position_offset + k precedes the code at grid k
        "image_order": cfg.data.image_order,
        "position_offset": vocab.position_offset, "num_position_ids": vocab.num_positions,
        "vocab_size": cfg.model.vocab_size, "image_size": cfg.data.image_size,
        "codes_shape": list(codes_shape) if codes_shape else None,
        "codes_per_image": int(np.prod(codes_shape)) if codes_shape else None,
        "image_tokenizer": IMAGE_DIR if codes_shape else None,
        # data.keep_aspect (mmar/vocab.py): <boi> <h> <w> rows of codes each + <eol>, <eoi>;
        # a size id is layout_offset + side; grids by mmar.derived.aspect_grid
        "keep_aspect": bool(cfg.data.keep_aspect),
        "layout_offset": vocab.layout_offset, "grid_sides": vocab.grid_sides,
        "max_aspect_ratio": float(cfg.data.max_aspect_ratio),
    }
    (pathlib.Path(out_dir) / MMAR_JSON).write_text(json.dumps(layout, indent=1))


def _autoencoder(tok_cfg):
    """(ModelState, abstract params) of the image tokenizer on one CPU device."""
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices("cpu")[:1])
    return state_lib.create_abstract(lambda rngs: autoencoder.Autoencoder(tok_cfg, rngs=rngs),
                                     mesh)


def export_image_tokenizer(step_dir, out_dir, cfg) -> tuple[int, ...]:
    """Image tokenizer weights (names as in the checkpoint) + config; returns the codes'
    shape of one image: (h, w), (h, w, depth) for RQ, (N,) for multi-scale codes."""
    reader = orbax_reader.CheckpointReader(step_dir)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    st.write_file(out_dir / "model.safetensors",
                  [st.Planned(n, reader.shape(n), reader.dtype(n),
                              lambda n=n: reader.read(n)) for n in reader.names])
    size = int(cfg.data.image_size)
    depth = derived.quantizer_depth(cfg.image_tokenizer)
    if cfg.image_tokenizer.quantizer == "msrq":   # token maps coarse to fine, one flat list
        codes_shape = (derived.codes_per_image(cfg),)
    else:
        codes_shape = derived.code_grid(cfg) + ((depth,) if depth > 1 else ())
    (out_dir / "config.json").write_text(json.dumps({
        "image_tokenizer": cfg.image_tokenizer.to_dict(), "image_size": [size, size],
        "codes_shape": list(codes_shape),
        "num_codes": derived.num_image_codes(cfg.image_tokenizer)}, indent=1))
    return codes_shape


class ImageDecoder:
    """Generated ids -> images, from an export directory (JAX, no Orbax, no transformers).

        dec = ImageDecoder.from_pretrained("export/")
        prompt = dec.image_prompt(tokenizer("a red circle").input_ids)   # adds <boi>
        ids = model.generate(..., **dec.generation_kwargs())             # exactly n codes
        images = dec.decode_ids(ids[:, len(prompt):])                    # uint8 [N, H, W, 3]
    """

    def __init__(self, layout: dict, tok_config: dict, params, model_state):
        self.layout, self.config = layout, tok_config
        self._params, self._state = params, model_state
        self._decode = None

    @classmethod
    def from_pretrained(cls, directory) -> "ImageDecoder":
        directory = pathlib.Path(directory)
        layout_path = directory / MMAR_JSON
        if not layout_path.is_file():
            raise FileNotFoundError(f"{layout_path}: missing; is {directory} an mmar export?")
        layout = json.loads(layout_path.read_text())
        if not layout.get("image_tokenizer"):
            raise FileNotFoundError(f"{directory}: exported without an image tokenizer")
        tok_dir = directory / layout["image_tokenizer"]
        tok_config = json.loads((tok_dir / "config.json").read_text())
        # completed: an export by an older mmar saved the flat names (mmar/schema.py)
        model_state, abstract = _autoencoder(
            schema.complete(tok_config["image_tokenizer"], section="image_tokenizer"))
        tensors = st.SafetensorsDir(tok_dir)

        def load(path, leaf):
            name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            if name not in tensors:
                raise ValueError(f"{tok_dir}: tensor {name!r} missing")
            value = tensors.get(name)
            if value.shape != leaf.shape:
                raise ValueError(f"{tok_dir}: tensor {name!r} has shape {value.shape}, the "
                                 f"config needs {leaf.shape}")
            return value

        params = jax.tree_util.tree_map_with_path(load, abstract)
        return cls(layout, tok_config, params, model_state)

    @property
    def codes_per_image(self) -> int:
        return int(self.layout["codes_per_image"])

    @property
    def keep_aspect(self) -> bool:
        return bool(self.layout.get("keep_aspect"))

    def grid(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """The code grid (h, w) of an image of `height` x `width` pixels, as the model was
        trained (square `codes_shape` unless keep-aspect; no size given: the square)."""
        h, w = self.layout["codes_shape"][:2]
        if not self.keep_aspect or height is None:
            return int(h), int(w)
        return derived.aspect_grid(int(height), int(width), int(h),
                                   float(self.layout["max_aspect_ratio"]))

    def image_prompt(self, caption_ids, grid=None) -> list[int]:
        """`<bos> caption <boi>` (a leading `<bos>` in caption_ids is kept, not doubled);
        keep-aspect: then the size ids of `grid` (h, w) (default: the square)."""
        ids = [int(i) for i in caption_ids]
        bos, boi = self.layout["special_ids"]["<bos>"], self.layout["special_ids"]["<boi>"]
        sizes = []
        if self.keep_aspect:
            h, w = grid if grid is not None else self.grid()
            sizes = [self._size_id(h), self._size_id(w)]
        return ([] if ids[:1] == [bos] else [bos]) + ids + [boi] + sizes

    def _size_id(self, side: int) -> int:
        if not 1 <= int(side) <= self.layout["grid_sides"]:
            raise ValueError(f"a grid side must be in [1, {self.layout['grid_sides']}], got "
                             f"{side}")
        return self.layout["layout_offset"] + int(side)

    @property
    def depth(self) -> int:
        """Codes per latent position (an RQ tokenizer's depth, else 1)."""
        shape = self.layout["codes_shape"]
        return int(shape[2]) if len(shape) == 3 else 1

    def generation_kwargs(self, grid=None) -> dict:
        """`generate` arguments that draw exactly one image: codes only, codes_per_image.
        With RQ (`depth` codes per position, each depth in its own id range) a
        `prefix_allowed_tokens_fn` allows at each step only the ids of that step's depth.
        Keep-aspect: h rows of w codes, `<eol>` (only) closing each row, for the `grid` of
        `image_prompt` (default: the square)."""
        lo = self.layout["image_offset"]
        hi = lo + self.layout["num_image_codes"]
        if self.keep_aspect:
            h, w = grid if grid is not None else self.grid()
            codes, eol = list(range(lo, hi)), [self.layout["layout_offset"]]
            boi = self.layout["special_ids"]["<boi>"]

            def row_slot(batch_id, input_ids):   # ids since the size ids after <boi>
                ids = input_ids.tolist()
                k = len(ids) - 3 - max(i for i, t in enumerate(ids) if t == boi)
                return eol if k % (w + 1) == w else codes
            n = h * (w + 1)
            return {"max_new_tokens": n, "min_new_tokens": n,
                    "prefix_allowed_tokens_fn": row_slot}
        suppress = [i for i in range(self.layout["vocab_size"]) if not lo <= i < hi]
        n = self.codes_per_image
        kwargs = {"max_new_tokens": n, "min_new_tokens": n, "suppress_tokens": suppress}
        if self.depth > 1:
            boi, depth = self.layout["special_ids"]["<boi>"], self.depth
            size = self.layout["num_image_codes"] // depth
            ranges = [list(range(lo + d * size, lo + (d + 1) * size)) for d in range(depth)]

            def allowed(batch_id, input_ids):   # codes drawn since the prompt's <boi>
                ids = input_ids.tolist()
                drawn = len(ids) - 1 - max(i for i, t in enumerate(ids) if t == boi)
                return ranges[drawn % depth]
            kwargs["prefix_allowed_tokens_fn"] = allowed
        return kwargs

    def decode_ids(self, ids, grid=None) -> np.ndarray:
        """Image-code ids [N, codes_per_image] (offset included) -> uint8 [N, H, W, 3].
        Keep-aspect: the ids `generation_kwargs(grid)` drew, [N, h * (w + 1)] (rows and their
        <eol>), for the `grid` (h, w) of the prompt (default: the square)."""
        ids = np.asarray(ids)
        if self.keep_aspect:
            h, w = grid if grid is not None else self.grid()
            if ids.ndim != 2 or ids.shape[1] != h * (w + 1):
                raise ValueError(f"expected ids [N, {h * (w + 1)}] ({h} rows of {w} codes and "
                                 f"<eol>), got {ids.shape}")
            rows = ids.reshape(len(ids), h, w + 1)
            if (rows[:, :, -1] != self.layout["layout_offset"]).any():
                raise ValueError(f"each of the {h} rows must end in <eol> "
                                 f"(id {self.layout['layout_offset']})")
            codes = rows[:, :, :w].reshape(len(ids), -1) - self.layout["image_offset"]
            if codes.min() < 0 or codes.max() >= self.layout["num_image_codes"]:
                raise ValueError("ids outside the image-code range")
            return self.decode_codes(codes, (h, w))
        codes = ids - self.layout["image_offset"]
        if ids.ndim != 2 or ids.shape[1] != self.codes_per_image:
            raise ValueError(f"expected ids [N, {self.codes_per_image}], got {ids.shape}")
        if codes.min() < 0 or codes.max() >= self.layout["num_image_codes"]:
            raise ValueError("ids outside the image-code range "
                             f"[{self.layout['image_offset']}, "
                             f"{self.layout['image_offset'] + self.layout['num_image_codes']})")
        check_depths(codes, self.depth, self.layout["num_image_codes"] // self.depth)
        return self.decode_codes(codes)

    def decode_codes(self, codes, grid=None) -> np.ndarray:
        """Codes [N, n] of the square (or of `grid` (h, w)) -> uint8 [N, H, W, 3]."""
        if self._decode is None:
            self._decode = jax.jit(lambda p, c: autoencoder.to_uint8(
                self._state.merge(p).decode_codes(c)))
        shape = self.layout["codes_shape"] if grid is None else list(grid)
        codes = np.asarray(codes, np.int32).reshape(-1, *shape)
        return np.asarray(self._decode(self._params, codes))

    @staticmethod
    def save_png(images, path) -> None:
        """One image, or a row of several, as a PNG."""
        images = np.asarray(images)
        row = images if images.ndim == 3 else np.concatenate(list(images), axis=1)
        Image.fromarray(row).save(path)
