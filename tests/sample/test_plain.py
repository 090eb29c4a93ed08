"""Plain KV-cache decoding against a loop of full forward passes, and its constraints."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmar import config as config_lib
from mmar.model.transformer import Decoder
from mmar.parallel import mesh as mesh_lib
from mmar.sample.plain import Sampler
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
@pytest.mark.slow
def test_greedy_images_match_full_forward(setup, scale):
    cfg, model_state, params, vocab = setup
    sample_cfg = ml_collections.ConfigDict(dict(cfg.sample.to_dict(), temperature_image=0.0,
                                                cfg_scale_image=scale))
    sampler = Sampler(model_state, vocab, cfg.model.vocab_size, sample_cfg)
    captions = [[97, 32, 98], [99, 100, 101, 102, 103, 104]]   # different lengths: left pad
    codes, _ = sampler.images(params, captions, 6, jax.random.key(0))
    model = model_state.merge(params)
    allowed = sampler.allowed["image"]
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
    codes, _ = sampler.images(params, [[97, 98]] * 4, 16, jax.random.key(1))
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
    a, _ = greedy.images(params, [[97, 98, 99]], 8, jax.random.key(0))
    b, _ = top1.images(params, [[97, 98, 99]], 8, jax.random.key(5))
    np.testing.assert_array_equal(a, b)


def _sampler(setup, num_codes=None, **fields):
    cfg, model_state, _, vocab = setup
    sample_cfg = ml_collections.ConfigDict(dict(cfg.sample.to_dict(), **fields))
    return Sampler(model_state, vocab, cfg.model.vocab_size, sample_cfg, num_codes=num_codes)


@pytest.mark.parametrize("scale,interval", [(0.0, (0.0, 1.0)), (3.0, (0.0, 0.5)),
                                            (2.0, (0.5, 1.0))])
@pytest.mark.slow
def test_guidance_scale_and_interval(setup, scale, interval):
    """Scale 0 is the unconditional model (`<bos> <boi>`); an interval guides only those
    codes (raster fraction in [a, b)), the rest come from the conditional logits."""
    cfg, model_state, params, vocab = setup
    sampler = _sampler(setup, temperature_image=0.0, cfg_scale_image=scale,
                       cfg_interval_image=interval)
    n = 8
    captions = [[97, 32, 98], [99, 100, 101, 102]]
    codes, _ = sampler.images(params, captions, n, jax.random.key(0))
    model = model_state.merge(params)
    allowed = sampler.allowed["image"]
    for caption, got in zip(captions, codes):
        cond, uncond = [vocab.bos, *caption, vocab.boi], [vocab.bos, vocab.boi]
        ref = []
        for k in range(n):
            logits = _last_logits(model, cond + ref)
            if interval[0] <= k / n < interval[1]:
                u = _last_logits(model, uncond + ref)
                logits = u + scale * (logits - u)
            ref.append(int(np.argmax(np.where(allowed, logits, -np.inf))))
        np.testing.assert_array_equal(vocab.image_ids(got), ref)
        if scale == 0.0:   # exactly the caption-free model
            np.testing.assert_array_equal(
                vocab.image_ids(got), _greedy_reference(model, uncond, allowed, n))


def test_interleaved_images_are_always_whole(setup):
    """Sampling freely (temperature 1), every `<boi>` is followed by exactly n codes and
    `<eoi>`, text holds no codes, and a prompt cut inside an image is finished first."""
    cfg, _, params, vocab = setup
    n = 4
    sampler = _sampler(setup, num_codes=n, temperature_text=1.0, temperature_image=1.0)
    rng = np.random.default_rng(0)
    prompts = []
    for i in range(48):
        text = rng.integers(0, vocab.text_size, rng.integers(1, 6)).tolist()
        partial = vocab.image_ids(rng.integers(0, vocab.num_image_codes, i % 3)).tolist()
        prompts.append([vocab.bos, *text] + ([vocab.boi, *partial] if i % 2 else []))
    outs = sampler.continue_documents(params, prompts, 40, jax.random.key(3))
    images = 0
    for prompt, out in zip(prompts, outs):
        seq = prompt + out
        inside, codes = False, 0
        for t in seq[1:]:
            if inside and codes < n:
                assert vocab.is_image(t), seq
                codes += 1
            elif inside:
                assert t == vocab.eoi, seq
                inside, images = False, images + 1
            else:
                assert not vocab.is_image(t) and t != vocab.eoi, seq
                if t == vocab.boi:
                    inside, codes = True, 0
        assert not inside, seq   # the step budget never cuts an image
        assert out.count(vocab.eos) <= 1 and (vocab.eos not in out or out[-1] == vocab.eos)
    assert images >= 24   # at least the prompts that start inside one


@pytest.mark.skipif(len(jax.devices()) < 4, reason="needs 4 (fake) devices")
def test_sharded_params_decode_like_one_device(setup):
    """Parameters sharded FSDP x tensor on a mesh (a model larger than one device) decode the
    same greedy images and captions as on one device: jit follows the params' shardings."""
    cfg, _, params, vocab = setup
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, jax.devices()[:4])
    sharded_state, sharded = state.create(lambda r: Decoder(cfg.model, rngs=r), mesh, seed=3)
    assert any(len(x.sharding.device_set) > 1 for x in jax.tree.leaves(sharded))
    fields = dict(temperature_image=0.0, cfg_scale_image=2.0)
    one = _sampler(setup, **fields)
    many = Sampler(sharded_state, vocab, cfg.model.vocab_size,
                   ml_collections.ConfigDict(dict(cfg.sample.to_dict(), **fields)))
    captions = [[97, 98], [99, 100, 101]]
    a, _ = one.images(params, captions, 6, jax.random.key(0))
    b, _ = many.images(sharded, captions, 6, jax.random.key(0))
    np.testing.assert_array_equal(a, b)
    assert one.captions(params, a, jax.random.key(1)) == many.captions(sharded, a,
                                                                      jax.random.key(1))


@pytest.mark.slow
def test_mot_sampler_routes_codes_as_image_tokens(test_config):
    """Mixture-of-Transformers: the sampler derives each new token's modality from its id
    (image codes 1, everything else 0, as the training data marks them); greedy codes must
    equal a full forward pass given that modality array."""
    cfg = ml_collections.ConfigDict(test_config.to_dict())
    cfg.model.init_std = 0.5
    cfg.model.mot.update(enabled=True, tile=4)
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    model_state, params = state.create(lambda r: Decoder(cfg.model, rngs=r), mesh, seed=3)
    vocab = config_lib.make_vocab(cfg)
    sampler = Sampler(model_state, vocab, cfg.model.vocab_size,
                      ml_collections.ConfigDict(dict(cfg.sample.to_dict(), temperature_image=0.0,
                                                     cfg_scale_image=1.0)))
    caption = [97, 32, 98]
    codes = sampler.images(params, [caption], 5, jax.random.key(0))[0][0]
    model, allowed = model_state.merge(params), sampler.allowed["image"]
    seq = [vocab.bos, *caption, vocab.boi]
    for code in vocab.image_ids(codes):
        t = jnp.asarray([seq], jnp.int32)
        modality = (t >= vocab.image_offset) & (t < vocab.image_offset + vocab.num_image_codes)
        logits = model(t, jnp.arange(len(seq))[None], jnp.ones_like(t),
                       modality.astype(jnp.int32))[0, -1]
        assert int(np.argmax(np.where(allowed, logits, -np.inf))) == code
        seq.append(int(code))
