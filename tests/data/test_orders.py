"""Image orders (mmar/data/orders.py): RAR permutations, its anneal, resume; RandAR rows."""
import numpy as np
import pytest

from mmar import schema
from mmar.data import orders, pipeline, sequences
from mmar.vocab import Vocab

V = Vocab(256, 20, num_positions=4)
CODES = np.array([5, 9, 13, 2])


def _row(seq_len=24, image_first=False):
    return sequences.pair_example([97, 98, 99], V.image_ids(CODES), V, seq_len,
                                  image_first=image_first, text_weight=1.0, image_weight=2.0)


def test_vocab_position_ids_come_after_the_codes():
    assert V.position_offset == V.image_offset + 20 and V.used == V.position_offset + 4
    assert V.position_ids([0, 3]).tolist() == [V.position_offset, V.position_offset + 3]
    assert V.is_position(V.position_ids([2])).all() and not V.is_position(V.image_ids([2])).any()
    assert not V.is_image(V.position_ids([0])).any()
    with pytest.raises(ValueError, match="grid indices"):
        V.position_ids([4])
    raster = Vocab(256, 20)   # no position ids: a raster vocabulary is unchanged
    assert raster.used == raster.image_offset + 20 and raster.size == 384
    assert (raster.text_size, raster.boi, raster.image_offset) == (V.text_size, V.boi,
                                                                   V.image_offset)


@pytest.mark.parametrize("image_first", [False, True])
def test_rar_permutation_and_inverse_round_trip(image_first):
    row = _row(image_first=image_first)
    perm = np.array([2, 0, 3, 1])
    out = orders.rar_permute(row, V, [perm])
    (start, n), = orders.image_spans(row["tokens"], V)
    # slot j of the image holds grid code perm[j], at its raster position, same weight
    np.testing.assert_array_equal(V.codes_from_ids(out["tokens"][start:start + n]), CODES[perm])
    np.testing.assert_array_equal(out["positions"][start:start + n],
                                  row["positions"][start + perm])
    # target of slot t = 1 + grid index of the token in slot t + 1; 0 outside images
    assert out["targets"][start - 1:start + n - 1].tolist() == (perm + 1).tolist()
    assert out["targets"][start + n - 1] == 0 and out["targets"].sum() == (perm + 1).sum()
    outside = np.ones(len(row["tokens"]), bool)
    outside[start:start + n] = False
    for k in row:
        np.testing.assert_array_equal(out[k][outside], row[k][outside])
    back = orders.rar_unpermute(out, V)
    for k in row:
        np.testing.assert_array_equal(back[k], row[k])
    np.testing.assert_array_equal(back["targets"], orders.raster_targets(row["tokens"], V))


def test_rar_probability_schedule():
    r = [orders.rar_probability(s, 100, 0.25, 0.75) for s in (0, 24, 25, 50, 74, 75, 99)]
    np.testing.assert_allclose(r, [1, 1, 1, 0.5, 0.02, 0, 0])
    assert orders.rar_probability(10, 100, 0.5, 0.5) == 1.0
    assert orders.rar_probability(50, 100, 0.5, 0.5) == 0.0


def test_randar_row_layout_weights_and_positions():
    row = _row(seq_len=24)
    order = np.array([3, 1, 0, 2])
    doc = orders.randar_document(orders.unpadded(row), V, [order])
    (start, n), = orders.image_spans(row["tokens"], V)
    pairs = doc["tokens"][start:start + 2 * n].reshape(n, 2)
    assert pairs[:, 0].tolist() == V.position_ids(order).tolist()
    assert V.codes_from_ids(pairs[:, 1]).tolist() == CODES[order].tolist()
    pos = doc["positions"][start:start + 2 * n].reshape(n, 2)
    assert (pos[:, 0] == pos[:, 1]).all() and (pos[:, 0] == start + order).all()
    w = doc["loss_weights"][start:start + 2 * n].reshape(n, 2)
    assert (w[:, 0] == 0).all() and (w[:, 1] == 2.0).all()   # P weighs 0, codes as images
    assert (doc["modality"][start:start + 2 * n] == 1).all()
    # text after the image keeps its raster positions
    raster_tail = row["positions"][start + n:int(row["segment_ids"].sum())]
    np.testing.assert_array_equal(doc["positions"][start + 2 * n:], raster_tail)
    padded = orders.pad(doc, V, 24, what="x")
    assert orders.randar_raster_codes(padded["tokens"], V)[0].tolist() == CODES.tolist()
    with pytest.raises(ValueError, match="data.seq_len=12"):
        orders.randar_row(row, V, 12, None)


def _cfg(order="rar"):
    return schema.complete(dict(
        seq_len=32, i2t_fraction=0.5, caption_dropout=0.0, loss_weight_text=1.0,
        loss_weight_image=1.0, pack=False, num_workers=0, image_order=order,
        rar=dict(anneal_start=0.25, anneal_end=0.5)), section="data")


def _source(n=12):
    rng = np.random.default_rng(0)
    return pipeline.CaptionCodeSource([f"c{i}" for i in range(n)],
                                      rng.integers(0, 20, (n, 4)))


def _permuted(batch):
    return [bool((t[t > 0] != np.arange(1, len(t[t > 0]) + 1)).any()) for t in batch["targets"]]


def test_rar_batches_follow_the_anneal_and_resume_exactly():
    it = pipeline.decoder_batches(_source(), V, _cfg(), global_batch=4, seed=1, total_steps=8)
    first = [next(it) for _ in range(3)]
    # steps 0, 1: r = 1 (every row permuted, a 4-code identity has chance 1/24 per row)
    assert sum(_permuted(first[0]) + _permuted(first[1])) >= 6
    for b in first:   # a permutation of the raster codes, never a change of the multiset
        for tok, tgt in zip(b["tokens"], b["targets"]):
            row = {"tokens": tok, "targets": tgt, "positions": b["positions"][0] * 0,
                   "modality": tok * 0, "loss_weights": tok * 0.0}
            back = orders.rar_unpermute(row, V)
            assert (orders.raster_targets(back["tokens"], V) > 0).sum() == 4
    state = it.get_state()
    later = [next(it) for _ in range(5)]
    assert not any(_permuted(later[-1]))     # step 7 >= 0.5 * 8: raster
    resumed = pipeline.decoder_batches(_source(), V, _cfg(), global_batch=4, seed=1,
                                       total_steps=8)
    resumed.set_state(state)
    for a in later:
        b = next(resumed)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_randar_batches_hold_every_code_once():
    it = pipeline.decoder_batches(_source(), V, _cfg("randar"), global_batch=4, seed=1)
    batch = next(it)
    src = _source()
    for tok in batch["tokens"]:
        codes = orders.randar_raster_codes(tok, V)[0]
        assert any((codes == src[i]["codes"]).all() for i in range(len(src)))
    assert "targets" not in batch
