"""`TextTokenizer`: a Hugging Face `tokenizers` tokenizer.json as mmar's text ids.

mmar lays out its own specials (`<pad> <bos> <eos> <boi> <eoi>`) after the text ids
(mmar/vocab.py), so the tokenizer encodes without its post-processor (no BOS/EOS of its
own: mmar adds `<bos>` and `<eos>` around a document) and decodes only ids inside the text
range. Special tokens the file itself defines (a pretrained model's `<|endoftext|>`, ...)
are ordinary text ids here, matched in the text as the file says.

The same interface as `mmar.vocab.ByteTokenizer` (`vocab_size`, `kind`, `encode`,
`decode`, `identity`), so every caller takes either.
"""
from __future__ import annotations

import hashlib
import json

import tokenizers
from etils import epath

from mmar import vocab as vocab_lib
from mmar.errors import UserError


class TextTokenizerError(UserError, ValueError):
    """A tokenizer.json that does not fit the run's config (unreadable, other size)."""


class TextTokenizer:
    """Text <-> ids [0, vocab_size) through a tokenizer.json (its text kept, so the object
    pickles into Grain worker processes as JSON, and its sha256 names it)."""

    def __init__(self, json_text: str, *, kind: str, vocab_size: int, source: str = ""):
        self.kind, self.vocab_size, self.source = kind, int(vocab_size), source
        self.json_text = json_text
        self.sha256 = hashlib.sha256(json_text.encode("utf-8")).hexdigest()
        try:
            self._tok = tokenizers.Tokenizer.from_str(json_text)
        except Exception as e:  # the Rust parser's own error type
            raise TextTokenizerError(f"{source or 'tokenizer.json'}: not a tokenizers "
                                     f"tokenizer.json ({e})") from None
        self.file_ids = vocab_lib.ids_in_tokenizer_json(json.loads(json_text))
        if self.file_ids > self.vocab_size:
            raise TextTokenizerError(
                f"{source}: uses {self.file_ids} ids, the run's vocabulary has "
                f"{self.vocab_size} text ids (vocab.text_vocab_size)")

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids) -> str:
        """The text of the ids in the text range (specials and image ids are dropped, as the
        byte tokenizer drops them)."""
        ids = [int(i) for i in ids if 0 <= int(i) < self.file_ids]
        return self._tok.decode(ids, skip_special_tokens=False)

    def identity(self) -> dict:
        """What makes its ids: recorded with token shards and compared (mmar/data/tokens.py)."""
        return {"kind": self.kind, "size": self.vocab_size, "sha256": self.sha256}

    @property
    def backend(self) -> tokenizers.Tokenizer:
        return self._tok

    def __getstate__(self):
        return {"json_text": self.json_text, "kind": self.kind, "vocab_size": self.vocab_size,
                "source": self.source}

    def __setstate__(self, state):
        self.__init__(state["json_text"], kind=state["kind"], vocab_size=state["vocab_size"],
                      source=state["source"])

    def __repr__(self) -> str:
        return (f"TextTokenizer({self.kind}, {self.vocab_size} text ids, "
                f"sha256 {self.sha256[:12]}.., {self.source})")


def load(path, *, kind: str, vocab_size: int) -> TextTokenizer:
    """The tokenizer.json at `path` (local or gs://). A trained one (bpe / unigram) must have
    exactly `vocab_size` ids: `mmar text-tokenizer-train` pads it to the configured size, so
    another count means the config changed after training."""
    path = epath.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise TextTokenizerError(f"{path}: cannot be read ({e})") from None
    tok = TextTokenizer(text, kind=kind, vocab_size=vocab_size, source=str(path))
    if kind in vocab_lib.TRAINED_KINDS and tok.file_ids != vocab_size:
        raise TextTokenizerError(
            f"{path}: a {kind} tokenizer of {tok.file_ids} ids, but this config has "
            f"vocab.text_vocab_size={vocab_size}; use the --workdir it was trained for, or "
            "another --workdir (`mmar text-tokenizer-train` trains one there)")
    return tok
