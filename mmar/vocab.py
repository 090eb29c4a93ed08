"""The unified token space: text ids, then special ids, then image code ids.

    [0, V_text)                      text: bytes (V_text = 256, the default), a BPE / unigram
                                     tokenizer trained by `mmar text-tokenizer-train`
                                     (V_text = vocab.text_vocab_size), or any tokenizer.json
                                     (V_text = its ids; its own special tokens are text ids)
    [V_text, V_text + 5)             <pad> <bos> <eos> <boi> <eoi>   (append only, never reorder)
    [image_offset, + num_codes)      image codes: id = image_offset + code
    [position_offset, + num_positions)  RandAR position instructions: id = position_offset + k
                                     means "the next code is the one at grid index k"
                                     (`data.image_order="randar"` only; 0 ids otherwise)
    [layout_offset, + 1 + grid_sides)  `data.keep_aspect` only (0 ids otherwise): <eol>
                                     (end of a row of codes), then the size ids:
                                     id = layout_offset + s means "s rows" or "s columns"
    padded up to a multiple of 128   (unused ids; never sampled)

A pretrained unified model (Chameleon / Anole, Emu3: `mmar import`, docs/pretrained.md)
keeps its own layout instead (`Vocab.pinned`, from `vocab.special_ids` and
`vocab.image_offset`): its tokenizer names every id, the specials and the image codes sit
where the checkpoint put them (the codes contiguous, id = image_offset + code), and nothing
is appended or padded, so its embedding rows keep their meaning. Emu3's images also carry
their size and row ends (`Vocab.emu3`, `image_body`).

Position ids come after the image codes so that a raster vocabulary (num_positions=0) keeps
every id, and a RandAR model's text, special and code ids are those of a raster model.

An image in a sequence is `<boi> c_1 ... c_n <eoi>` in raster order (other orders:
mmar/data/orders.py). With `data.keep_aspect` its grid shape comes first and every row
ends in `<eol>`, as Lumina-mGPT and Emu3 write images of any shape:
`<boi> <h> <w> c_1 .. c_w <eol> ... c_(n-w+1) .. c_n <eol> <eoi>` (`image_body`). A text-to-image pair is
`<bos> caption <boi> codes <eoi> <eos>`; image-to-text puts the image first:
`<bos> <boi> codes <eoi> caption <eos>`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os

import numpy as np

SPECIALS = ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>")
PAD_MULTIPLE = 128


class ByteTokenizer:
    """UTF-8 bytes as text ids: no files to ship, every string round-trips."""

    vocab_size = 256
    kind = "bytes"

    def identity(self) -> dict:
        """What makes its ids (recorded with token shards, compared by mmar/data/tokens.py)."""
        return {"kind": self.kind, "size": self.vocab_size}

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
    grid_sides: int = 0     # data.keep_aspect: size ids 1..grid_sides (and <eol>), else 0
    # A checkpoint's own layout: (pad, bos, eos, boi, eoi, image_offset); () = mmar's. Its
    # text ids are all `text_size` ids of its tokenizer except the specials and the codes.
    pinned: tuple = ()
    # Emu3's image layout (with `pinned`): the ids of <eol> <eof> <image token> '*' and the
    # digits '0'..'9' of its tokenizer; () = none. See `image_body`.
    emu3: tuple = ()

    def _special(self, i: int) -> int:
        return int(self.pinned[i]) if self.pinned else self.text_size + i

    @property
    def pad(self) -> int:
        return self._special(0)

    @property
    def bos(self) -> int:
        return self._special(1)

    @property
    def eos(self) -> int:
        return self._special(2)

    @property
    def boi(self) -> int:
        return self._special(3)

    @property
    def eoi(self) -> int:
        return self._special(4)

    @property
    def image_offset(self) -> int:
        return int(self.pinned[5]) if self.pinned else self.text_size + len(SPECIALS)

    @property
    def image_stop(self) -> int:
        """One past the last id of image modality (codes, RandAR positions, layout ids)."""
        return self.image_offset + self.num_image_codes if self.pinned else self.used

    @property
    def position_offset(self) -> int:
        return self.image_offset + self.num_image_codes

    @property
    def layout_offset(self) -> int:
        return self.position_offset + self.num_positions

    @property
    def has_rows(self) -> bool:
        """Images written row by row, each row ending in <eol>: keep-aspect (`grid_sides`)
        or Emu3's layout (`emu3`)."""
        return bool(self.grid_sides or self.emu3)

    @property
    def eol(self) -> int:
        """End of a row of codes (`has_rows` only)."""
        if self.emu3:
            return int(self.emu3[0])
        if not self.grid_sides:
            raise ValueError("this vocabulary has no <eol>: images are square "
                             "(data.keep_aspect=False)")
        return self.layout_offset

    def image_prefix(self, h: int, w: int) -> list[int]:
        """The ids between <boi> and an image's first row: its size. Keep-aspect: the size
        ids of h and w; Emu3: "h*w" as text (its tokenizer's digit ids) then <image token>."""
        if self.emu3:
            digits = lambda n: [int(self.emu3[4 + int(c)]) for c in str(int(n))]  # noqa: E731
            return [*digits(h), int(self.emu3[3]), *digits(w), int(self.emu3[2])]
        return [self.size_id(h), self.size_id(w)]

    def image_suffix(self) -> list[int]:
        """The ids between an image's last row and <eoi>: Emu3's <eof>, else none."""
        return [int(self.emu3[1])] if self.emu3 else []

    def parse_image_prefix(self, ids) -> tuple[int, int, int] | None:
        """(h, w, number of prefix ids) of the `image_prefix` that `ids` (the ids after an
        image's <boi>) start with; None while it is not whole yet. ValueError when the ids
        cannot start one."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if not self.emu3:
            if len(ids) < 2:
                return None
            if not self.is_layout(ids[:2]).all() or self.eol in ids[:2]:
                raise ValueError("an image starts with two size ids (its rows and columns)")
            return ids[0] - self.layout_offset, ids[1] - self.layout_offset, 2
        digit = {int(i): d for d, i in enumerate(self.emu3[4:])}
        star, wrapper = int(self.emu3[3]), int(self.emu3[2])
        if wrapper not in ids:
            if any(i not in digit and i != star for i in ids):
                raise ValueError("an Emu3 image starts with its size as text (h*w) and "
                                 "<image token>")
            return None
        lead = ids.index(wrapper)
        text = "".join("*" if i == star else str(digit.get(i, "?")) for i in ids[:lead])
        h, _, w = text.partition("*")
        if not (h.isdigit() and w.isdigit()) or int(h) < 1 or int(w) < 1:
            raise ValueError(f"an Emu3 image's size must read h*w, got {text!r}")
        return int(h), int(w), lead + 1

    @property
    def used(self) -> int:
        """Ids in use (text, specials, codes, position instructions, layout), before
        padding (a pinned layout: all of its tokenizer's ids)."""
        if self.pinned:
            return self.text_size
        return self.layout_offset + (1 + self.grid_sides if self.grid_sides else 0)

    @property
    def size(self) -> int:
        """Vocabulary size padded to a multiple of 128 (the model's embedding rows; a pinned
        layout: the checkpoint's rows, unpadded)."""
        if self.pinned:
            return self.text_size
        return -(-self.used // PAD_MULTIPLE) * PAD_MULTIPLE

    def position_ids(self, grid_index) -> np.ndarray:
        """RandAR position-instruction ids of grid indices in [0, num_positions)."""
        k = np.asarray(grid_index)
        if k.size and (k.min() < 0 or k.max() >= self.num_positions):
            raise ValueError(f"grid indices must be in [0, {self.num_positions}) (the vocabulary's "
                             f"position ids), got [{k.min()}, {k.max()}]")
        return k.astype(np.int32) + self.position_offset

    def size_id(self, side: int) -> int:
        """The id saying "`side` rows" (or columns), 1 <= side <= grid_sides."""
        if not 1 <= int(side) <= self.grid_sides:
            raise ValueError(f"a grid side must be in [1, {self.grid_sides}] (the "
                             f"vocabulary's size ids), got {side}")
        return self.layout_offset + int(side)

    def is_layout(self, ids) -> np.ndarray:
        """<eol> and the size ids (Emu3: its layout ids, digits included: inside an image
        they are structure, like <boi>)."""
        ids = np.asarray(ids)
        if self.emu3:
            return np.isin(ids, np.asarray(self.emu3))
        return (ids >= self.layout_offset) & (ids < self.used) if self.grid_sides else (
            np.zeros(ids.shape, bool))

    def image_body(self, codes, grid=None) -> np.ndarray:
        """The ids between an image's <boi> and <eoi>: its codes as ids, and with
        `has_rows` the size first (`image_prefix`), <eol> after each row and
        `image_suffix` last (`grid` (h, w); None: square). Emu3 writes
        `<|image start|> h*w <|image token|> rows <|extra_201|> <|image end|>`, each row
        ending in `<|extra_200|>`, as its processor and `convert_img2bpe` do."""
        ids = self.image_ids(np.asarray(codes).reshape(-1))
        if not self.has_rows:
            return ids
        h, w = grid if grid is not None else square_grid(ids.size)
        if h * w != ids.size:
            raise ValueError(f"{ids.size} codes do not fill a {h}x{w} grid")
        rows = np.concatenate([ids.reshape(h, w), np.full((h, 1), self.eol, np.int32)], 1)
        return np.concatenate([self.image_prefix(h, w), rows.reshape(-1),
                               self.image_suffix()]).astype(np.int32)

    def parse_image_body(self, ids) -> tuple[np.ndarray, tuple[int, int] | None]:
        """`image_body` read back: (codes [n], (h, w) or None without `has_rows`).
        ValueError when the ids are not one whole image of that form."""
        ids = np.asarray(ids, np.int32).reshape(-1)
        if not self.has_rows:
            if not self.is_image(ids).all():
                raise ValueError("an image holds only image codes")
            return self.codes_from_ids(ids), None
        prefix = self.parse_image_prefix(ids)
        if prefix is None:
            raise ValueError("an image's size is cut off")
        h, w, lead = prefix
        suffix = self.image_suffix()
        if suffix and list(ids[ids.size - len(suffix):]) != suffix:
            raise ValueError(f"an Emu3 image ends in <eof> (id {suffix[0]}) before <eoi>")
        body = ids[lead:ids.size - len(suffix)]
        if body.size != h * (w + 1):
            raise ValueError(f"a {h}x{w} image has {h * (w + 1)} ids after its size, got "
                             f"{body.size}")
        rows = body.reshape(h, w + 1)
        if (rows[:, -1] != self.eol).any() or not self.is_image(rows[:, :-1]).all():
            raise ValueError(f"each of the {h} rows must be {w} image codes and <eol>")
        return self.codes_from_ids(rows[:, :-1].reshape(-1)), (h, w)

    def is_position(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        return (ids >= self.position_offset) & (ids < self.layout_offset)

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
        text = (ids >= 0) & (ids < self.text_size)
        if self.pinned:   # the checkpoint's tokenizer also names the specials and the codes
            text &= ~self.is_image(ids) & ~np.isin(ids, np.asarray(self.pinned[:5]))
        return text


def square_grid(positions: int) -> tuple[int, int]:
    """(side, side) of a square image of `positions` grid positions (the default grid
    wherever one is not given)."""
    side = int(round(np.sqrt(positions)))
    return side, side


def text_or_bytes(text, vocab: Vocab):
    """`text` (the run's text tokenizer), or the byte tokenizer when none is given and
    `vocab` has the byte tokenizer's 256 text ids (callers that build `Vocab(256, n)`
    themselves). Any other vocabulary without its tokenizer is a ValueError: its ids would
    silently mean something else."""
    if text is not None:
        return text
    if vocab.text_size != ByteTokenizer.vocab_size:
        raise ValueError(f"a vocabulary of {vocab.text_size} text ids needs its text "
                         "tokenizer (mmar.rundir.load_text_tokenizer), none was given")
    return ByteTokenizer()


# ---- which text tokenizer -------------------------------------------------------------------
# `vocab.text_tokenizer`: "bytes" (ByteTokenizer), "bpe" / "unigram" (trained into the run
# directory by `mmar text-tokenizer-train`, loaded by mmar/rundir.py) or the path of a
# tokenizer.json (Hugging Face `tokenizers` format; a directory holding one). The vocabulary
# layout needs only the number of text ids, so it is known from the config alone: validation
# reads no tokenizer and loads no library (a path's file is read as plain JSON once).

TRAINED_KINDS = ("bpe", "unigram")
DEFAULT_TRAINED_SIZE = 32000   # vocab.text_vocab_size=0 with bpe / unigram
FIELD = "vocab.text_tokenizer"


def text_kind(vocab_cfg) -> str:
    """"bytes", "bpe", "unigram", or "file" (a path to an existing tokenizer.json)."""
    name = vocab_cfg.text_tokenizer
    return name if name in ("bytes", *TRAINED_KINDS) else "file"


def tokenizer_file(vocab_cfg) -> str:
    """The tokenizer.json a "file" text tokenizer names (a directory: its tokenizer.json);
    ValueError naming the field when there is none."""
    path = os.path.expanduser(str(vocab_cfg.text_tokenizer))
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
        raise ValueError(f"{FIELD}={vocab_cfg.text_tokenizer!r}: no such file; want 'bytes', "
                         "'bpe', 'unigram' or the path of a tokenizer.json (or of a directory "
                         "holding one)")
    return path


def tokenizer_json_size(path: str) -> int:
    """Ids a tokenizer.json uses (its model's vocabulary and its added tokens): max id + 1.
    ValueError naming the file when it is not a `tokenizers` tokenizer.json. Read once per
    version of the file (a pretrained one can be ~10 MB; every make_vocab asks)."""
    try:
        stat = os.stat(path)
    except OSError as e:
        raise ValueError(f"{FIELD}: {path} cannot be read ({e})") from None
    return _json_size(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _json_size(path: str, mtime_ns: int, size: int) -> int:
    try:
        with open(path, encoding="utf-8") as f:
            return ids_in_tokenizer_json(json.load(f))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{FIELD}: {path} is not a tokenizers tokenizer.json "
                         f"({type(e).__name__}: {e})") from None


def ids_in_tokenizer_json(data: dict) -> int:
    """max id + 1 over a parsed tokenizer.json's model vocabulary (a dict for BPE, WordPiece
    and WordLevel, a list of pieces for Unigram) and its added tokens."""
    vocab = data["model"]["vocab"]
    ids = list(vocab.values()) if isinstance(vocab, dict) else [len(vocab) - 1]
    ids += [t["id"] for t in data.get("added_tokens") or []]
    return max(int(i) for i in ids) + 1


def text_size(vocab_cfg) -> int:
    """Text ids of the run (V_text): 256 for bytes; `vocab.text_vocab_size` (0: 32000) for a
    trained bpe / unigram (padded to exactly that by unused ids when the text is too small
    for it); a file's own ids, or `vocab.text_vocab_size` when that is larger (ids kept
    unused, as a pretrained model's embedding may have more rows than its tokenizer)."""
    kind, size = text_kind(vocab_cfg), int(vocab_cfg.text_vocab_size)
    if kind == "bytes":
        return ByteTokenizer.vocab_size
    if kind in TRAINED_KINDS:
        return size or DEFAULT_TRAINED_SIZE
    path = tokenizer_file(vocab_cfg)
    n = tokenizer_json_size(path)
    if size and size < n:
        raise ValueError(f"vocab.text_vocab_size={size}: {path} uses {n} ids; 0 takes them "
                         "all, a larger value keeps the rest unused")
    return max(n, size)
