"""RandAR sampling against a plain loop of full forward passes (no cache, no visible mask)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from mmar import config as config_lib
from mmar.model.transformer import Decoder
from mmar.parallel import mesh as mesh_lib
from mmar.sample import core, randar
from mmar.train import state

N = 6  # codes per test image (grid indices 0..5 of the 16 position ids)


@pytest.fixture(scope="module")
def setup(test_config):
    cfg = ml_collections.ConfigDict(test_config.to_dict())
    with cfg.unlocked():
        cfg.data.update(image_order="randar", seq_len=80)
        cfg.eval.tasks = ("frechet",)  # stories are raster / RAR only
        cfg.model.update(init_std=0.5, vocab_size=0)  # peaked, varied predictions
    cfg = config_lib.validate(cfg)
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    model_state, params = state.create(lambda r: Decoder(cfg.model, rngs=r), mesh, seed=3)
    return cfg, model_state, params, config_lib.make_vocab(cfg)


def _sampler(setup, **sample):
    cfg, model_state, _, vocab = setup
    sample_cfg = core.section(cfg.sample, **{"temperature_image": 0.0, **sample})
    return randar.RandarSampler(model_state, vocab, cfg.model.vocab_size, sample_cfg)


_FORWARD = {}


def _last_logits(model, seq, pos, width=40):
    """The model's full forward (no cache) at the last token of `seq`; rows are right-padded
    to `width` (padding is later than every real token, so causality hides it) so that one
    jit compile serves every length."""
    if id(model) not in _FORWARD:
        graphdef, weights = nnx.split(model)
        fn = jax.jit(lambda w, t, p, s: nnx.merge(graphdef, w)(t, p, s))
        _FORWARD.clear()
        _FORWARD[id(model)] = (fn, weights, model)
    fn, weights, _ = _FORWARD[id(model)]
    t, p, s = (np.zeros((1, width), np.int32) for _ in range(3))
    t[0, :len(seq)], p[0, :len(seq)], s[0, :len(seq)] = seq, pos, 1
    return np.asarray(fn(weights, t, p, s)[0, len(seq) - 1])


def _reference(model, vocab, caption, groups, known=(), scale=1.0):
    """Greedy RandAR by full forwards: each query P_j is appended alone to the committed
    sequence; after a group, its P c pairs are committed. `known`: (grid, code) pairs."""
    allowed = vocab.is_image(np.arange(model.embed.embedding.shape[0]))

    def prompt(text):
        seq, pos = [vocab.bos, *text, vocab.boi], list(range(len(text) + 2))
        for g, c in known:
            seq += [int(vocab.position_ids(g)), int(vocab.image_ids(c))]
            pos += [len(text) + 2 + g] * 2
        return seq, pos, len(text) + 1

    streams = [prompt(caption)] + ([prompt([])] if scale != 1.0 else [])
    out = {}
    for group in groups:
        drawn = []
        for g in group:
            logits = [_last_logits(model, s + [int(vocab.position_ids(g))], p + [b + 1 + g])
                      for s, p, b in streams]
            mixed = logits[0] if scale == 1.0 else logits[1] + scale * (logits[0] - logits[1])
            drawn.append(int(np.argmax(np.where(allowed, mixed, -np.inf))))
        for g, c in zip(group, drawn):
            out[g] = c - vocab.image_offset
            for s, p, b in streams:
                s += [int(vocab.position_ids(g)), c]
                p += [b + 1 + g] * 2
    return [out[g] for g in range(N) if g in out]


def _groups(order, sizes):
    cuts = np.cumsum((0,) + tuple(sizes))
    return [list(order[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]


CAPTIONS = [[97, 32, 98], [99, 100, 101, 102, 103]]   # different lengths: left padding


def test_one_per_step_raster_equals_sequential_full_forward(setup):
    _, model_state, params, vocab = setup
    res = _sampler(setup, cfg_scale_image=1.0).generate(params, CAPTIONS, N,
                                                        jax.random.key(0), order="raster")
    assert res.forward_passes == N
    model = model_state.merge(params)
    for caption, got in zip(CAPTIONS, res.codes):
        ref = _reference(model, vocab, caption, [[g] for g in range(N)])
        assert got.tolist() == ref


@pytest.mark.parametrize("sizes,scale", [((2, 2, 2), 1.0), ((1, 3, 2), 3.0)])
def test_parallel_queries_equal_single_query_forwards(setup, sizes, scale):
    """m queries per pass = m single-query forwards on the committed prefix (greedy, also
    with guidance); random orders, different per row."""
    _, model_state, params, vocab = setup
    sampler = _sampler(setup, cfg_scale_image=scale)
    orders = np.stack([np.random.default_rng(i).permutation(N) for i in range(2)])
    res = sampler.generate(params, CAPTIONS, N, jax.random.key(0), order=orders, sizes=sizes)
    assert res.forward_passes == len(sizes)
    model = model_state.merge(params)
    for caption, order, got in zip(CAPTIONS, orders, res.codes):
        ref = _reference(model, vocab, caption, _groups(order, sizes), scale=scale)
        assert got.tolist() == ref


def test_query_logits_equal_single_query_forward(setup):
    """The visible mask itself: 3 queries after committed pairs, logits vs full forwards."""
    _, model_state, params, vocab = setup
    model = model_state.merge(params)
    seq = [vocab.bos, 97, 98, vocab.boi]
    pos = [0, 1, 2, 3]
    for g, c in ((4, 7), (1, 30)):
        seq += [int(vocab.position_ids(g)), int(vocab.image_ids(c))]
        pos += [4 + g] * 2
    queries = [0, 5, 2]
    tokens = jnp.asarray([seq + [int(vocab.position_ids(g)) for g in queries]])
    positions = jnp.asarray([pos + [4 + g for g in queries]])
    max_len = tokens.shape[1]
    cache = model.init_cache(1, max_len)
    vis = randar.step_visible(1, 0, len(seq), len(queries), max_len)
    logits, _ = model.decode(tokens, positions, jnp.ones_like(tokens), cache, visible=vis)
    for i, g in enumerate(queries):
        ref = _last_logits(model, seq + [int(vocab.position_ids(g))], pos + [4 + g])
        np.testing.assert_allclose(np.asarray(logits[0, len(seq) + i]), ref, rtol=2e-4,
                                   atol=2e-4)


def test_inpainting_keeps_known_codes_and_conditions_on_them(setup):
    _, model_state, params, vocab = setup
    mask = np.array([True, False, False, True, False, False])
    known = np.array([[11, 0, 0, 42, 0, 0], [3, 0, 0, 99, 0, 0]])
    res = _sampler(setup, cfg_scale_image=1.0, randar=dict(tokens_per_step=2)).generate(
        params, CAPTIONS, N, jax.random.key(1), order="raster", known=known, known_mask=mask)
    np.testing.assert_array_equal(res.codes[:, mask], known[:, mask])
    assert res.forward_passes == 2     # 4 unknown codes, 2 per pass
    assert res.orders[:, :2].tolist() == [[0, 3], [0, 3]]
    model = model_state.merge(params)
    for caption, row, got in zip(CAPTIONS, known, res.codes):
        ref = _reference(model, vocab, caption, [[1, 2], [4, 5]],
                         known=[(0, row[0]), (3, row[3])])
        assert got[~mask].tolist() == ref


def test_random_orders_differ_per_row_and_cover_the_grid(setup):
    _, _, params, _ = setup
    res = _sampler(setup, temperature_image=1.0).generate(params, CAPTIONS, N,
                                                          jax.random.key(2))
    assert all(sorted(o) == list(range(N)) for o in res.orders.tolist())
    assert res.orders[0].tolist() != res.orders[1].tolist()
    assert res.codes.shape == (2, N) and (res.codes >= 0).all()
    assert (res.codes < setup[3].num_image_codes).all()


def test_group_sizes():
    assert randar.group_sizes(7, schedule="constant", tokens_per_step=3, steps=8) == (3, 3, 1)
    cos = randar.group_sizes(256, schedule="cosine", tokens_per_step=1, steps=88)
    assert sum(cos) == 256 and cos[0] == 1 and 80 <= len(cos) <= 92
    assert list(cos[:10]) == sorted(cos[:10])  # grows (RandAR: few first, more later)
    with pytest.raises(ValueError, match="sample.randar.schedule"):
        randar.group_sizes(4, schedule="linear", tokens_per_step=1, steps=8)
    # steps after the first, as scanned runs of equal (previous m, m)
    assert randar.runs((3, 3, 3, 1)) == [(3, 3, 2), (3, 1, 1)]
    assert randar.runs((1, 2, 2, 2)) == [(1, 2, 1), (2, 2, 2)]
