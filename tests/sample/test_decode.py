"""The KV-cache sampler against a plain loop of full forward passes, and its constraints."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmar import config as config_lib
from mmar.model.transformer import Decoder
from mmar.parallel import mesh as mesh_lib
from mmar.sample.decode import Sampler
from mmar.train import state


@pytest.fixture(scope="module")
def setup(test_config):
    cfg = ml_collections.ConfigDict(test_config.to_dict())   # a copy: the fixture is shared
    cfg.model.init_std = 0.5   # a random model with peaked, varied predictions
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    model_state, params = state.create(lambda r: Decoder(cfg.model, rngs=r), mesh, seed=3)
    vocab = config_lib.make_vocab(cfg)
    return cfg, model_state, params, vocab


def _last_logits(model, seq):
    t = jnp.asarray([seq], jnp.int32)
    return np.asarray(model(t, jnp.arange(len(seq))[None], jnp.ones_like(t))[0, -1])


def _greedy_reference(model, prompt, allowed, steps, uncond_prompt=None, scale=1.0):
    """No cache: rerun the whole sequence for every new token; with `uncond_prompt`, the
    guided logits uncond + scale * (cond - uncond) of two full forward passes."""
    generated = []
    for _ in range(steps):
        logits = _last_logits(model, list(prompt) + generated)
        if uncond_prompt is not None:
            uncond = _last_logits(model, list(uncond_prompt) + generated)
            logits = uncond + scale * (logits - uncond)
        generated.append(int(np.argmax(np.where(allowed, logits, -np.inf))))
    return generated


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_greedy_images_match_full_forward(setup, scale):
    cfg, model_state, params, vocab = setup
    sample_cfg = ml_collections.ConfigDict(dict(cfg.sample.to_dict(), temperature_image=0.0,
                                                cfg_scale_image=scale))
    sampler = Sampler(model_state, vocab, cfg.model.vocab_size, sample_cfg)
    captions = [[97, 32, 98], [99, 100, 101, 102, 103, 104]]   # different lengths: left pad
    codes = sampler.images(params, captions, 6, jax.random.key(0))
    model = model_state.merge(params)
    allowed = sampler._allowed["image"]
    uncond = [vocab.bos, vocab.boi] if scale != 1.0 else None
    for caption, got in zip(captions, codes):
        ref = _greedy_reference(model, [vocab.bos, *caption, vocab.boi], allowed, 6,
                                uncond, scale)
        np.testing.assert_array_equal(vocab.image_ids(got), ref)


def test_sampled_tokens_respect_modality(setup):
    cfg, model_state, params, vocab = setup
    sample_cfg = ml_collections.ConfigDict(dict(cfg.sample.to_dict(), temperature_image=1.0,
                                                temperature_text=1.0, top_k_text=20))
    sampler = Sampler(model_state, vocab, cfg.model.vocab_size, sample_cfg)
    codes = sampler.images(params, [[97, 98]] * 4, 16, jax.random.key(1))
    assert codes.shape == (4, 16)
    assert codes.min() >= 0 and codes.max() < vocab.num_image_codes
    assert len({tuple(c) for c in codes}) > 1   # sampling, not greedy
    texts = sampler.captions(params, codes, jax.random.key(2))
    for ids in texts:
        assert len(ids) <= cfg.sample.max_text_len
        assert all(0 <= i < vocab.text_size for i in ids)


def test_top_k_one_is_greedy(setup):
    cfg, model_state, params, vocab = setup
    greedy = Sampler(model_state, vocab, cfg.model.vocab_size,
                     ml_collections.ConfigDict(dict(cfg.sample.to_dict(), temperature_image=0.0)))
    # (both with the config's guidance scale: top-1 of the guided logits is their argmax)
    top1 = Sampler(model_state, vocab, cfg.model.vocab_size,
                   ml_collections.ConfigDict(dict(cfg.sample.to_dict(), temperature_image=1.0,
                                                  top_k_image=1)))
    a = greedy.images(params, [[97, 98, 99]], 8, jax.random.key(0))
    b = top1.images(params, [[97, 98, 99]], 8, jax.random.key(5))
    np.testing.assert_array_equal(a, b)
