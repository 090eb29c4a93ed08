"""Documents -> token sequences: `tokens`, `positions`, `segment_ids`, `modality`, `loss_weights`.

One format for every kind of data: a *document* is a list of segments in any order, each
`("text", ids)` or `("image", ids)` (ids already in the unified token space, mmar/vocab.py):

    <bos> segment_1 ... segment_n <eos>        an image segment is <boi> c_1 ... c_n <eoi>
                                               (keep-aspect: <boi> <h> <w> rows <eoi>,
                                               `Vocab.image_body`)

A text-to-image pair is `[text, image]`, image-to-text `[image, text]`, an interleaved story
`[text, image, text, image, ...]`. `modality[t]` is 1 for image codes, 0 otherwise;
`loss_weights[t]` weighs the prediction of `tokens[t]` (the first token of a document is never
predicted, padding weighs 0) with the per-modality weights of the config.

`document_example` gives the unpadded sequence that packing (mmar/data/packing.py) places into
rows; `pad_row` gives a row holding one document (the demo's unpacked rows).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmar.vocab import Vocab

FEATURES = ("tokens", "positions", "segment_ids", "modality", "loss_weights")
TEXT, IMAGE = "text", "image"


def document_tokens(segments: Sequence[tuple[str, Sequence[int]]], vocab: Vocab):
    """Token ids and modality flags of a document, before padding."""
    tokens, modality = [np.array([vocab.bos], np.int32)], [np.zeros(1, np.int32)]
    for kind, ids in segments:
        ids = np.asarray(ids, np.int32).reshape(-1)
        if kind == TEXT:
            tokens.append(ids)
            modality.append(np.zeros(len(ids), np.int32))
        elif kind == IMAGE:
            tokens.append(np.concatenate([[vocab.boi], ids, [vocab.eoi]]).astype(np.int32))
            # the size and <eol> ids of a keep-aspect image are text-like structure, as
            # <boi> and <eoi> are (mixture-of-transformers weights, per-modality loss)
            inner = (~vocab.is_layout(ids)).astype(np.int32)
            modality.append(np.concatenate([[0], inner, [0]]))
        else:
            raise ValueError(f"segment kind must be {TEXT!r} or {IMAGE!r}, got {kind!r}")
    tokens.append(np.array([vocab.eos], np.int32))
    modality.append(np.zeros(1, np.int32))
    return np.concatenate(tokens).astype(np.int32), np.concatenate(modality).astype(np.int32)


def drop_captions(segments, probability: float, rng: np.random.Generator):
    """Classifier-free guidance: each text segment right before an image is removed with
    `probability`, so the model also learns images with no (or less) text to condition on.

    One draw per such caption; other text (after the last image, or between two texts) stays.
    """
    if probability <= 0:
        return list(segments)
    out = []
    for i, seg in enumerate(segments):
        before_image = (seg[0] == TEXT and i + 1 < len(segments)
                        and segments[i + 1][0] == IMAGE)
        if before_image and rng.random() < probability:
            continue
        out.append(seg)
    return out


def weigh(modality, *, text_weight: float = 1.0, image_weight: float = 1.0) -> np.ndarray:
    """Per-token loss weights of one document: by modality, 0 for its first token."""
    w = np.where(np.asarray(modality) == 1, image_weight, text_weight).astype(np.float32)
    w[:1] = 0.0
    return w


def document_example(segments, vocab: Vocab, *, text_weight: float = 1.0,
                     image_weight: float = 1.0) -> dict[str, np.ndarray]:
    """{tokens, modality, loss_weights} of one document, unpadded (the input of packing)."""
    tokens, modality = document_tokens(segments, vocab)
    return {"tokens": tokens, "modality": modality,
            "loss_weights": weigh(modality, text_weight=text_weight, image_weight=image_weight)}


def pair_tokens(caption_ids, image_ids, vocab: Vocab, *, image_first: bool):
    """Token ids and modality flags of a text-image pair, before padding."""
    segments = [(TEXT, caption_ids), (IMAGE, image_ids)]
    return document_tokens(segments[::-1] if image_first else segments, vocab)


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
    row["loss_weights"][:n] = weigh(modality, text_weight=text_weight,
                                    image_weight=image_weight)
    return row


def pair_example(caption_ids, image_ids, vocab: Vocab, seq_len: int, *, image_first: bool,
                 text_weight: float = 1.0, image_weight: float = 1.0) -> dict[str, np.ndarray]:
    tokens, modality = pair_tokens(caption_ids, image_ids, vocab, image_first=image_first)
    return pad_row(tokens, modality, vocab, seq_len, text_weight=text_weight,
                   image_weight=image_weight,
                   what=f"pair with {len(caption_ids)} caption and {len(image_ids)} image tokens")


def cut_points(tokens, vocab: Vocab) -> np.ndarray:
    """ok[c] is True when a row may end before token c: c is not inside <boi> ... <eoi>.

    Cutting before the <boi> is allowed (the whole image moves on); cutting anywhere after it
    up to and including the <eoi> is not, so an image is never split across rows.
    """
    tokens = np.asarray(tokens)
    depth = np.cumsum((tokens == vocab.boi).astype(np.int32) - (tokens == vocab.eoi))
    # depth[c - 1] > 0 means token c - 1 is <boi> or a code: token c is still in the image.
    ok = np.ones(len(tokens) + 1, bool)
    ok[1:len(tokens)] = depth[:-1] <= 0
    return ok


def split_document(example: dict[str, np.ndarray], seq_len: int,
                   vocab: Vocab) -> list[dict[str, np.ndarray]] | None:
    """Cuts a document longer than `seq_len` into pieces of at most `seq_len` tokens.

    Cuts fall in text or between segments, never inside an image: an image that does not fit
    the rest of a piece starts the next one. Each piece's first token gets weight 0 (nothing
    before it in its row predicts it). Returns None when one image alone is longer than
    `seq_len` (the document cannot be placed without cutting that image).
    """
    n = len(example["tokens"])
    ok = np.flatnonzero(cut_points(example["tokens"], vocab))
    pieces, start = [], 0
    while start < n:
        end = int(ok[np.searchsorted(ok, min(start + seq_len, n), side="right") - 1])
        if end <= start:
            return None
        piece = {k: v[start:end].copy() for k, v in example.items()}
        piece["loss_weights"][0] = 0.0
        pieces.append(piece)
        start = end
    return pieces
