"""Image token orders for training: raster, RAR (random permutation, annealed) and RandAR.

`data.image_order` picks one (`mmar.derived.IMAGE_ORDERS`); every order keeps a row's text
exactly as in raster order and changes only what lies between `<boi>` and `<eoi>`:

* ``raster``: `<boi> c_0 ... c_{n-1} <eoi>`; rows are unchanged (no `targets` feature).
* ``rar`` (RAR, Yu et al. 2024): with probability r(step) a row's image codes are permuted in
  place, `<boi> c_{pi_0} ... c_{pi_{n-1}} <eoi>`. Causality stays by slot (the attention mask
  is untouched); the RoPE position of every code stays its *raster* position
  (`pos(<boi>) + 1 + grid index`) so a code keeps its place in the image whatever its slot,
  and the model is told *which* code comes next by a learned target embedding added to the
  input: `targets[t]` = k + 1 when the token in slot t + 1 is the code at grid index k, 0
  otherwise (model.num_targets = n + 1 rows). RAR's own design adds a target-aware absolute
  position embedding; with RoPE the current code's place is already in its rotation, so the
  only missing piece is the next code's place: that is what the target table carries.
  r(step) is 1 until `data.rar.anneal_start` x train.steps, then decays linearly to 0 at
  `data.rar.anneal_end` x train.steps, so the model ends training in raster order and is
  sampled in raster order (mmar/sample/plain.py feeds raster targets).
* ``randar`` (RandAR, Pang et al. 2024): a fresh random order per example, each code preceded
  by a position-instruction token saying where it goes:
  `<boi> P_{pi_0} c_{pi_0} ... P_{pi_{n-1}} c_{pi_{n-1}} <eoi>` (P ids: mmar/vocab.py). The
  P tokens weigh 0 in the loss (the sampler chooses the order, the model does not predict
  it); the code after P_j is predicted at P_j's slot. RoPE: P_j and c_j both sit at the
  raster position of j (as RandAR gives both the 2-D RoPE of position j), and `<eoi>` and
  everything after it keep their raster positions, so positions never depend on the order
  and a text prompt has the same positions in every order. P tokens have modality 1 (they
  belong to the image stream; Mixture-of-Transformers routes them to the image weights).
  Rows are n tokens per image longer: data.seq_len must hold them.

Everything here works on one row's numpy arrays; the Grain pipeline (pipeline.py) calls it.
"""
from __future__ import annotations

import numpy as np

from mmar.vocab import Vocab

def rar_probability(step: int, total_steps: int, start: float, end: float) -> float:
    """RAR's permutation probability r at 0-based `step`: 1 before start x total, linear to 0
    at end x total, 0 after (start == end: a step from 1 to 0)."""
    a, b = start * total_steps, end * total_steps
    if step < a:
        return 1.0
    if step >= b:
        return 0.0
    return float(1.0 - (step - a) / (b - a))


def image_spans(tokens, vocab: Vocab) -> list[tuple[int, int]]:
    """(slot of the first code, number of codes) of every complete image in a row."""
    tokens = np.asarray(tokens)
    spans, start = [], None
    for i, t in enumerate(tokens.tolist()):
        if t == vocab.boi:
            start = i + 1
        elif t == vocab.eoi and start is not None:
            spans.append((start, i - start))
            start = None
    return spans


def raster_targets(tokens, vocab: Vocab) -> np.ndarray:
    """targets [S] of a raster row: k + 1 in the slot before the code at grid index k."""
    targets = np.zeros(len(tokens), np.int32)
    for start, n in image_spans(tokens, vocab):
        targets[start - 1:start - 1 + n] = np.arange(1, n + 1)
    return targets


def rar_permute(row: dict, vocab: Vocab, perms) -> dict:
    """A raster row (with positions) -> the same row with image i's codes in order perms[i]
    (slot j of the image holds grid index perms[i][j]), raster RoPE positions kept with each
    code, and `targets`. perms[i] = None (or the identity) leaves image i in raster order."""
    out = {k: np.array(v) for k, v in row.items()}
    out["targets"] = raster_targets(row["tokens"], vocab)
    for (start, n), perm in zip(image_spans(row["tokens"], vocab), perms):
        if perm is None:
            continue
        perm = np.asarray(perm)
        if sorted(perm.tolist()) != list(range(n)):
            raise ValueError(f"a permutation of {n} codes was expected, got {perm.tolist()}")
        for k in ("tokens", "positions", "modality", "loss_weights"):
            out[k][start:start + n] = row[k][start + perm]
        out["targets"][start - 1:start - 1 + n] = perm + 1
    return out


def rar_unpermute(row: dict, vocab: Vocab) -> dict:
    """The inverse of `rar_permute`: back to raster order, read from the targets alone."""
    out = {k: np.array(v) for k, v in row.items()}
    for start, n in image_spans(row["tokens"], vocab):
        grid = row["targets"][start - 1:start - 1 + n] - 1
        for k in ("tokens", "positions", "modality", "loss_weights"):
            out[k][start + grid] = row[k][start:start + n]
        out["targets"][start - 1:start - 1 + n] = np.arange(1, n + 1)
    return out


def randar_document(doc: dict, vocab: Vocab, orders) -> dict:
    """An unpadded raster document {tokens, positions, modality, loss_weights} -> RandAR
    order: image i as `<boi> P_{o_0} c_{o_0} ... <eoi>` with o = orders[i] (grid indices)."""
    spans = image_spans(doc["tokens"], vocab)
    if len(orders) != len(spans):
        raise ValueError(f"{len(orders)} orders for {len(spans)} images")
    pieces, last = {k: [] for k in doc}, 0
    for (start, n), order in zip(spans, orders):
        order = np.asarray(order)
        if sorted(order.tolist()) != list(range(n)):
            raise ValueError(f"an order of {n} grid indices was expected, got {order.tolist()}")
        for k, v in doc.items():
            pieces[k].append(v[last:start])
        codes = slice(start, start + n)
        p_tok = vocab.position_ids(order)
        c_tok = doc["tokens"][codes][order]
        pos = doc["positions"][codes][order]
        pieces["tokens"].append(np.stack([p_tok, c_tok], 1).reshape(-1))
        pieces["positions"].append(np.repeat(pos, 2))
        pieces["modality"].append(np.ones(2 * n, np.int32))
        w = np.stack([np.zeros(n, np.float32), doc["loss_weights"][codes][order]], 1)
        pieces["loss_weights"].append(w.reshape(-1))
        last = start + n
    for k, v in doc.items():
        pieces[k].append(v[last:])
    return {k: np.concatenate(v).astype(doc[k].dtype) for k, v in pieces.items()}


def randar_raster_codes(tokens, vocab: Vocab) -> list[np.ndarray]:
    """The codes of each RandAR image of a row back in raster order (from its P tokens)."""
    tokens = np.asarray(tokens)
    out = []
    for start, length in image_spans(tokens, vocab):
        pairs = tokens[start:start + length].reshape(-1, 2)
        grid = pairs[:, 0] - vocab.position_offset
        codes = np.zeros(len(pairs), np.int32)
        codes[grid] = vocab.codes_from_ids(pairs[:, 1])
        out.append(codes)
    return out


def pad(doc: dict, vocab: Vocab, seq_len: int, *, what: str) -> dict:
    """An unpadded document with explicit positions (and maybe targets) -> a row of
    `seq_len` (segment 1 for the document, 0 and pad ids after it)."""
    n = len(doc["tokens"])
    if n > seq_len:
        raise ValueError(f"{what}: {n} tokens do not fit data.seq_len={seq_len}")
    row = {"tokens": np.full(seq_len, vocab.pad, np.int32),
           "segment_ids": np.zeros(seq_len, np.int32)}
    row["segment_ids"][:n] = 1
    row["tokens"][:n] = doc["tokens"]
    for k in ("positions", "modality", "targets"):
        if k in doc:
            row[k] = np.zeros(seq_len, np.int32)
            row[k][:n] = doc[k]
    row["loss_weights"] = np.zeros(seq_len, np.float32)
    row["loss_weights"][:n] = doc["loss_weights"]
    return row


def unpadded(row: dict) -> dict:
    """The document part (segment 1) of a one-document row."""
    n = int((np.asarray(row["segment_ids"]) != 0).sum())
    return {k: np.asarray(v)[:n] for k, v in row.items() if k != "segment_ids"}


def randar_row(row: dict, vocab: Vocab, seq_len: int, rng: np.random.Generator | None,
               *, what: str = "document") -> dict:
    """A padded raster row -> a padded RandAR row, a fresh random order per image from `rng`
    (None: raster order, e.g. for held-out loss)."""
    doc = unpadded(row)
    spans = image_spans(doc["tokens"], vocab)
    orders = [rng.permutation(n) if rng is not None else np.arange(n) for _, n in spans]
    return pad(randar_document(doc, vocab, orders), vocab, seq_len, what=what)


def raster_row(row: dict, vocab: Vocab, order: str, seq_len: int) -> dict:
    """A raster row as a model trained in `order` reads it in raster order (held-out loss):
    raster targets for RAR, raster-ordered P c pairs for RandAR, unchanged for raster."""
    if order == "rar":
        return rar_permute(row, vocab, [None] * len(image_spans(row["tokens"], vocab)))
    if order == "randar":
        return randar_row(row, vocab, seq_len, None)
    return row
