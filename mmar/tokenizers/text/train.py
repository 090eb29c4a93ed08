"""Training a byte-level BPE or unigram text tokenizer from a stream of texts.

Both are byte-level (GPT-2's ByteLevel pre-tokenizer and decoder, all 256 bytes in the
alphabet), so every string encodes and decodes back exactly, as with mmar's byte tokenizer,
only in fewer ids. Texts stream through `tokenizers`' trainer (`train_from_iterator`): memory
grows with the number of distinct words, not with the corpus. Every `HOLD_OUT_EVERY`-th text
is held out (never trained on; up to `HELD_OUT_BYTES` of it kept) to measure bytes per token.

The result has exactly `vocab_size` ids, so the vocabulary layout follows from the config
alone (mmar/vocab.py): when the text is too small to learn that many tokens (the trainer
stops when no pair repeats), unused filler tokens `<unused_k>` fill the rest. They are never
produced by encoding: the byte-level pre-tokenizer splits `<`, `unused`, `_`, `k` and `>`
apart, and no merge builds them.

BPE training is deterministic: the same texts give the same tokenizer.json, byte for byte
(tested). `tokenizers`' unigram trainer is not quite: it sums scores in hash-map order, so
two runs can differ in the last digits of the scores and, rarely, in a piece.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mmar import vocab as vocab_lib
from mmar.tokenizers.text.model import TextTokenizerError

HOLD_OUT_EVERY = 20          # text i with i % 20 == 0 is held out
HELD_OUT_BYTES = 1 << 20     # at most this much held-out text is kept (the rest is skipped)
FILLER = "<unused_{}>"
LOG_EVERY = 100_000          # texts between progress lines


def new_tokenizer(kind: str) -> Tokenizer:
    """An untrained byte-level tokenizer of `kind` ("bpe" | "unigram")."""
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
    else:
        raise ValueError(f"vocab.text_tokenizer={kind!r}: mmar trains one of "
                         f"{vocab_lib.TRAINED_KINDS}")
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def _trainer(kind: str, vocab_size: int):
    common = dict(vocab_size=vocab_size, show_progress=False, special_tokens=[],
                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    if kind == "bpe":
        return trainers.BpeTrainer(min_frequency=2, **common)
    return trainers.UnigramTrainer(**common)


class Stream:
    """Texts -> the ones to train on (an iterator), holding out every `every`-th; counts
    what passed and logs progress. Nothing keeps the training texts."""

    def __init__(self, texts: Iterable[str], *, every: int = HOLD_OUT_EVERY,
                 held_bytes: int = HELD_OUT_BYTES, log=print):
        self.texts, self.every, self.held_bytes, self.log = texts, every, held_bytes, log
        self.held_out: list[str] = []
        self.train_texts = self.train_bytes = self.seen = self._held_size = 0

    def __iter__(self) -> Iterator[str]:
        t0 = time.perf_counter()
        for text in self.texts:
            if not text:
                continue
            self.seen += 1
            if self.seen % self.every == 1 % self.every:
                size = len(text.encode("utf-8"))
                if self._held_size + size <= self.held_bytes:
                    self.held_out.append(text)
                    self._held_size += size
                continue
            self.train_texts += 1
            self.train_bytes += len(text.encode("utf-8"))
            if self.seen % LOG_EVERY == 0:
                rate = self.seen / max(time.perf_counter() - t0, 1e-9)
                self.log(f"[text-tokenizer] {self.seen:,} texts read "
                         f"({self.train_bytes / 1e6:.1f} MB to train on, {rate:,.0f} texts/s)")
            yield text


def pad_to_size(data: dict, vocab_size: int) -> tuple[dict, int]:
    """A trained tokenizer.json (parsed) with filler tokens up to exactly `vocab_size` ids;
    returns it and the number of fillers."""
    model = data["model"]
    have = vocab_lib.ids_in_tokenizer_json(data)
    if have > vocab_size:
        raise ValueError(f"the trainer made {have} ids, more than vocab_size={vocab_size}")
    names = [FILLER.format(k) for k in range(vocab_size - have)]
    if model["type"] == "Unigram":
        low = min((score for _, score in model["vocab"]), default=0.0) - 10.0
        model["vocab"] += [[name, low] for name in names]
    else:
        model["vocab"].update({name: have + k for k, name in enumerate(names)})
    return data, len(names)


def bytes_per_token(tokenizer, texts: Iterable[str]) -> tuple[int, int]:
    """(UTF-8 bytes, tokens) of `texts` under `tokenizer` (anything with `encode`)."""
    n_bytes = n_tokens = 0
    for text in texts:
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(tokenizer.encode(text))
    return n_bytes, n_tokens


def train(texts: Iterable[str], kind: str, vocab_size: int, log=print) -> tuple[str, dict]:
    """(tokenizer.json text, summary) of a `kind` tokenizer of exactly `vocab_size` ids
    trained on `texts` (streamed once), with bytes per token on the held-out texts."""
    t0 = time.perf_counter()
    stream = Stream(texts, log=log)
    tok = new_tokenizer(kind)
    tok.train_from_iterator(iter(stream), _trainer(kind, vocab_size))
    if not stream.train_texts:
        raise TextTokenizerError("no text to train the text tokenizer on (the configured "
                                 "sources hold no captions or text segments)")
    data, fillers = pad_to_size(json.loads(tok.to_str()), vocab_size)
    trained = Tokenizer.from_str(json.dumps(data))
    json_text = trained.to_str(pretty=True)
    held_bytes, held_tokens = bytes_per_token(
        _Encoder(trained), stream.held_out)
    summary = {
        "kind": kind, "vocab_size": vocab_size, "learned_ids": vocab_size - fillers,
        "filler_ids": fillers, "train_texts": stream.train_texts,
        "train_bytes": stream.train_bytes, "held_out_texts": len(stream.held_out),
        "held_out_bytes": held_bytes, "held_out_tokens": held_tokens,
        "bytes_per_token": round(held_bytes / held_tokens, 4) if held_tokens else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if fillers:
        log(f"[text-tokenizer] the text gave {vocab_size - fillers} tokens; {fillers} unused "
            f"filler ids make up vocab.text_vocab_size={vocab_size}")
    return json_text, summary


class _Encoder:
    def __init__(self, tok: Tokenizer):
        self.tok = tok

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids
