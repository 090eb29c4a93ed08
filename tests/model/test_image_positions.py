"""2-D image positions (mmar/model/positions.py): the components, RoPE on them, the KV cache,
and the config / export refusals."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmar import config as config_lib
from mmar.export import hf
from mmar.model import Decoder
from mmar.model import positions as positions_lib
from mmar.model.layers import rope_angles
from tests.helpers.model_configs import PRESET, tiny_cfg

# ids of a 48-id toy vocabulary: text 0..29, <boi> 30, codes 32..47 (2 x 2 grid, 2 codes/cell)
LAYOUT = (30, 32, 48, 2, 2)
BOI, EOI = 30, 31


def row_with_image(text_before=3, text_after=2, seed=0):
    """<text> <boi> 8 codes (2 x 2 cells x 2 sub-codes) <eoi> <text>: tokens, 1-D positions."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(32, 48, 8)
    tokens = np.concatenate([rng.integers(0, 30, text_before), [BOI], codes, [EOI],
                             rng.integers(0, 30, text_after)]).astype(np.int32)
    return tokens[None], np.arange(len(tokens), dtype=np.int32)[None]


def test_components_count_cells_and_sub_codes_after_the_boi():
    tokens, positions = row_with_image(text_before=3)
    got, last = positions_lib.components(jnp.asarray(tokens), jnp.asarray(positions),
                                         positions_lib.ImageLayout(*LAYOUT))
    got = np.asarray(got)[0]
    first = 4                                   # the first code's 1-D position
    cells = [(0, 0), (0, 0), (0, 1), (0, 1), (1, 0), (1, 0), (1, 1), (1, 1)]
    for k, (r, c) in enumerate(cells):
        assert tuple(got[first + k]) == (first + k, first + r, first + c)
    for t in list(range(first)) + [first + 8, first + 9, first + 10]:   # text, boi, eoi
        assert tuple(got[t]) == (t, t, t)
    assert int(last[0]) == 3                    # the <boi>'s slot


def test_equal_components_are_the_1d_rope_angles():
    pos = jnp.asarray(np.arange(10)[None] * 3, jnp.int32)
    one = rope_angles(pos, 16, 10000.0)
    three = rope_angles(jnp.stack([pos] * 3, -1), 16, 10000.0)
    for a, b in zip(one, three):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_2d_decoder_equals_1d_decoder_on_text_and_differs_on_images():
    """Same weights: a text-only row has the 1-D model's logits exactly; a row with an image
    does not (the codes' positions changed), so the option is not a no-op."""
    one = Decoder(tiny_cfg(), rngs=nnx.Rngs(0))
    two = Decoder(tiny_cfg(image_positions="2d", image_layout=LAYOUT), rngs=nnx.Rngs(0))
    text = np.random.default_rng(1).integers(0, 30, (1, 9)).astype(np.int32)
    pos, seg = np.arange(9, dtype=np.int32)[None], np.ones((1, 9), np.int32)
    np.testing.assert_array_equal(np.asarray(one(text, pos, seg)), np.asarray(two(text, pos, seg)))
    tokens, positions = row_with_image()
    seg = np.ones_like(tokens)
    a, b = np.asarray(one(tokens, positions, seg)), np.asarray(two(tokens, positions, seg))
    assert np.abs(a[0, 5:] - b[0, 5:]).max() > 1e-3    # after the first code
    np.testing.assert_allclose(a[0, :5], b[0, :5], atol=1e-6)   # up to it, the same


@pytest.mark.parametrize("prompt_len", [2, 6, 13])
def test_kv_cache_steps_match_the_full_forward(prompt_len):
    """Prefill (before, inside or after the image), then one token per call, two rows with
    the second left-padded: the cache's <boi> slot carries the code count."""
    model = Decoder(tiny_cfg(image_positions="2d", image_layout=LAYOUT), rngs=nnx.Rngs(3))
    row0, pos0 = row_with_image(text_before=3, seed=0)
    row1, _ = row_with_image(text_before=1, seed=1)
    n, pad = row0.shape[1], row0.shape[1] - row1.shape[1]
    tokens = np.stack([row0[0], np.concatenate([np.zeros(pad, np.int32), row1[0]])])
    positions = np.stack([pos0[0], np.concatenate([np.zeros(pad, np.int32),
                                                   np.arange(n - pad, dtype=np.int32)])])
    segments = np.stack([np.ones(n, np.int32),
                         np.concatenate([np.zeros(pad, np.int32), np.ones(n - pad, np.int32)])])
    cache = model.init_cache(2, n)
    logits, cache = model.decode(tokens[:, :prompt_len], positions[:, :prompt_len],
                                 segments[:, :prompt_len], cache)
    steps = [np.asarray(logits)]
    for t in range(prompt_len, n):
        logits, cache = model.decode(tokens[:, t:t + 1], positions[:, t:t + 1],
                                     segments[:, t:t + 1], cache)
        steps.append(np.asarray(logits))
    got = np.concatenate(steps, axis=1)
    np.testing.assert_allclose(got[0], np.asarray(model(row0, pos0, np.ones_like(row0)))[0],
                               atol=1e-4)
    alone = np.asarray(model(row1, np.arange(n - pad, dtype=np.int32)[None], np.ones_like(row1)))
    np.testing.assert_allclose(got[1, pad:], alone[0], atol=1e-4)


def test_validate_fills_the_layout_and_refuses_out_of_order_decoders():
    cfg = config_lib.load(PRESET)
    cfg.model.image_positions = "2d"
    done = config_lib.validate(cfg)
    vocab = config_lib.make_vocab(done)
    assert tuple(done.model.image_layout) == (vocab.boi, vocab.image_offset,
                                              vocab.image_offset + vocab.num_image_codes, 4, 1)
    for field, value in (("sample.image_decoder", "sjd"), ("data.image_order", "rar")):
        bad = config_lib.load(PRESET)
        bad.model.image_positions = "2d"
        section, name = field.split(".")
        bad[section][name] = value
        with pytest.raises(config_lib.ConfigError, match=field):
            config_lib.validate(bad)


def test_export_refuses_2d_positions_naming_the_option():
    cfg = tiny_cfg(image_positions="2d", image_layout=LAYOUT)
    with pytest.raises(ValueError, match="model.image_positions='2d'.*--format mmar"):
        hf.check_mappable(cfg, [])
