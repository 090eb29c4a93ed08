"""Plain decoding of keep-aspect images (`data.keep_aspect`): `<boi> <h> <w>`, rows of codes
each ending in `<eol>`, `<eoi>`; against full forward passes, and the layout's constraints."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmar import config as config_lib
from mmar import derived
from mmar.model.transformer import Decoder
from mmar.parallel import mesh as mesh_lib
from mmar.sample import plain
from mmar.train import state


@pytest.fixture(scope="module")
def setup(test_config):
    cfg = ml_collections.ConfigDict(test_config.to_dict())
    with cfg.unlocked():
        cfg.data.keep_aspect, cfg.data.seq_len = True, 128
        cfg.model.vocab_size = 0
        cfg.model.init_std = 0.5   # a random model with peaked, varied predictions
    cfg = config_lib.validate(cfg)
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    model_state, params = state.create(lambda r: Decoder(cfg.model, rngs=r), mesh, seed=3)
    vocab = config_lib.make_vocab(cfg)
    return cfg, model_state, params, vocab


def _sampler(cfg, model_state, vocab, **sample):
    sample_cfg = ml_collections.ConfigDict(dict(cfg.sample.to_dict(), **sample))
    return plain.Sampler(model_state, vocab, cfg.model.vocab_size, sample_cfg,
                         num_codes=derived.codes_per_image(cfg))


def _logits(model, seq):
    t = jnp.asarray([seq], jnp.int32)
    return np.asarray(model(t, jnp.arange(len(seq))[None], jnp.ones_like(t))[0, -1])


def test_vocabulary_has_layout_ids(setup):
    cfg, _, _, vocab = setup
    assert vocab.grid_sides == derived.max_grid_side(cfg) == 5     # 4x4 square, ratio <= 2
    assert vocab.eol == vocab.layout_offset == vocab.position_offset
    assert vocab.size_id(5) == vocab.used - 1 and vocab.used <= cfg.model.vocab_size
    body = vocab.image_body(np.arange(15), (3, 5))
    assert body[:2].tolist() == [vocab.size_id(3), vocab.size_id(5)]
    assert (body[2:].reshape(3, 6)[:, -1] == vocab.eol).all()
    codes, grid = vocab.parse_image_body(body)
    assert grid == (3, 5) and codes.tolist() == list(range(15))
    with pytest.raises(ValueError, match="rows must be 5 image codes and <eol>"):
        vocab.parse_image_body(np.concatenate([body[:7], body[8:], [vocab.eol]]))


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_greedy_wide_image_matches_full_forward(setup, scale):
    """A 3x5 image: each code the argmax over image codes of the (guided) full forward
    logits, every row closed by <eol>, whatever the model would rather say there."""
    cfg, model_state, params, vocab = setup
    sampler = _sampler(cfg, model_state, vocab, temperature_image=0.0, cfg_scale_image=scale)
    captions = [[97, 32, 98], [99, 100, 101, 102, 103]]
    codes, passes = sampler.images(params, captions, 16, jax.random.key(0), grid=(3, 5))
    assert codes.shape == (2, 15) and passes == 3 * 6
    model, allowed = model_state.merge(params), sampler.allowed["image"]
    sizes = [vocab.size_id(3), vocab.size_id(5)]
    for caption, got in zip(captions, codes):
        prompt, uncond, out = [vocab.bos, *caption, vocab.boi, *sizes], [vocab.bos, vocab.boi,
                                                                        *sizes], []
        for k in range(18):
            if k % 6 == 5:
                out.append(vocab.eol)
                continue
            logits = _logits(model, prompt + out)
            if scale != 1.0:
                u = _logits(model, uncond + out)
                logits = u + scale * (logits - u)
            out.append(int(np.argmax(np.where(allowed, logits, -np.inf))))
        codes_ref, grid = vocab.parse_image_body(sizes + out)
        assert grid == (3, 5)
        np.testing.assert_array_equal(got, codes_ref)


def test_interleaved_images_are_whole_grids_of_the_models_choosing(setup):
    """Sampled documents (text and images as a random model chooses): every image has two
    size ids with rows x columns within the square's codes, then whole rows and <eoi>."""
    cfg, model_state, params, vocab = setup
    sampler = _sampler(cfg, model_state, vocab, temperature_text=1.0, temperature_image=1.0)
    n = derived.codes_per_image(cfg)
    prompts = [[vocab.bos, 97, vocab.boi]] * 6 + [[vocab.bos, 97, 98]] * 2
    rows = sampler.continue_documents(params, prompts, 60, jax.random.key(1))
    seen = 0
    for prompt, row in zip(prompts, rows):
        ids = (prompt[-1:] if prompt[-1] == vocab.boi else []) + row
        for kind, codes in plain.split_document(ids, vocab):
            if kind == "image" and np.ndim(codes) == 2:
                h, w = np.shape(codes)
                assert 1 <= h <= vocab.grid_sides and 1 <= w and h * w <= n
                seen += 1
    assert seen >= 6   # each prompt ending in <boi> gives at least that whole image


def test_captions_read_the_grid(setup):
    """Image-to-text prompts carry the grid: a 2x4 image and the same codes as 4x2 are
    different prompts (the greedy captions need not differ; the prompts must)."""
    cfg, model_state, params, vocab = setup
    sampler = _sampler(cfg, model_state, vocab)
    codes = np.arange(8)[None]
    a = sampler.captions(params, codes, jax.random.key(0), grid=(2, 4))
    b = sampler.captions(params, codes, jax.random.key(0), grid=(4, 2))
    assert all(vocab.is_text(t) for t in a[0] + b[0])
    assert not np.array_equal(vocab.image_body(codes[0], (2, 4)),
                              vocab.image_body(codes[0], (4, 2)))
    with pytest.raises(ValueError, match="do not fill a 3x3 grid"):
        sampler.captions(params, codes, jax.random.key(0), grid=(3, 3))
