"""Keep-aspect images (`data.keep_aspect`): the grid rule, resizing on it, token records
with grids, the shards' check, documents' layout ids, and the config's refusals."""
import io

import numpy as np
import PIL.Image
import pytest

from mmar import config as config_lib
from mmar import derived
from mmar.data import sequences, tokens
from mmar.data.ingest import records
from tests.helpers import overrides


def _cfg(test_config, **fields):
    return config_lib.validate(overrides.with_fields(
        test_config, {"data.keep_aspect": True, "data.seq_len": 96, **fields}))


@pytest.mark.parametrize("side,limit", [(4, 2.0), (16, 2.0), (16, 3.0), (32, 1.5)])
def test_grid_rule(side, limit):
    """At most the square's positions and never far fewer, the square kept, r and 1/r
    transposed, the ratio clipped (within one row or column of rounding)."""
    for r in np.linspace(1 / (limit + 1), limit + 1, 41):
        h, w = derived.aspect_grid(1000, round(1000 * r), side, limit)
        assert 1 <= h * w <= side * side
        assert derived.aspect_grid(round(1000 * r), 1000, side, limit) == (w, h)
        clipped = min(max(round(1000 * r) / 1000, 1 / limit), limit)
        assert (w - 1) / (h + 1) <= clipped <= (w + 1) / max(h - 1, 1)
        assert h * w >= side * side * 0.75   # never much below the square's codes
    assert derived.aspect_grid(7, 7, side, limit) == (side, side)


def test_resize_on_the_grid():
    opts = records.Options(image_size=32, keep_aspect=True, downsample=8)
    for (h, w), want in {(32, 32): (32, 32), (40, 80): (24, 40), (90, 30): (40, 24),
                         (100, 1000): (24, 40)}.items():
        buf = io.BytesIO()
        PIL.Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(buf, "png")
        assert records.decode_image(buf.getvalue(), opts).shape == (*want, 3)
        assert records.decode_image(buf.getvalue(), 32).shape == (32, 32, 3)
    with pytest.raises(ValueError, match="needs the image tokenizer's downsample"):
        records.Options(image_size=32, keep_aspect=True).pixels(10, 20)


def test_records_keep_grids():
    codes = [np.arange(15), np.arange(16) + 100]
    data = tokens.encode_record(3, "document", [{"image": 0}, {"text": "x"}, {"image": 1}],
                                codes, [[3, 5], [4, 4]])
    rec = tokens.decode_record(data)
    assert rec["grids"] == [[3, 5], [4, 4]] and rec["index"] == 3
    for a, b in zip(rec["codes"], codes):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="do not match their grids"):
        tokens.encode_record(0, "caption", [], codes, [[4, 4], [4, 4]])
    square = tokens.decode_record(tokens.encode_record(0, "caption", [], np.zeros((1, 16))))
    assert "grids" not in square and square["codes"].shape == (1, 16)


def test_square_shards_refused_by_a_keep_aspect_run(test_config):
    """Shards written square (no keep_aspect in their settings) are one TokensError for a
    keep-aspect run of the same source, naming the field."""
    name = "webdataset:x/*.tar"
    square = tokens.source_settings(name, test_config.data)
    wide = tokens.source_settings(name, _cfg(test_config).data)
    assert "keep_aspect" not in square and wide["keep_aspect"] is True
    identity = {"config": test_config.image_tokenizer.to_dict(), "num_codes": 125,
                "depth": 1, "image_size": 32, "params_sha256": "ab" * 32, "step": 20}
    meta = {"tokenizer": identity, "source_settings": square}
    tokens.check_tokenizer(meta, identity, square, "metadata.json")   # the same: no error
    with pytest.raises(tokens.TokensError, match="made from data.keep_aspect=None, this run "
                                                 "has data.keep_aspect=True"):
        tokens.check_tokenizer(meta, identity, wide, "metadata.json")


def test_documents_carry_the_layout(test_config):
    cfg = _cfg(test_config)
    vocab = config_lib.make_vocab(cfg)
    body = vocab.image_body(np.arange(15), (3, 5))
    toks, modality = sequences.document_tokens([("text", [65, 66]), ("image", body)], vocab)
    image = toks[4:-2]   # <bos> A B <boi> ... <eoi> <eos>
    np.testing.assert_array_equal(image, body)
    # codes are image tokens; <boi>, size ids, <eol>, <eoi> are not
    np.testing.assert_array_equal(modality[4:-2], vocab.is_image(body).astype(np.int32))
    assert modality[3] == modality[-2] == 0 and modality[4:-2].sum() == 15
    ok = sequences.cut_points(toks, vocab)   # ok[c]: a row may end before token c
    assert not ok[4:len(toks) - 1].any() and ok[len(toks) - 1]   # inside: never


@pytest.mark.parametrize("fields,match", [
    ({"data.image_order": "rar"}, "data.image_order='rar' is square-only"),
    ({"image_tokenizer.quantizer": "rq"}, "quantizer='rq' and fsq.groups > 1 are square-only"),
    ({"sample.image_decoder": "sjd"}, "keep_aspect=True samples with 'plain'"),
    ({"data.seq_len": 24}, "data.seq_len=24: data.keep_aspect=True needs at least"),
    ({"data.max_aspect_ratio": 0.5}, "data.max_aspect_ratio"),
    ({"sample.image_shape": "32by52"}, "sample.image_shape"),
])
def test_config_refusals(test_config, fields, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        _cfg(test_config, **fields)


def test_image_shape_needs_keep_aspect(test_config):
    with pytest.raises(config_lib.ConfigError, match="trained on square images"):
        config_lib.validate(overrides.with_fields(test_config,
                                                  {"sample.image_shape": "32x52"}))
