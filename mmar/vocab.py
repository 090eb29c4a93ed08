"""The unified token space: text ids, then special ids, then image code ids.

    [0, V_text)                      text (bytes by default: V_text = 256)
    [V_text, V_text + 5)             <pad> <bos> <eos> <boi> <eoi>   (append only, never reorder)
    [image_offset, + num_codes)      image codes: id = image_offset + code
    [position_offset, + num_positions)  RandAR position instructions: id = position_offset + k
                                     means "the next code is the one at grid index k"
                                     (`data.image_order="randar"` only; 0 ids otherwise)
    padded up to a multiple of 128   (unused ids; never sampled)

Position ids come after the image codes so that a raster vocabulary (num_positions=0) keeps
every id, and a RandAR model's text, special and code ids are those of a raster model.

An image in a sequence is `<boi> c_1 ... c_n <eoi>` in raster order (other orders:
mmar/data/orders.py). A text-to-image pair is
`<bos> caption <boi> codes <eoi> <eos>`; image-to-text puts the image first:
`<bos> <boi> codes <eoi> caption <eos>`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

SPECIALS = ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>")
PAD_MULTIPLE = 128


class ByteTokenizer:
    """UTF-8 bytes as text ids: no files to ship, every string round-trips."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


@dataclasses.dataclass(frozen=True)
class Vocab:
    """Id ranges for one model; built from the text tokenizer and the image codebook size."""

    text_size: int
    num_image_codes: int
    num_positions: int = 0  # RandAR position-instruction ids (codes per image), else 0

    @property
    def pad(self) -> int:
        return self.text_size

    @property
    def bos(self) -> int:
        return self.text_size + 1

    @property
    def eos(self) -> int:
        return self.text_size + 2

    @property
    def boi(self) -> int:
        return self.text_size + 3

    @property
    def eoi(self) -> int:
        return self.text_size + 4

    @property
    def image_offset(self) -> int:
        return self.text_size + len(SPECIALS)

    @property
    def position_offset(self) -> int:
        return self.image_offset + self.num_image_codes

    @property
    def used(self) -> int:
        """Ids in use (text, specials, codes, position instructions), before padding."""
        return self.position_offset + self.num_positions

    @property
    def size(self) -> int:
        """Vocabulary size padded to a multiple of 128 (the model's embedding rows)."""
        return -(-self.used // PAD_MULTIPLE) * PAD_MULTIPLE

    def position_ids(self, grid_index) -> np.ndarray:
        """RandAR position-instruction ids of grid indices in [0, num_positions)."""
        k = np.asarray(grid_index)
        if k.size and (k.min() < 0 or k.max() >= self.num_positions):
            raise ValueError(f"grid indices must be in [0, {self.num_positions}) (the vocabulary's "
                             f"position ids), got [{k.min()}, {k.max()}]")
        return k.astype(np.int32) + self.position_offset

    def is_position(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        return (ids >= self.position_offset) & (ids < self.used)

    def image_ids(self, codes) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.size and (codes.min() < 0 or codes.max() >= self.num_image_codes):
            raise ValueError(f"image codes must be in [0, {self.num_image_codes}), got "
                             f"[{codes.min()}, {codes.max()}]")
        return codes.astype(np.int32) + self.image_offset

    def codes_from_ids(self, ids) -> np.ndarray:
        return np.asarray(ids, np.int32) - self.image_offset

    def is_image(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        return (ids >= self.image_offset) & (ids < self.image_offset + self.num_image_codes)

    def is_text(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        return (ids >= 0) & (ids < self.text_size)


def make_text_tokenizer(cfg) -> ByteTokenizer:
    """The `vocab.text_tokenizer` config field picks the tokenizer (SentencePiece comes later)."""
    if cfg.text_tokenizer != "bytes":
        raise ValueError(f"vocab.text_tokenizer={cfg.text_tokenizer!r}: only 'bytes' is "
                         "available so far")
    return ByteTokenizer()
