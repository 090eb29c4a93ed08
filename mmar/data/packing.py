"""Packing: several documents per row, never an image cut in half.

    documents {tokens, modality, loss_weights} (any length)
      -> FitToRows:  a document longer than `seq_len` is cut between segments or inside text
                     (`oversize="split"`: an image that does not fit moves to the next row) or
                     dropped (`oversize="drop"`); one image longer than a row is always
                     dropped. Every split and drop is counted, and logged.
      -> grain.experimental.FirstFitPackIterDataset: whole pieces into `num_bins` rows at a
                     time, first fit; Grain numbers the documents of a row 1, 2, ... and
                     restarts positions at 0 for each one.
      -> rows {tokens, positions, segment_ids, modality, loss_weights} of length `seq_len`

Grain's packer never cuts an element (it raises on one longer than a row), so keeping images
whole only needs the pieces to be cut at the right places first, which is FitToRows' job.
Attention never crosses documents because the model masks by `segment_ids`
(mmar/model/attention.py:attention_mask), and the first token of each document has loss weight 0,
so nothing is predicted across a document boundary either.

Both stages are Grain iterators with `get_state`/`set_state`, so a checkpoint restores the
exact row stream (FirstFit re-packs from the parent state of its last emitted batch).
"""
from __future__ import annotations

import grain
import numpy as np

from mmar.data import sequences
from mmar.errors import UserError
from mmar.vocab import Vocab

OVERSIZE = ("split", "drop")
MIN_DOCUMENTS_FOR_FRACTION = 100  # below this many documents, the drop fraction is noise
MAX_LOGGED = 20                   # drops logged one by one; the counters keep counting


class BadDataError(UserError, RuntimeError):
    """Too many records or documents were unusable: past `data.max_bad_fraction`."""


class FitToRows(grain.IterDataset):
    """Documents longer than `seq_len` split (never inside an image) or dropped, counted."""

    def __init__(self, parent: grain.IterDataset, vocab: Vocab, *, seq_len: int,
                 oversize: str = "split", max_bad_fraction: float = 0.01, log=print):
        super().__init__(parent)
        if oversize not in OVERSIZE:
            raise ValueError(f"data.oversize={oversize!r}: must be one of {OVERSIZE}")
        self.vocab, self.seq_len, self.oversize = vocab, seq_len, oversize
        self.max_bad_fraction, self.log = max_bad_fraction, log

    def __iter__(self):
        return _FitToRowsIterator(self._parent.__iter__(), self)

    def __str__(self):
        return f"FitToRows(seq_len={self.seq_len}, oversize={self.oversize})"


class _FitToRowsIterator(grain.DatasetIterator):
    def __init__(self, parent, ds: FitToRows):
        super().__init__(parent)
        self.ds = ds
        self.counts = {"documents": 0, "split": 0, "dropped": 0}
        self._pieces, self._next_piece = [], 0
        self._before = None  # (parent state, counts) before the document being emitted
        self._replaying = False

    def _drop(self, doc, why: str):
        self.counts["dropped"] += 1
        c, ds = self.counts, self.ds
        where = f" ({doc['id']})" if "id" in doc else ""
        if c["dropped"] <= MAX_LOGGED and not self._replaying:
            ds.log(f"[data] dropped document{where}: {why} "
                          f"({c['dropped']} of {c['documents']} documents dropped so far)")
        if (c["documents"] >= MIN_DOCUMENTS_FOR_FRACTION
                and c["dropped"] > ds.max_bad_fraction * c["documents"]):
            raise BadDataError(
                f"{c['dropped']} of {c['documents']} documents dropped (latest{where}: {why}), "
                f"more than data.max_bad_fraction={ds.max_bad_fraction}; raise data.seq_len, "
                f"set data.oversize='split', or fix the data")

    def __next__(self):
        ds = self.ds
        while self._next_piece >= len(self._pieces):
            self._before = (self._parent.get_state(), dict(self.counts))
            doc = next(self._parent)
            self.counts["documents"] += 1
            n = len(doc["tokens"])
            if n <= ds.seq_len:
                self._pieces, self._next_piece = [doc], 0
                continue
            if ds.oversize == "drop":
                self._drop(doc, f"{n} tokens > data.seq_len={ds.seq_len} (data.oversize=drop)")
                continue
            example = {k: doc[k] for k in ("tokens", "modality", "loss_weights")}
            pieces = sequences.split_document(example, ds.seq_len, ds.vocab)
            if pieces is None:
                self._drop(doc, f"an image longer than data.seq_len={ds.seq_len}")
                continue
            self.counts["split"] += 1
            self._pieces, self._next_piece = pieces, 0
        piece = self._pieces[self._next_piece]
        self._next_piece += 1
        return {k: piece[k] for k in ("tokens", "modality", "loss_weights")}

    def get_state(self):
        if self._next_piece < len(self._pieces):  # mid-document: replay it on restore
            parent, counts = self._before
            return {"parent": parent, "piece": self._next_piece, **counts}
        return {"parent": self._parent.get_state(), "piece": 0, **self.counts}

    def set_state(self, state):
        self._parent.set_state(state["parent"])
        self.counts = {k: int(state[k]) for k in self.counts}
        self._pieces, self._next_piece = [], 0
        if state["piece"]:
            self._replaying = True
            try:
                next(self)  # re-reads (and re-counts) the document being split
            finally:
                self._replaying = False
            self._next_piece = state["piece"]


class _Rows(grain.transforms.Map):
    """Grain's packed names (`tokens_segment_ids`, ...) -> the rows of docs/architecture.md."""

    def map(self, packed):
        return {"tokens": packed["tokens"], "positions": packed["tokens_positions"],
                "segment_ids": packed["tokens_segment_ids"], "modality": packed["modality"],
                "loss_weights": packed["loss_weights"]}


def pack(ds: grain.IterDataset, vocab: Vocab, *, seq_len: int, num_bins: int = 16,
         oversize: str = "split", max_bad_fraction: float = 0.01,
         log=print) -> grain.IterDataset:
    """Documents -> packed rows of `seq_len` (see the module docstring)."""
    ds = FitToRows(ds, vocab, seq_len=seq_len, oversize=oversize,
                   max_bad_fraction=max_bad_fraction, log=log)
    lengths = {"tokens": seq_len, "modality": seq_len, "loss_weights": seq_len}
    ds = grain.experimental.FirstFitPackIterDataset(
        ds, length_struct=lengths, num_packing_bins=num_bins, shuffle_bins=False,
        padding_struct={"tokens": vocab.pad, "modality": 0, "loss_weights": 0.0})
    return ds.map(_Rows())


def counts(iterator) -> dict[str, int]:
    """FitToRows' live counters (documents, split, dropped) in a pipeline's iterator tree.

    (The counters in `get_state()` are those of the state a restore would resume from, which
    for FirstFit packing is its last emitted batch, so they can lag behind.)
    """
    todo = [iterator]
    while todo:
        it = todo.pop()
        if isinstance(it, _FitToRowsIterator):
            return dict(it.counts)
        todo.extend(getattr(it, "_parents", ()))
    raise ValueError("no FitToRows stage in this iterator (in the main process)")


def efficiency(rows) -> float:
    """Share of row slots that hold a document token (not padding)."""
    seg = np.asarray(rows["segment_ids"])
    return float((seg > 0).mean())
