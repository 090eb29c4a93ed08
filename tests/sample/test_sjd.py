"""Speculative Jacobi decoding and LANTERN against plain decoding, exactly and in law."""
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from mmar import config as config_lib
from mmar.model.transformer import Decoder
from mmar.parallel import mesh as mesh_lib
from mmar.sample import dispatch, sjd
from mmar.tokenizers.image.quantizers import FSQ
from mmar.train import state

CAPTIONS = [[97, 32, 98], [99, 100, 101, 102, 103, 104], [105]]   # left padding


def _setup(test_config, levels=None):
    cfg = ml_collections.ConfigDict(test_config.to_dict())
    cfg.model.init_std = 0.5   # a random model with peaked, varied predictions
    if levels is not None:
        cfg.image_tokenizer.fsq.levels, cfg.model.vocab_size = levels, 0
        cfg = config_lib.validate(cfg)
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    model_state, params = state.create(lambda r: Decoder(cfg.model, rngs=r), mesh, seed=3)
    return cfg, model_state, params, config_lib.make_vocab(cfg)


@pytest.fixture(scope="module")
def setup(test_config):
    return _setup(test_config)


def _sampler(setup, method="plain", **fields):
    """The raster image sampler of `method` ("plain" | "sjd" | "zipar"), config fields set."""
    cfg, model_state, _, vocab = setup
    return dispatch.image_sampler(
        "raster", model_state, vocab, cfg.model.vocab_size,
        ml_collections.ConfigDict(dict(cfg.sample.to_dict(), **fields)),
        code_vectors=np.asarray(FSQ(cfg.image_tokenizer.fsq.levels).implicit_codebook()),
        method=method)


@pytest.mark.parametrize("scale,options", [
    (1.0, dict(sjd=dict(acceptance="greedy", window=3))),
    (2.0, dict(sjd=dict(acceptance="greedy", window=3))),
    (2.0, dict(sjd=dict(acceptance="greedy", window=16))),     # window longer than the image
    (2.0, dict(sjd=dict(acceptance="greedy", window=4, lantern_k=6, lantern_delta=0.0))),
    (2.0, dict(sjd=dict(acceptance="probabilistic", window=5), temperature_image=0.0)),
])
@pytest.mark.slow
def test_greedy_sjd_is_plain_greedy(setup, scale, options):
    """Keeping only drafts that equal the argmax gives plain greedy decoding, token for
    token, in fewer passes than codes only when drafts were right (never more)."""
    params = setup[2]
    n = 12
    want, plain_passes = _sampler(setup, temperature_image=0.0, cfg_scale_image=scale).images(
        params, CAPTIONS, n, jax.random.key(0))
    assert plain_passes == n
    got, passes = _sampler(setup, "sjd", temperature_image=1.0, cfg_scale_image=scale).images(
        params, CAPTIONS, n, jax.random.key(7), **options)
    np.testing.assert_array_equal(got, want)
    assert 1 <= passes <= n


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_accepted_windows_are_committed_exactly(setup, scale, monkeypatch):
    """Random models seldom accept a draft, so the first window is given the right codes
    (q: a point mass on them): all L are accepted plus a bonus code in one pass, their
    keys/values are copied to each row's committed slots, and every later code still
    equals plain greedy decoding (which reads those slots)."""
    params, n, L = setup[2], 12, 4
    want, _ = _sampler(setup, temperature_image=0.0, cfg_scale_image=scale).images(
        params, CAPTIONS, n, jax.random.key(0))
    num = setup[3].num_image_codes
    monkeypatch.setattr(sjd, "_initial_drafts", lambda key, batch, window, num_: (
        jnp.asarray(want[:, 1:1 + L]), jax.nn.one_hot(want[:, 1:1 + L], num)))
    sampler = _sampler(setup, "sjd", temperature_image=0.0, cfg_scale_image=scale)
    got, passes, rows = sampler.images_rows(params, CAPTIONS, n, jax.random.key(7),
                                            sjd=dict(window=L))
    np.testing.assert_array_equal(got, want)
    assert passes <= n - L
    assert passes == rows.max()


@pytest.mark.parametrize("method,options", [
    ("plain", {}), ("sjd", dict(sjd=dict(window=4))),
    ("sjd", dict(sjd=dict(window=3, lantern_k=30, lantern_delta=0.5))),
    ("zipar", dict(zipar=dict(window=1))), ("zipar", dict(zipar=dict(window=3)))])
@pytest.mark.slow
def test_forward_passes_are_the_model_calls(setup, method, options, monkeypatch):
    """The reported count equals the model calls that ran (a callback in every
    `Decoder.decode` execution, inside the jitted loops), prefill included."""
    calls = []
    decode = Decoder.decode

    def counted(self, *args, **kwargs):
        jax.debug.callback(lambda: calls.append(1))
        return decode(self, *args, **kwargs)

    monkeypatch.setattr(Decoder, "decode", counted)
    sampler = _sampler(setup, method, temperature_image=1.0, cfg_scale_image=2.0)
    codes, passes = sampler.images(setup[2], CAPTIONS, 16, jax.random.key(3), **options)
    jax.effects_barrier()
    assert codes.shape == (3, 16) and passes == len(calls)
    assert 1 <= passes <= 16


def _exact_joint(model_state, params, vocab, caption, n, scale):
    """P(c_1 .. c_n) of plain guided sampling at temperature 1: one full forward pass over
    every prefix (conditional and caption-free rows), small codebook."""
    forward = jax.jit(lambda p, t: model_state.merge(p)(t, jnp.broadcast_to(
        jnp.arange(t.shape[1]), t.shape), jnp.ones_like(t)))
    num, off = vocab.num_image_codes, vocab.image_offset
    logp = {(): 0.0}
    for i in range(n):
        prefixes = list(itertools.product(range(num), repeat=i))
        ids = [[off + c for c in pre] for pre in prefixes]
        cond = np.asarray(forward(params, jnp.asarray(
            [[vocab.bos, *caption, vocab.boi, *x] for x in ids], jnp.int32)))[:, -1]
        uncond = np.asarray(forward(params, jnp.asarray(
            [[vocab.bos, vocab.boi, *x] for x in ids], jnp.int32)))[:, -1]
        g = (uncond + scale * (cond - uncond))[:, off:off + num].astype(np.float64)
        g = g - np.logaddexp.reduce(g, axis=1, keepdims=True)
        logp = {pre + (c,): logp[pre] + g[j, c] for j, pre in enumerate(prefixes)
                for c in range(num)}
    return {k: float(np.exp(v)) for k, v in logp.items()}


def _chi2_pvalue(samples, joint):
    counts = {}
    for row in map(tuple, samples):
        counts[row] = counts.get(row, 0) + 1
    total = len(samples)
    big = [k for k, p in joint.items() if p * total >= 5]
    small = [k for k in joint if k not in big]
    obs = [counts.get(k, 0) for k in big] + [sum(counts.get(k, 0) for k in small)]
    exp = [joint[k] * total for k in big] + [sum(joint[k] for k in small) * total]
    return stats.chisquare(obs, exp).pvalue


@pytest.fixture(scope="module")
def small(test_config):
    """A 4-code tokenizer (FSQ 2x2): the joint law of 3 codes has 64 cells."""
    return _setup(test_config, levels=(2, 2))


@pytest.mark.parametrize("window,broken", [(1, False), (2, False), (2, True)])
@pytest.mark.slow
def test_probabilistic_sjd_keeps_the_distribution(small, window, broken, monkeypatch):
    """8,000 guided images of 3 codes at temperature 1 in one batch: the empirical joint law
    matches the exact one (chi-square p > 1e-3). Window 1 and 2 both take drafts from the
    Jacobi update and from random initialisation. With the rejection residual replaced by
    p itself (a classic bug) the same test rejects (p < 1e-6): it has the power."""
    _, model_state, params, vocab = small
    if broken:
        monkeypatch.setattr(sjd, "_residual", lambda p, q: p)
    sampler = _sampler(small, "sjd", temperature_image=1.0, cfg_scale_image=2.0)
    caption, n, draws = [97, 98], 3, 8000
    codes, passes = sampler.images(params, [caption] * draws, n, jax.random.key(11),
                                   sjd=dict(window=window))
    assert passes <= n
    joint = _exact_joint(model_state, params, vocab, caption, n, 2.0)
    np.testing.assert_allclose(sum(joint.values()), 1.0, atol=1e-5)
    pvalue = _chi2_pvalue(codes, joint)
    print("chi-square p-value", pvalue)
    assert (pvalue < 1e-6) if broken else (pvalue > 1e-3), pvalue


def test_neighbour_table_matches_brute_force():
    vectors = np.asarray(FSQ((5, 4, 3)).implicit_codebook())
    k = 7
    table = sjd.neighbour_table(vectors, k, chunk=13)
    for i, v in enumerate(vectors):
        d = [(float(((v - w) ** 2).sum()), j) for j, w in enumerate(vectors) if j != i]
        np.testing.assert_array_equal(table[i], [j for _, j in sorted(d)[:k]])
    with pytest.raises(config_lib.ConfigError, match="sample.sjd.lantern_k"):
        sjd.neighbour_table(vectors, len(vectors))


def test_relaxed_mass_follows_the_tv_budget():
    """p(d) + the largest nearest-first prefix of neighbour mass within delta."""
    p = jnp.asarray([[0.1, 0.2, 0.05, 0.3, 0.35]])
    nbrs = jnp.asarray([[1, 2, 3]] + [[0, 1, 2]] * 4)   # code 0's neighbours: 1, 2, 3
    d = jnp.asarray([0])
    for delta, want in [(0.0, 0.1), (0.2, 0.3), (0.26, 0.35), (0.6, 0.65), (1.5, 0.1 + 0.0)]:
        got = sjd.relaxed_mass(p, d, nbrs, jnp.float32(delta))
        np.testing.assert_allclose(got, [want], rtol=1e-6)
    # LANTERN++ form (delta > 1): budget (delta - 1) * p(d) = 0.3 -> adds 0.2 + 0.05
    got = sjd.relaxed_mass(p, d, nbrs, jnp.float32(4.0))
    np.testing.assert_allclose(got, [0.35], rtol=1e-6)


def test_lantern_accepts_more_than_sjd(setup):
    """On a random model with spread-out predictions, relaxing acceptance takes fewer passes
    (same keys), and every code is still an image code."""
    params = setup[2]
    sampler = _sampler(setup, "sjd", temperature_image=1.0, cfg_scale_image=1.0)
    caps = CAPTIONS * 4
    _, exact = sampler.images(params, caps, 16, jax.random.key(2), sjd=dict(window=6))
    codes, relaxed = sampler.images(params, caps, 16, jax.random.key(2),
                                    sjd=dict(window=6, lantern_k=20, lantern_delta=0.5))
    assert codes.min() >= 0 and codes.max() < setup[3].num_image_codes
    assert relaxed < exact   # seen: 16 -> 10 passes (row mean 14.5 -> 4.9)


@pytest.mark.parametrize("field,value", [("image_decoder", "beam"), ("sjd.window", 0),
                                         ("sjd.acceptance", "exact"), ("sjd.lantern_k", -1),
                                         ("sjd.lantern_delta", -0.1), ("zipar.window", 0)])
def test_bad_options_name_the_field(setup, test_config, field, value):
    """A bad decoder option stops with its field named: in the config, in a section given
    to a sampler, and as a per-call override."""
    match = f"sample.{field}="
    section, _, name = field.rpartition(".")
    override = {section: {name: value}} if section else {name: value}
    if not section:
        with pytest.raises(config_lib.ConfigError, match=match):
            _sampler(setup, value)
    else:   # each decoder checks its options, from its section and per call
        with pytest.raises(config_lib.ConfigError, match=match):
            _sampler(setup, section, **override).images(setup[2], CAPTIONS, 4,
                                                        jax.random.key(0))
        with pytest.raises(config_lib.ConfigError, match=match):
            _sampler(setup, section).images(setup[2], CAPTIONS, 4, jax.random.key(0),
                                            **override)
    cfg = ml_collections.ConfigDict(test_config.to_dict())
    (cfg.sample[section] if section else cfg.sample)[name] = value
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.validate(cfg)


def test_unknown_override_names_the_field(setup):
    """An older flat name (or a typo) as a per-call override is refused, not ignored."""
    with pytest.raises(config_lib.ConfigError, match="sample.sjd_window: not a config field"):
        _sampler(setup, "sjd").images(setup[2], CAPTIONS, 4, jax.random.key(0), sjd_window=4)
    with pytest.raises(config_lib.ConfigError, match="sample.sjd.windows: not a config field"):
        _sampler(setup, "sjd").images(setup[2], CAPTIONS, 4, jax.random.key(0),
                                      sjd=dict(windows=4))


@pytest.mark.parametrize("method,options", [
    ("plain", {}),
    ("sjd", dict(sjd=dict(window=3))),
    ("zipar", dict(zipar=dict(window=2))),
])
@pytest.mark.slow
def test_new_caption_lengths_reuse_the_compiled_decoder(setup, method, options):
    """Prompts are left-padded to a bucket: a batch whose longest caption differs, but stays
    inside the bucket, runs the program already compiled, with the same codes a batch of
    its own would get; a caption past the bucket compiles once more."""
    params = setup[2]
    sampler = _sampler(setup, method, temperature_image=0.0)
    short, longer = [[97, 98]], [[97, 98, 99, 100, 101, 102, 103]]
    sampler.images(params, short + short, 9, jax.random.key(0), **options)
    together, _ = sampler.images(params, short + longer, 9, jax.random.key(0), **options)
    jitted = sampler._jitted   # the sampler's own compiled program
    assert jitted._cache_size() == 1
    alone, _ = _sampler(setup, method, temperature_image=0.0).images(
        params, longer, 9, jax.random.key(0), **options)
    np.testing.assert_array_equal(together[1], alone[0])
    sampler.images(params, short + [[97] * 20], 9, jax.random.key(0), **options)
    assert jitted._cache_size() == 2
