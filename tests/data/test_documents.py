"""Documents in one format: t2i, i2t and interleaved; caption dropout; weights; splitting."""
import numpy as np
import pytest

from mmar.data import sequences
from mmar.data.sequences import IMAGE, TEXT
from mmar.vocab import ByteTokenizer, Vocab

V = Vocab(256, 125)
TXT = ByteTokenizer()


def _doc(*parts):
    """('hi', [1, 2], 'yo') -> segments: str -> text, list -> image codes."""
    return [(TEXT, TXT.encode(p)) if isinstance(p, str) else (IMAGE, V.image_ids(p))
            for p in parts]


def test_interleaved_layout_and_weights():
    ex = sequences.document_example(_doc("ab", [1, 2, 3], "c", [4]), V, text_weight=0.5,
                                    image_weight=2.0)
    b, e, bi, ei = V.bos, V.eos, V.boi, V.eoi
    o = V.image_offset
    assert ex["tokens"].tolist() == [b, 97, 98, bi, o + 1, o + 2, o + 3, ei, 99, bi, o + 4, ei, e]
    assert ex["modality"].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 0]
    w = ex["loss_weights"]
    assert w[0] == 0 and w.tolist()[1:] == [0.5, 0.5, 0.5, 2, 2, 2, 0.5, 0.5, 0.5, 2, 0.5, 0.5]


def test_pair_is_a_two_segment_document():
    for image_first in (False, True):
        t, m = sequences.pair_tokens(TXT.encode("a red circle"), V.image_ids([5, 6]), V,
                                     image_first=image_first)
        segs = _doc("a red circle", [5, 6])
        d = sequences.document_example(segs[::-1] if image_first else segs, V)
        np.testing.assert_array_equal(t, d["tokens"])
        np.testing.assert_array_equal(m, d["modality"])


def test_caption_dropout_removes_only_text_before_images():
    segs = _doc("cap one", [1], "between", "cap two", [2], "tail")
    rng = np.random.default_rng(0)
    assert sequences.drop_captions(segs, 0.0, rng) == segs
    dropped = sequences.drop_captions(segs, 1.0, rng)
    assert [TXT.decode(s[1]) if s[0] == TEXT else "IMG" for s in dropped] == \
        ["IMG", "between", "IMG", "tail"]
    # At p=0.3 about 30% of captions go, independently.
    n = sum(len(sequences.drop_captions(_doc("c", [1]), 0.3, rng)) == 1 for _ in range(4000))
    assert 0.27 < n / 4000 < 0.33


def test_cut_points_never_inside_an_image():
    ex = sequences.document_example(_doc("ab", [1, 2, 3], "c"), V)
    ok = sequences.cut_points(ex["tokens"], V)
    # tokens: bos a b boi c c c eoi c eos ; cuts allowed before boi (3) and after eoi (8)
    assert ok.tolist() == [True, True, True, True, False, False, False, False, True, True, True]


@pytest.mark.parametrize("seq_len", [6, 7, 9, 12])
def test_split_document_keeps_images_whole(seq_len):
    ex = sequences.document_example(_doc("abcdefgh", [1, 2, 3], "ijk", [4, 5, 6, 7]), V)
    pieces = sequences.split_document(ex, seq_len, V)
    assert pieces is not None and all(len(p["tokens"]) <= seq_len for p in pieces)
    np.testing.assert_array_equal(np.concatenate([p["tokens"] for p in pieces]), ex["tokens"])
    for p in pieces:
        t = p["tokens"]
        assert (t == V.boi).sum() == (t == V.eoi).sum()  # every image complete
        assert p["loss_weights"][0] == 0
    # Only the first token of each piece lost its weight.
    lost = ex["loss_weights"].sum() - sum(p["loss_weights"].sum() for p in pieces)
    assert lost == pytest.approx(sum(ex["loss_weights"][len(np.concatenate(
        [q["tokens"] for q in pieces[:i]]))] for i in range(1, len(pieces))))


def test_split_document_gives_up_on_an_image_longer_than_a_row():
    ex = sequences.document_example(_doc("a", list(range(10))), V)
    assert sequences.split_document(ex, 8, V) is None


def test_pair_rows_dropout_off_unchanged_and_on_drops_t2i_captions():
    from mmar import schema
    from mmar.data.pipeline import PairToRow
    cfg = schema.complete(dict(seq_len=40, i2t_fraction=0.5, caption_dropout=0.0,
                               loss_weight_text=1.0, loss_weight_image=1.0), section="data")
    rec = {"caption": "a red circle", "codes": np.array([1, 2, 3, 4])}
    for seed in range(20):  # same draw as the single-document rows the demo was tuned on
        row = PairToRow(V, cfg).random_map(rec, np.random.default_rng(seed))
        image_first = np.random.default_rng(seed).random() < 0.5
        ref = sequences.pair_example(TXT.encode(rec["caption"]), V.image_ids(rec["codes"]), V,
                                     40, image_first=image_first)
        for k in ref:
            np.testing.assert_array_equal(row[k], ref[k])
    cfg.caption_dropout = 1.0
    lengths = {int(PairToRow(V, cfg).random_map(rec, np.random.default_rng(s))["segment_ids"]
                   .sum()) for s in range(20)}
    assert lengths == {1 + 12 + 6 + 1, 1 + 6 + 1}  # i2t keeps its caption, t2i loses it
