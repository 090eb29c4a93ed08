"""Packing: documents stay apart (in rows and in the model), images stay whole, resume is exact."""
import grain
import jax
import numpy as np
import pytest
from flax import nnx

from mmar.data import packing, sequences
from mmar.data.sequences import IMAGE, TEXT
from mmar.model.transformer import Decoder
from mmar.vocab import ByteTokenizer, Vocab
from tests.helpers.model_configs import tiny_cfg

V = Vocab(256, 16)
TXT = ByteTokenizer()


def _doc(i, rng):
    """A random interleaved document: 1-3 texts and 0-2 images of 4 codes."""
    segs = []
    for _ in range(int(rng.integers(1, 4))):
        segs.append((TEXT, TXT.encode(f"d{i}" + "x" * int(rng.integers(0, 12)))))
        if rng.random() < 0.6:
            segs.append((IMAGE, V.image_ids(rng.integers(0, 16, 4))))
    return {**sequences.document_example(segs, V), "id": f"doc{i}"}


def _docs(n, seed=0):
    rng = np.random.default_rng(seed)
    return [_doc(i, rng) for i in range(n)]


def _rows(docs, seq_len=48, **kw):
    ds = grain.MapDataset.source(docs).to_iter_dataset()
    return packing.pack(ds, V, seq_len=seq_len, num_bins=4, **kw)


def _segments(row):
    """The documents of a packed row, as token arrays, in row order."""
    seg = row["segment_ids"]
    return [row["tokens"][seg == s] for s in range(1, seg.max() + 1)]


def test_rows_hold_whole_documents_with_restarting_positions():
    docs = _docs(60)
    assert max(len(d["tokens"]) for d in docs) <= 64  # none needs splitting
    rows = list(_rows(docs, seq_len=64))
    seen = []
    for row in rows:
        assert all(len(row[k]) == 64 for k in sequences.FEATURES)
        seg, pos = row["segment_ids"], row["positions"]
        for s in range(1, seg.max() + 1):
            idx = np.flatnonzero(seg == s)
            assert (np.diff(idx) == 1).all()  # contiguous
            np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))
            assert row["loss_weights"][idx[0]] == 0  # nothing predicts across documents
        pad = seg == 0
        assert (row["tokens"][pad] == V.pad).all() and (row["loss_weights"][pad] == 0).all()
        seen += [tuple(t) for t in _segments(row)]
    assert sorted(seen) == sorted(tuple(d["tokens"]) for d in docs)  # each exactly once
    eff = packing.efficiency({"segment_ids": np.stack([r["segment_ids"] for r in rows])})
    assert eff > 0.8, eff


@pytest.mark.parametrize("oversize", ["split", "drop"])
def test_oversize_documents_split_at_image_boundaries_or_dropped(oversize):
    rng = np.random.default_rng(1)
    big = [(TEXT, TXT.encode("long" * 5)), (IMAGE, V.image_ids(rng.integers(0, 16, 12))),
           (TEXT, TXT.encode("tail")), (IMAGE, V.image_ids(rng.integers(0, 16, 12)))]
    huge_image = [(TEXT, TXT.encode("x")), (IMAGE, V.image_ids(rng.integers(0, 16, 30)))]
    small = [sequences.document_example([(TEXT, TXT.encode(f"s{i}")),
                                         (IMAGE, V.image_ids([i] * 4))], V) for i in range(6)]
    docs = [{**sequences.document_example(big, V), "id": "big"}, *small,
            {**sequences.document_example(huge_image, V), "id": "huge"}]
    logs = []
    it = iter(_rows(docs, seq_len=24, oversize=oversize, log=logs.append))
    rows = list(it)
    for row in rows:
        for t in _segments(row):
            assert (t == V.boi).sum() == (t == V.eoi).sum()  # no image cut
            for b, e in zip(np.flatnonzero(t == V.boi), np.flatnonzero(t == V.eoi)):
                assert e - b - 1 in (4, 12) and V.is_image(t[b + 1:e]).all()
    counts = packing.counts(it)
    tokens = np.concatenate([t for r in rows for t in _segments(r)])
    if oversize == "split":
        assert counts["split"] == 1 and counts["dropped"] == 1
        assert (tokens == V.boi).sum() == 2 + sum((d["tokens"] == V.boi).sum() for d in docs[1:7])
    else:
        assert counts["split"] == 0 and counts["dropped"] == 2
    assert counts["documents"] == 8
    why = "image longer than data.seq_len=24" if oversize == "split" else "35 tokens > data.seq_len=24"
    assert any("(huge)" in m and why in m for m in logs), logs


def test_too_many_drops_stop_with_one_clear_error():
    docs = _docs(150)
    for d in docs[::20]:  # 8 of 150 documents cannot be placed
        d["tokens"] = np.concatenate([d["tokens"], np.full(60, 65, np.int32)])
        d["modality"] = np.zeros(len(d["tokens"]), np.int32)
        d["loss_weights"] = np.ones(len(d["tokens"]), np.float32)
    list(_rows(docs, seq_len=64, oversize="drop", max_bad_fraction=0.1, log=lambda m: None))
    with pytest.raises(packing.BadDataError, match=r"data.max_bad_fraction=0.05"):
        list(_rows(docs, seq_len=64, oversize="drop", max_bad_fraction=0.05, log=lambda m: None))


def test_resume_is_exact_even_inside_a_split_document():
    docs = _docs(80, seed=3)
    pipeline = grain.MapDataset.source(docs).seed(5).shuffle().repeat(3).to_iter_dataset()
    pipeline = packing.pack(pipeline, V, seq_len=20, num_bins=3).batch(2)
    for k in (1, 4, 9, 17):
        it = iter(pipeline)
        for _ in range(k):
            next(it)
        state = it.get_state()
        expected = [next(it) for _ in range(6)]
        again = iter(pipeline)
        again.set_state(state)
        for a, b in zip(expected, (next(again) for _ in range(6))):
            for name in sequences.FEATURES:
                np.testing.assert_array_equal(a[name], b[name])


def test_changing_document_a_leaves_logits_of_document_b_unchanged():
    """The model honours segment_ids and positions: packed documents do not see each other."""
    model = Decoder(tiny_cfg(vocab_size=V.size), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    doc_b = _doc(1, rng)
    variants = [_doc(0, rng) for _ in range(3)]  # three different documents A (lengths vary)
    logits_b = []
    for doc_a in variants:
        (row,) = list(_rows([doc_a, doc_b], seq_len=128))
        assert row["segment_ids"].max() == 2
        batch = {k: jax.numpy.asarray(row[k])[None] for k in row}
        out = model(batch["tokens"], batch["positions"], batch["segment_ids"])[0]
        logits_b.append(np.asarray(out)[row["segment_ids"] == 2])
    alone = sequences.pad_row(doc_b["tokens"], doc_b["modality"], V, 128)
    ref = model(*(jax.numpy.asarray(alone[k])[None] for k in ("tokens", "positions",
                                                               "segment_ids")))[0]
    ref = np.asarray(ref)[: len(doc_b["tokens"])]
    for got in logits_b:
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
    # Sanity: the test can fail -- doc A does change B's logits when segment ids are merged.
    (row,) = list(_rows([variants[0], doc_b], seq_len=128))
    merged = np.where(row["segment_ids"] > 0, 1, 0)
    out = model(jax.numpy.asarray(row["tokens"])[None], jax.numpy.asarray(row["positions"])[None],
                jax.numpy.asarray(merged)[None])[0]
    assert not np.allclose(np.asarray(out)[row["segment_ids"] == 2], ref, atol=1e-3)


def test_decoder_batches_pack_pairs(test_config, test_text_tokenizer):
    """The demo pipeline with data.pack: more documents per row, same features, exact resume."""
    from mmar import config as config_lib
    from mmar.data import pipeline
    cfg = test_config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.data.update(pack=True, seq_len=128)
    vocab = config_lib.make_vocab(cfg)
    rng = np.random.default_rng(0)
    caps = [" ".join(["a red circle"] * int(rng.integers(1, 4))) for _ in range(64)]
    source = pipeline.CaptionCodeSource(caps, rng.integers(0, vocab.num_image_codes, (64, 16)))
    it = pipeline.decoder_batches(source, vocab, cfg.data, global_batch=4, seed=0,
                                  text=test_text_tokenizer)
    first = next(it)
    assert first["tokens"].shape == (4, 128) and first["segment_ids"].max() >= 3
    state = it.get_state()
    nxt = [next(it) for _ in range(3)]
    again = pipeline.decoder_batches(source, vocab, cfg.data, global_batch=4, seed=0,
                                     text=test_text_tokenizer)
    again.set_state(state)
    for a in nxt:
        b = next(again)
        for k in sequences.FEATURES:
            np.testing.assert_array_equal(a[k], b[k])
