"""The unified token space and the layout of text-image rows."""
import numpy as np
import pytest

from mmar.data import sequences
from mmar.vocab import ByteTokenizer, Vocab


def test_vocab_ranges_do_not_overlap_and_pad_to_128():
    v = Vocab(256, 125)
    assert (v.pad, v.bos, v.eos, v.boi, v.eoi) == (256, 257, 258, 259, 260)
    assert v.image_offset == 261 and v.size == 512 and v.size % 128 == 0
    ids = v.image_ids(np.arange(125))
    assert ids.min() == 261 and ids.max() == 385
    assert v.is_image(ids).all() and not v.is_text(ids).any()
    np.testing.assert_array_equal(v.codes_from_ids(ids), np.arange(125))
    with pytest.raises(ValueError, match="image codes"):
        v.image_ids([125])


def test_byte_tokenizer_round_trips():
    t = ByteTokenizer()
    for s in ["a red circle left of a blue square", "ünïcode ✓", ""]:
        assert t.decode(t.encode(s)) == s


@pytest.mark.parametrize("image_first", [False, True])
def test_pair_row_layout(image_first):
    v = Vocab(256, 125)
    cap = ByteTokenizer().encode("a red circle")
    codes = v.image_ids([5, 6, 7, 8])
    row = sequences.pair_example(cap, codes, v, 32, image_first=image_first,
                                 text_weight=1.0, image_weight=2.0)
    n = 1 + len(cap) + 1 + 4 + 1 + 1
    t = row["tokens"]
    assert t[0] == v.bos and t[n - 1] == v.eos and (t[n:] == v.pad).all()
    boi = int(np.where(t == v.boi)[0][0])
    assert boi == (1 if image_first else 1 + len(cap))
    np.testing.assert_array_equal(t[boi + 1:boi + 5], codes)
    assert t[boi + 5] == v.eoi
    np.testing.assert_array_equal(row["modality"][boi + 1:boi + 5], 1)
    assert row["modality"].sum() == 4
    np.testing.assert_array_equal(row["segment_ids"], (np.arange(32) < n).astype(np.int32))
    np.testing.assert_array_equal(row["positions"][:n], np.arange(n))
    w = row["loss_weights"]
    assert w[0] == 0 and (w[n:] == 0).all()
    np.testing.assert_array_equal(w[boi + 1:boi + 5], 2.0)
    assert w[1] == 1.0


def test_row_too_long_names_the_field():
    v = Vocab(256, 125)
    with pytest.raises(ValueError, match="data.seq_len=8"):
        sequences.pair_example([1] * 10, v.image_ids([1, 2]), v, 8, image_first=False)
