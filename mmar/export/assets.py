"""The files around the exported weights, and the small API that turns codes into images.

- `tokenizer.json` + `tokenizer_config.json`: mmar's byte-level text tokenizer as a
  `tokenizers` BPE with no merges over GPT-2's byte-to-unicode alphabet, so id b is byte b
  exactly as in mmar, plus the special tokens at their mmar ids. `AutoTokenizer` loads it
  without custom code and prepends `<bos>` (mmar prompts start with it).
- `generation_config.json`: bos/eos/pad ids.
- `mmar.json`: the id layout (specials, image-code offset and count, codes per image) that
  a caller needs to build image prompts and constrain generation to image codes.
- `image_tokenizer/`: the image tokenizer's weights (safetensors) and config (JSON);
  `ImageDecoder` rebuilds its decoder from them (no pickle, no Orbax needed).
"""
from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
from PIL import Image

from mmar import derived, schema
from mmar.export import orbax_reader
from mmar.export import safetensors_io as st
from mmar.parallel import mesh as mesh_lib
from mmar.tokenizers.image import autoencoder
from mmar.train import state as state_lib
from mmar.vocab import SPECIALS

IMAGE_DIR = "image_tokenizer"
MMAR_JSON = "mmar.json"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character table (what `tokenizers`'
    ByteLevel pre-tokenizer and decoder use)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def write_text_tokenizer(out_dir, vocab, cfg) -> None:
    if cfg.vocab.text_tokenizer != "bytes" or vocab.text_size != 256:
        raise ValueError(f"vocab.text_tokenizer={cfg.vocab.text_tokenizer!r}: only the byte "
                         "tokenizer can be written as tokenizer.json so far")
    table = bytes_to_unicode()
    specials = {name: vocab.text_size + i for i, name in enumerate(SPECIALS)}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": False}
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": name, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for name, i in specials.items()],
        "normalizer": None, "pre_tokenizer": byte_level,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<bos>": {"id": "<bos>", "ids": [vocab.bos],
                                         "tokens": ["<bos>"]}}},
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {table[b]: b for b in range(256)}, "merges": []},
    }
    out_dir = pathlib.Path(out_dir)
    (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False, indent=1))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>",
        "eos_token": "<eos>", "pad_token": "<pad>", "add_bos_token": True,
        "model_max_length": int(cfg.data.seq_len),
        "clean_up_tokenization_spaces": False}, indent=1))


def write_generation_config(out_dir, vocab) -> None:
    (pathlib.Path(out_dir) / "generation_config.json").write_text(json.dumps({
        "bos_token_id": vocab.bos, "eos_token_id": vocab.eos, "pad_token_id": vocab.pad,
        "do_sample": False}, indent=1))


def write_mmar_json(out_dir, cfg, vocab, *, fmt, step, codes_shape) -> None:
    layout = {
        "format": fmt, "step": step, "text_tokenizer": cfg.vocab.text_tokenizer,
        "text_size": vocab.text_size,
        "special_ids": {name: vocab.text_size + i for i, name in enumerate(SPECIALS)},
        "image_offset": vocab.image_offset, "num_image_codes": vocab.num_image_codes,
        # RandAR (mmar/data/orders.py): P_k = position_offset + k precedes the code at grid k
        "image_order": cfg.data.image_order,
        "position_offset": vocab.position_offset, "num_position_ids": vocab.num_positions,
        "vocab_size": cfg.model.vocab_size, "image_size": cfg.data.image_size,
        "codes_shape": list(codes_shape) if codes_shape else None,
        "codes_per_image": int(np.prod(codes_shape)) if codes_shape else None,
        "image_tokenizer": IMAGE_DIR if codes_shape else None,
    }
    (pathlib.Path(out_dir) / MMAR_JSON).write_text(json.dumps(layout, indent=1))


def _autoencoder(tok_cfg):
    """(ModelState, abstract params) of the image tokenizer on one CPU device."""
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices("cpu")[:1])
    return state_lib.create_abstract(lambda rngs: autoencoder.Autoencoder(tok_cfg, rngs=rngs),
                                     mesh)


def export_image_tokenizer(step_dir, out_dir, cfg) -> tuple[int, ...]:
    """Image tokenizer weights (names as in the checkpoint) + config; returns the codes'
    shape of one image: (h, w), or (h, w, depth) for RQ."""
    reader = orbax_reader.CheckpointReader(step_dir)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    st.write_file(out_dir / "model.safetensors",
                  [st.Planned(n, reader.shape(n), reader.dtype(n),
                              lambda n=n: reader.read(n)) for n in reader.names])
    size = int(cfg.data.image_size)
    depth = derived.quantizer_depth(cfg.image_tokenizer)
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

    def image_prompt(self, caption_ids) -> list[int]:
        """`<bos> caption <boi>` (a leading `<bos>` in caption_ids is kept, not doubled)."""
        ids = [int(i) for i in caption_ids]
        bos, boi = self.layout["special_ids"]["<bos>"], self.layout["special_ids"]["<boi>"]
        return ([] if ids[:1] == [bos] else [bos]) + ids + [boi]

    def generation_kwargs(self) -> dict:
        """`generate` arguments that draw exactly one image: codes only, codes_per_image."""
        lo = self.layout["image_offset"]
        hi = lo + self.layout["num_image_codes"]
        suppress = [i for i in range(self.layout["vocab_size"]) if not lo <= i < hi]
        n = self.codes_per_image
        return {"max_new_tokens": n, "min_new_tokens": n, "suppress_tokens": suppress}

    def decode_ids(self, ids) -> np.ndarray:
        """Image-code ids [N, codes_per_image] (offset included) -> uint8 [N, H, W, 3]."""
        ids = np.asarray(ids)
        codes = ids - self.layout["image_offset"]
        if ids.ndim != 2 or ids.shape[1] != self.codes_per_image:
            raise ValueError(f"expected ids [N, {self.codes_per_image}], got {ids.shape}")
        if codes.min() < 0 or codes.max() >= self.layout["num_image_codes"]:
            raise ValueError("ids outside the image-code range "
                             f"[{self.layout['image_offset']}, "
                             f"{self.layout['image_offset'] + self.layout['num_image_codes']})")
        return self.decode_codes(codes)

    def decode_codes(self, codes) -> np.ndarray:
        if self._decode is None:
            self._decode = jax.jit(lambda p, c: autoencoder.to_uint8(
                self._state.merge(p).decode_codes(c)))
        codes = np.asarray(codes, np.int32).reshape(-1, *self.layout["codes_shape"])
        return np.asarray(self._decode(self._params, codes))

    @staticmethod
    def save_png(images, path) -> None:
        """One image, or a row of several, as a PNG."""
        images = np.asarray(images)
        row = images if images.ndim == 3 else np.concatenate(list(images), axis=1)
        Image.fromarray(row).save(path)
