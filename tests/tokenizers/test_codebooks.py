"""VQ, LFQ, RQ against plain numpy; straight-through gradients; buffer updates (EMA,
dead-code restart) through the tokenizer optimizer; usage statistics; the discriminator."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from mmar import schema
from mmar.tokenizers.image import codebooks, losses, quantizers
from mmar.tokenizers.image import train as tok_train
from mmar.tokenizers.image.autoencoder import Autoencoder


def _z(shape, seed=0, scale=1.0):
    return jnp.asarray(np.random.RandomState(seed).normal(0, scale, shape), jnp.float32)


def _np_nearest(x, book):
    return np.argmin(((x[:, None, :] - book[None]) ** 2).sum(-1), axis=1)


@pytest.mark.parametrize("l2", [True, False])
def test_vq_nearest_neighbour_matches_numpy(l2):
    vq = codebooks.VQ(32, 4, l2_norm=l2, rngs=nnx.Rngs(0))
    z = _z((3, 7, 4))
    z_q, codes, aux = vq(z)
    x = np.asarray(z).reshape(-1, 4)
    book = np.asarray(vq.codebook[...])
    if l2:
        x = x / np.linalg.norm(x, axis=-1, keepdims=True)
        book = book / np.linalg.norm(book, axis=-1, keepdims=True)
    ref = _np_nearest(x, book)
    np.testing.assert_array_equal(np.asarray(codes).ravel(), ref)
    np.testing.assert_allclose(np.asarray(z_q).reshape(-1, 4), book[ref], atol=1e-5)
    np.testing.assert_allclose(np.asarray(vq.codes_to_vectors(codes)), np.asarray(z_q), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(vq.vectors_to_codes(z_q)), np.asarray(codes))
    commit = np.mean((x - book[ref]) ** 2)
    np.testing.assert_allclose(float(aux["commitment"]), commit, rtol=1e-5)
    np.testing.assert_allclose(float(aux["loss"]), 1.25 * commit, rtol=1e-5)


def _np_lfq_entropies(z, tau):
    bits = z.shape[-1]
    book = np.array(list(itertools.product([-1.0, 1.0], repeat=bits)))[:, ::-1]
    logits = -((z[:, None, :] - book[None]) ** 2).sum(-1) / tau
    q = np.exp(logits - logits.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    h = lambda p: -(p * np.log(np.maximum(p, 1e-30))).sum(-1)
    return h(q).mean(), h(q.mean(0))


def test_lfq_codes_and_entropy_match_numpy():
    lfq = codebooks.LFQ(5, temperature=0.7, entropy_weight=0.1, gamma=1.0)
    z = _z((40, 5), seed=1, scale=0.5)
    z_q, codes, aux = lfq(z)
    zn = np.asarray(z, np.float64)
    ref_codes = ((zn > 0) * (2 ** np.arange(5))).sum(-1)
    np.testing.assert_array_equal(np.asarray(codes), ref_codes)
    np.testing.assert_array_equal(np.asarray(z_q), np.where(zn > 0, 1.0, -1.0))
    all_codes = jnp.arange(32)
    np.testing.assert_array_equal(np.asarray(lfq.vectors_to_codes(lfq.codes_to_vectors(all_codes))),
                                  np.arange(32))
    per_sample, codebook = _np_lfq_entropies(zn, 0.7)
    np.testing.assert_allclose(float(aux["sample_entropy"]), per_sample, rtol=1e-4)
    np.testing.assert_allclose(float(aux["codebook_entropy"]), codebook, rtol=1e-4)
    assert codebook <= np.log(32) + 1e-6


def _kmeans_books(x, size, depth):
    from sklearn.cluster import KMeans
    books, r = [], x
    for _ in range(depth):
        km = KMeans(size, n_init=1, random_state=0).fit(r)
        book = km.cluster_centers_.astype(np.float32)
        books.append(book)
        r = r - book[_np_nearest(r, book)]
    return books


def test_rq_matches_numpy_and_error_falls_with_depth():
    x = np.random.RandomState(2).normal(size=(300, 3)).astype(np.float32)
    depth, size = 4, 8
    books = _kmeans_books(x, size, depth)
    rq = codebooks.RQ(size, 3, depth, rngs=nnx.Rngs(0))
    for d, book in enumerate(books):
        rq.levels[d].codebook[...] = jnp.asarray(book)
    z_q, codes, aux = rq(jnp.asarray(x))
    assert codes.shape == (300, depth) and rq.num_codes == depth * size
    r, errors, total = x.copy(), [], np.zeros_like(x)
    for d, book in enumerate(books):
        k = _np_nearest(r, book)
        np.testing.assert_array_equal(np.asarray(codes[:, d]) - d * size, k)
        total += book[k]
        r = x - total
        errors.append(np.mean(r ** 2))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    np.testing.assert_allclose(np.asarray(z_q), total, atol=1e-5)
    np.testing.assert_allclose(np.asarray(rq.codes_to_vectors(codes)), total, atol=1e-5)
    # (greedy re-encoding of z_q need not give the same codes: a sum of codes is not
    # necessarily re-found code by code; encoding the same input does.)
    np.testing.assert_array_equal(np.asarray(rq.vectors_to_codes(jnp.asarray(x))),
                                  np.asarray(codes))


def test_rq_shared_codebook_has_one_book_and_per_depth_ids():
    rq = codebooks.RQ(16, 4, 3, shared=True, rngs=nnx.Rngs(0))
    assert len(rq.levels) == 1
    _, codes, _ = rq(_z((10, 4)))
    c = np.asarray(codes)
    for d in range(3):
        assert (c[:, d] >= 16 * d).all() and (c[:, d] < 16 * (d + 1)).all()


@pytest.mark.parametrize("make", [
    lambda: codebooks.VQ(16, 4, l2_norm=False, rngs=nnx.Rngs(0)),
    lambda: codebooks.LFQ(4),
    lambda: codebooks.RQ(16, 4, 2, rngs=nnx.Rngs(0)),
], ids=["vq", "lfq", "rq"])
def test_straight_through_gradient(make):
    q = make()
    z = _z((6, 4), seed=3)
    w = _z((6, 4), seed=4)
    grad = jax.grad(lambda z: jnp.sum(q(z)[0] * w))(z)   # (FSQ's: tests/test_fsq.py)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(w), rtol=1e-6)


def test_vq_codebook_gradient_only_on_used_codes():
    vq = codebooks.VQ(64, 4, l2_norm=False, rngs=nnx.Rngs(0))
    z = _z((5, 4), seed=5)
    graphdef, params = nnx.split(vq, nnx.Param)

    def loss(p):
        return nnx.merge(graphdef, p)(z)[2]["loss"]

    g = np.asarray(nnx.to_pure_dict(jax.grad(loss)(params))["codebook"])
    used = np.unique(np.asarray(vq(z)[1]))
    assert (np.abs(g[used]).sum(-1) > 0).all()
    assert (np.abs(np.delete(g, used, axis=0)) == 0).all()


def test_codebook_usage_on_known_codes():
    m = quantizers.codebook_usage(jnp.asarray([[0, 0], [1, 2]]), 8)
    assert float(m["usage_fraction"]) == pytest.approx(3 / 8)
    p = np.array([0.5, 0.25, 0.25])
    assert float(m["perplexity"]) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)


def _one_step(make_module, loss_of):
    """One optimizer step with the tokenizer optimizer (as the trainer would); returns
    (params before, params after) as pure dicts."""
    labels = tok_train.param_groups(make_module)
    # rbg keys: threefry init ops compile per parameter shape, seconds each on a busy CPU.
    graphdef, params, rest = nnx.split(make_module(nnx.Rngs(jax.random.key(0, impl="rbg"))),
                                       nnx.Param, ...)
    abstract = jax.tree.map(lambda v: v, params)
    params = nnx.to_pure_dict(params)
    cfg = schema.complete(dict(lr=1e-3, warmup_steps=0, steps=10, grad_clip=1.0),
                          section="image_tokenizer.train")
    tx = tok_train.tokenizer_optimizer(cfg, labels)

    def merged(p):
        state = jax.tree.map(lambda v: v, abstract)
        nnx.replace_by_pure_dict(state, p)
        return nnx.merge(graphdef, state, rest)

    grads = jax.jit(jax.grad(lambda p: loss_of(merged(p))))(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    return params, optax.apply_updates(params, updates)


def test_ema_update_and_dead_code_restart_through_the_optimizer():
    decay, k = 0.9, 8
    make = lambda rngs: codebooks.VQ(k, 3, l2_norm=False, ema=True, ema_decay=decay,
                                     restart=True, restart_threshold=0.95, rngs=rngs)
    vq = make(nnx.Rngs(jax.random.key(0, impl="rbg")))
    old = np.asarray(vq.codebook[...])
    # Latents near codes 0 and 1 only: the other 6 codes get no use this step.
    x = np.concatenate([old[0] + 0.01 * np.ones((6, 3)), old[1] - 0.02 * np.ones((4, 3))])
    x = jnp.asarray(x, jnp.float32)
    before, after = _one_step(make, lambda m: m(x)[2]["assign"])
    usage_old = np.full(k, 1 / k)
    counts = np.bincount(_np_nearest(np.asarray(x), old), minlength=k)
    usage = decay * usage_old + (1 - decay) * counts / len(x)
    dead = usage < 0.95 / k
    assert dead.sum() == k - 2 and not dead[:2].any()
    new = np.asarray(after["codebook"])
    for c in (0, 1):
        mean = np.asarray(x)[_np_nearest(np.asarray(x), old) == c].mean(0)
        np.testing.assert_allclose(new[c], decay * old[c] + (1 - decay) * mean, atol=1e-5)
    xs = np.asarray(x)
    for c in np.flatnonzero(dead):  # each restarted code now sits on a batch latent
        assert np.min(np.abs(xs - new[c]).sum(-1)) < 1e-5
    np.testing.assert_allclose(np.asarray(after["usage"]), np.where(dead, 1 / k, usage),
                               atol=1e-6)


def _disc_cfg(**kw):
    return ml_collections.ConfigDict(dict(
        downsample=8, arch="patch", channels=8, channel_mult=(1, 1, 1), num_res_blocks=0,
        quantizer="fsq", fsq=dict(levels=(5, 5, 5)), loss="l2",
        disc=dict(weight=0.5, start=2, channels=8), **kw))


@pytest.mark.slow
def test_discriminator_warm_up_and_step_counter():
    cfg = _disc_cfg()
    make = lambda rngs: Autoencoder(cfg, rngs=rngs)
    x = _z((2, 32, 32, 3), seed=6, scale=0.5)
    loss_of = lambda m: losses.reconstruction_loss(m, x, cfg)[0]
    before, after = _one_step(make, loss_of)
    assert float(after["step"]) == 1.0
    # Before disc_start the discriminator gets no gradient, so Adam leaves it untouched.
    for a, b in zip(jax.tree.leaves(before["discriminator"]),
                    jax.tree.leaves(after["discriminator"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    model = make(nnx.Rngs(jax.random.key(0, impl="rbg")))
    model.step[...] = jnp.asarray(5.0)
    loss, m = nnx.jit(lambda mod, x: losses.reconstruction_loss(mod, x, cfg))(model, x)
    assert float(m["disc_on"]) == 1.0
    np.testing.assert_allclose(float(loss), float(m["recon_loss"] + 0.5 * m["g_loss"]
                                                  + m["d_loss"]), rtol=1e-5)
