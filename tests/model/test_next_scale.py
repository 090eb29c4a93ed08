"""Next-scale prediction (mmar/model/next_scale.py, mmar/sample/next_scale.py): slot roles,
the block-causal mask against an explicit one, no slot reading its own scale, packing, and
scale-by-scale KV-cache decoding against the full forward."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from mmar import config as config_lib
from mmar.model import Decoder
from mmar.model import next_scale
from mmar.parallel import mesh as mesh_lib
from mmar.sample.next_scale import NextScaleSampler
from mmar.train import state as state_lib
from tests.helpers.model_configs import tiny_cfg

# ids of a 48-id toy vocabulary: text 0..29, <boi> 30, <eoi> 31, codes 32..47; scales 1, 2, 3
SCALES = (1, 2, 3)
LAYOUT_FIELD = (30, 32, 48, *SCALES)
LAYOUT = next_scale.ScaleLayout(30, 32, 48, SCALES)
BOI, EOI, N = 30, 31, 14


def image_row(text_before=3, text_after=2, seed=0):
    """<text> <boi> 14 codes <eoi> <text>: tokens [1, S], positions [1, S], codes [14]."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(32, 48, N)
    tokens = np.concatenate([rng.integers(0, 30, text_before), [BOI], codes, [EOI],
                             rng.integers(0, 30, text_after)]).astype(np.int32)
    return tokens[None], np.arange(len(tokens), dtype=np.int32)[None], codes


def model(seed=0):
    return Decoder(tiny_cfg(scale_layout=LAYOUT_FIELD), rngs=nnx.Rngs(seed))


def explicit_visible(b, s_len):
    """By hand: causal, plus the rest of a query's block for the slots b .. b + N - 1."""
    blocks = {}
    for s, (lo, hi) in enumerate(zip(next_scale.offsets(SCALES)[:-1],
                                     next_scale.offsets(SCALES)[1:])):
        for q in range(lo, hi):
            blocks[b + q] = (b + lo, b + hi - 1)
    out = np.zeros((s_len, s_len), bool)
    for i in range(s_len):
        end = blocks.get(i, (i, i))[1]
        out[i, :end + 1] = True
    return out


def test_structure_and_mask_follow_the_scales():
    tokens, positions, _ = image_row(text_before=3)
    st = next_scale.structure(jnp.asarray(tokens), jnp.asarray(positions), LAYOUT)
    b = 3
    q = np.asarray(st.q)[0]
    assert q[:b].tolist() == [-1] * b and q[b:b + N].tolist() == list(range(N))
    assert q[b + N:].tolist() == [-1] * (tokens.shape[1] - b - N)   # last code, <eoi>, text
    got = np.asarray(next_scale.visible(st.horizon, tokens.shape[1]))[0]
    np.testing.assert_array_equal(got, explicit_visible(b, tokens.shape[1]))
    pos = np.asarray(st.positions)[0]
    # scale 2 (slots b+1 .. b+4): one sequence component, cells at 0.25 / 1.75 of a 3-grid
    np.testing.assert_allclose(pos[b + 1:b + 5, 0], b + 1)
    np.testing.assert_allclose(pos[b + 1:b + 5, 1], b + 1 + np.array([0.25, 0.25, 1.75, 1.75]))
    np.testing.assert_allclose(pos[b + 1:b + 5, 2], b + 1 + np.array([0.25, 1.75, 0.25, 1.75]))
    np.testing.assert_allclose(pos[b + N], b + N)    # the slot predicting <eoi>: 1-D


def test_input_matrix_reads_only_coarser_scales_and_keeps_constants():
    p = next_scale.input_matrix(SCALES)
    off = next_scale.offsets(SCALES)
    assert np.all(p[:off[1]] == 0)
    for s in range(1, len(SCALES)):
        rows = p[off[s]:off[s + 1]]
        assert np.all(rows[:, off[s]:] == 0)                  # nothing of its own scale
        for t in range(s):   # a constant map stays constant: each scale's weights sum to 1
            np.testing.assert_allclose(rows[:, off[t]:off[t + 1]].sum(1), 1.0, atol=1e-6)


def test_a_scale_never_reads_its_own_or_finer_codes():
    """Changing the codes of scale s and later leaves every logit before scale s's block
    end unchanged: the block's inputs are the coarser maps only, however it attends."""
    m = model()
    tokens, positions, _ = image_row(text_before=3)
    seg = np.ones_like(tokens)
    base = np.asarray(m(tokens, positions, seg))
    off, b = next_scale.offsets(SCALES), 3
    for s in range(1, len(SCALES)):
        changed = tokens.copy()
        lo = b + 1 + off[s]
        changed[0, lo:b + 1 + N] = 32 + (changed[0, lo:b + 1 + N] - 32 + 5) % 16
        other = np.asarray(m(changed, positions, seg))
        end = b + off[s + 1] - 1     # the last slot of scale s's block
        np.testing.assert_allclose(other[0, :end + 1], base[0, :end + 1], atol=1e-5)
        assert np.abs(other[0, end + 1:] - base[0, end + 1:]).max() > 1e-4


@pytest.mark.parametrize("block", [4, 7])
def test_blockwise_kernel_equals_the_explicit_mask_values_and_gradients(block):
    """The blockwise kernel reads each query block's look-ahead (the horizon) and gives the
    xla path's logits and parameter gradients; blocks of 4 and 7 queries cut the scale
    blocks at different places."""
    tokens, positions, _ = image_row(text_before=3, text_after=4)
    seg = np.ones_like(tokens)
    models = [Decoder(tiny_cfg(scale_layout=LAYOUT_FIELD, attention=a, attention_block=block),
                      rngs=nnx.Rngs(4)) for a in ("xla", "blockwise")]

    def loss(m):
        logits = m(tokens, positions, seg)
        return jnp.sum(jax.nn.log_softmax(logits)[0, :-1, :] * jax.nn.one_hot(
            tokens[0, 1:], 48)), logits

    (la, xa), ga = nnx.value_and_grad(loss, has_aux=True)(models[0])
    (lb, xb), gb = nnx.value_and_grad(loss, has_aux=True)(models[1])
    np.testing.assert_allclose(np.asarray(xb), np.asarray(xa), atol=1e-5)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-4)


def test_packed_rows_equal_single_documents():
    m = model(1)
    a, pa, _ = image_row(text_before=2, seed=3)
    t, pt = np.arange(5, 11, dtype=np.int32)[None], np.arange(6, dtype=np.int32)[None]
    row = np.concatenate([t, a], 1)
    pos = np.concatenate([pt, pa], 1)
    seg = np.concatenate([np.ones_like(t), 2 * np.ones_like(a)], 1)
    packed = np.asarray(m(row, pos, seg))
    alone = np.asarray(m(a, pa, np.ones_like(a)))
    np.testing.assert_allclose(packed[0, t.shape[1]:], alone[0], atol=1e-5)


@pytest.mark.parametrize("mot", [False, True])
def test_scale_by_scale_cache_equals_full_forward(mot):
    """Prefill `text <boi>` for two rows (the second left-padded), then one call per scale
    with the sampler's inputs, positions and mask: each block's logits are the full
    forward's at those slots, and a whole-image prompt prefilled at once is too."""
    cfg = tiny_cfg(scale_layout=LAYOUT_FIELD, **({"mot": {"enabled": True}} if mot else {}))
    m = Decoder(cfg, rngs=nnx.Rngs(2))
    r0, p0, c0 = image_row(text_before=4, seed=0)
    r1, p1, c1 = image_row(text_before=2, seed=1)
    pad = r0.shape[1] - r1.shape[1]
    tokens = np.stack([r0[0], np.concatenate([np.zeros(pad, np.int32), r1[0]])])
    positions = np.stack([p0[0], np.concatenate([np.zeros(pad, np.int32), p1[0]])])
    seg = np.stack([np.ones(r0.shape[1], np.int32),
                    np.concatenate([np.zeros(pad, np.int32), np.ones(r1.shape[1], np.int32)])])
    modality = ((tokens >= 32) & (tokens < 48)).astype(np.int32)
    full = np.asarray(m(tokens, positions, seg, modality))
    b, plen = 4, 5                                        # <boi> slot of row 0; prompt length
    cache = m.init_cache(2, plen + N - 1)
    logits, cache = m.decode(tokens[:, :plen], positions[:, :plen], seg[:, :plen], cache,
                             modality[:, :plen])
    np.testing.assert_allclose(np.asarray(logits)[:, -1], full[:, b], atol=1e-4)
    codes = jnp.asarray(np.stack([c0, c1]).astype(np.int32))
    off = next_scale.offsets(SCALES)
    for s in range(1, len(SCALES)):
        n_s, start = SCALES[s] ** 2, int(cache["index"])
        block_pos = next_scale.block_positions(jnp.asarray(positions[:, b]), s, LAYOUT)
        inputs = m.scale_inputs(codes, s)
        visible = next_scale.visible(jnp.full((2, n_s), start + n_s - 1), plen + N - 1)
        ones = jnp.ones((2, n_s), jnp.int32)
        before = cache
        logits, cache = m.decode(codes[:, :n_s], block_pos, ones, cache, ones,
                                 visible=visible, inputs=inputs)
        np.testing.assert_allclose(np.asarray(logits), full[:, b + off[s]:b + off[s + 1]],
                                   atol=1e-4)
        # the block's tokens in another order (inputs with their positions): the same
        # predictions, permuted: nothing depends on the order inside a scale
        perm = np.random.default_rng(s).permutation(n_s)
        shuffled, _ = m.decode(codes[:, :n_s], block_pos[:, perm], ones, before, ones,
                               visible=visible, inputs=inputs[:, perm])
        np.testing.assert_allclose(np.asarray(shuffled), np.asarray(logits)[:, perm],
                                   atol=1e-4)
    # image-to-text: the whole image in one prefill
    cache = m.init_cache(2, tokens.shape[1])
    logits, _ = m.decode(tokens, positions, seg, cache, modality)
    np.testing.assert_allclose(np.asarray(logits)[0], full[0], atol=1e-4)
    np.testing.assert_allclose(np.asarray(logits)[1, pad:], full[1, pad:], atol=1e-4)


def next_scale_config(test_config, **image_tokenizer):
    cfg = ml_collections.ConfigDict(test_config.to_dict())
    with cfg.unlocked():
        cfg.data.image_order = "next_scale"
        cfg.eval.tasks = ("frechet",)
        cfg.image_tokenizer.quantizer = "msrq"
        cfg.image_tokenizer.update(image_tokenizer)
        cfg.model.update(init_std=0.5, vocab_size=0)  # peaked, varied predictions
    return cfg


def test_config_derives_the_layout_and_refuses_mismatches(test_config):
    cfg = config_lib.validate(next_scale_config(test_config))
    vocab = config_lib.make_vocab(cfg)
    assert tuple(cfg.model.scale_layout) == (vocab.boi, vocab.image_offset,
                                             vocab.image_offset + 256, 1, 2, 3, 4)
    refusals = [("image_tokenizer", "msrq", {"scales": (1, 2, 3)},
                 "the last scale must be the code grid"),
                ("image_tokenizer", None, {"quantizer": "fsq"},
                 "needs image_tokenizer.quantizer='msrq'"),
                ("model", None, {"attention": "splash"}, "model.attention='splash'"),
                ("data", None, {"image_order": "raster"},
                 "needs data.image_order='next_scale'")]
    for section, sub, fields, message in refusals:
        bad = next_scale_config(test_config)
        (bad[section] if sub is None else bad[section][sub]).update(fields)
        with pytest.raises(config_lib.ConfigError, match=message):
            config_lib.validate(bad)


def test_sampler_draws_every_scale_in_one_pass_each(test_config):
    cfg = config_lib.validate(next_scale_config(test_config))
    vocab = config_lib.make_vocab(cfg)
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    state, params = state_lib.create(lambda r: Decoder(cfg.model, rngs=r), mesh, seed=3)
    layout = next_scale.ScaleLayout(*cfg.model.scale_layout[:3], (1, 2, 3, 4))
    sampler = NextScaleSampler(state, vocab, cfg.model.vocab_size, cfg.sample, layout)
    codes, passes = sampler.images(params, [[1, 2, 3], [4, 5]], 30, jax.random.key(0),
                                   cfg_scale_image=2.0, temperature_image=1.0)
    assert codes.shape == (2, 30) and passes == 4
    assert codes.min() >= 0 and codes.max() < 256 and len(set(codes.ravel())) > 4
    greedy, _ = sampler.images(params, [[1, 2, 3]], 30, jax.random.key(1),
                               temperature_image=0.0, cfg_scale_image=1.0)
    # greedy codes are the argmax of the full forward over the row they make, scale by scale
    row = np.array([[vocab.bos, 1, 2, 3, vocab.boi, *(vocab.image_offset + greedy[0])]],
                   np.int32)
    logits = np.asarray(state.merge(params)(row, np.arange(row.shape[1], dtype=np.int32)[None],
                                            np.ones_like(row)))[0]
    codes_logits = logits[4:4 + 30, vocab.image_offset:vocab.image_offset + 256]
    np.testing.assert_array_equal(codes_logits.argmax(-1), greedy[0])
    with pytest.raises(ValueError, match="writes 30 codes"):
        sampler.images(params, [[1]], 16, jax.random.key(0))
