"""Documents -> token rows: `tokens`, `positions`, `segment_ids`, `modality`, `loss_weights`.

A row is one document padded to `seq_len` (packing several per row comes with the data
issue). `modality[t]` is 1 for image codes, 0 otherwise; `loss_weights[t]` weighs the
prediction of `tokens[t]` (position 0 is never predicted, padding weighs 0), using the
per-modality weights of the config.
"""
from __future__ import annotations

import numpy as np

from mmar.vocab import Vocab

FEATURES = ("tokens", "positions", "segment_ids", "modality", "loss_weights")


def pair_tokens(caption_ids, image_ids, vocab: Vocab, *, image_first: bool):
    """Token ids and modality flags of a text-image pair, before padding."""
    caption_ids = np.asarray(caption_ids, np.int32)
    image_ids = np.asarray(image_ids, np.int32)
    image = np.concatenate([[vocab.boi], image_ids, [vocab.eoi]]).astype(np.int32)
    image_mod = np.concatenate([[0], np.ones(len(image_ids), np.int32), [0]])
    text_mod = np.zeros(len(caption_ids), np.int32)
    if image_first:
        tokens = np.concatenate([[vocab.bos], image, caption_ids, [vocab.eos]])
        modality = np.concatenate([[0], image_mod, text_mod, [0]])
    else:
        tokens = np.concatenate([[vocab.bos], caption_ids, image, [vocab.eos]])
        modality = np.concatenate([[0], text_mod, image_mod, [0]])
    return tokens.astype(np.int32), modality.astype(np.int32)


def pad_row(tokens, modality, vocab: Vocab, seq_len: int, *, text_weight: float = 1.0,
            image_weight: float = 1.0, what: str = "document") -> dict[str, np.ndarray]:
    n = len(tokens)
    if n > seq_len:
        raise ValueError(f"{what}: {n} tokens do not fit data.seq_len={seq_len}")
    row = {
        "tokens": np.full(seq_len, vocab.pad, np.int32),
        "positions": np.zeros(seq_len, np.int32),
        "segment_ids": np.zeros(seq_len, np.int32),
        "modality": np.zeros(seq_len, np.int32),
        "loss_weights": np.zeros(seq_len, np.float32),
    }
    row["tokens"][:n] = tokens
    row["positions"][:n] = np.arange(n)
    row["segment_ids"][:n] = 1
    row["modality"][:n] = modality
    row["loss_weights"][1:n] = np.where(modality[1:] == 1, image_weight, text_weight)
    return row


def pair_example(caption_ids, image_ids, vocab: Vocab, seq_len: int, *, image_first: bool,
                 text_weight: float = 1.0, image_weight: float = 1.0) -> dict[str, np.ndarray]:
    tokens, modality = pair_tokens(caption_ids, image_ids, vocab, image_first=image_first)
    return pad_row(tokens, modality, vocab, seq_len, text_weight=text_weight,
                   image_weight=image_weight,
                   what=f"pair with {len(caption_ids)} caption and {len(image_ids)} image tokens")
