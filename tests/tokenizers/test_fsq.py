"""FSQ: against a numpy reference, code round trips, reachability, straight-through grads."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmar.tokenizers.image.quantizers import FSQ, codebook_usage, make_quantizer


def _np_fsq(z, levels, eps=1e-3):
    """Plain numpy FSQ (the paper's listing, arctanh shift): (z_q, codes)."""
    levels = np.asarray(levels, np.float64)
    half_l = (levels - 1) * (1 - eps) / 2
    offset = np.where(levels % 2 == 1, 0.0, 0.5)
    ratio = offset / half_l
    shift = np.zeros_like(ratio)
    for i, r in enumerate(ratio):
        if r < 1.0:  # level 2 (r > 1): no shift
            shift[i] = np.arctanh(r)
    bounded = np.tanh(z.astype(np.float64) + shift) * half_l - offset
    half_width = np.floor(levels / 2)
    z_q = np.round(bounded) / half_width
    digits = np.round(z_q * half_width + half_width).astype(np.int64)
    basis = np.concatenate([[1], np.cumprod(levels[:-1])]).astype(np.int64)
    return z_q, (digits * basis).sum(-1)


@pytest.mark.parametrize("levels", [(5, 5, 5, 5), (8, 5, 5, 5), (4, 3), (7, 6, 2)])
def test_matches_numpy_reference(levels):
    fsq = FSQ(levels)
    assert fsq.dim == len(levels)
    assert fsq.num_codes == int(np.prod(levels))
    z = np.random.RandomState(0).normal(0, 2, (4, 33, len(levels))).astype(np.float32)
    z_q, codes, aux = fsq(jnp.asarray(z))
    ref_q, ref_codes = _np_fsq(z, levels)
    assert z_q.shape == z.shape and codes.shape == z.shape[:-1]
    assert codes.dtype == jnp.int32
    np.testing.assert_allclose(np.asarray(z_q), ref_q, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(codes), ref_codes)
    assert float(aux["loss"]) == 0.0
    assert np.all(np.abs(np.asarray(z_q)) <= 1.0)


@pytest.mark.parametrize("levels", [(3, 4), (5, 5, 5, 5), (8, 5, 5, 5)])
def test_round_trip_and_range(levels):
    fsq = FSQ(levels)
    z = jnp.asarray(np.random.RandomState(1).normal(0, 3, (256, len(levels))), jnp.float32)
    z_q, codes, _ = fsq(z)
    assert int(codes.min()) >= 0 and int(codes.max()) < fsq.num_codes
    np.testing.assert_array_equal(np.asarray(fsq.codes_to_vectors(codes)), np.asarray(z_q))
    np.testing.assert_array_equal(np.asarray(fsq.vectors_to_codes(z_q)), np.asarray(codes))
    all_codes = jnp.arange(fsq.num_codes, dtype=jnp.int32)
    np.testing.assert_array_equal(
        np.asarray(fsq.vectors_to_codes(fsq.codes_to_vectors(all_codes))), np.asarray(all_codes)
    )


def test_every_code_reachable_from_latents():
    levels = (3, 4)
    fsq = FSQ(levels)
    # Inverse of the bound: pick a latent z whose bounded value is each integer on the grid.
    half_l = (np.asarray(levels) - 1) * (1 - fsq.eps) / 2
    offset = np.where(np.asarray(levels) % 2 == 1, 0.0, 0.5)
    shift = np.arctanh(offset / half_l)
    grids = [np.arange(l) - l // 2 for l in levels]  # integer values of the rounded bound
    zs = []
    for point in itertools.product(*grids):
        target = np.asarray(point, np.float64)
        zs.append(np.arctanh(np.clip((target + offset) / half_l, -0.9999, 0.9999)) - shift)
    _, codes, _ = fsq(jnp.asarray(np.stack(zs), jnp.float32))
    assert sorted(np.asarray(codes).tolist()) == list(range(fsq.num_codes))
    # The implicit codebook spans exactly the normalised grid.
    book = np.asarray(fsq.implicit_codebook())
    assert book.shape == (12, 2)
    np.testing.assert_allclose(sorted(set(book[:, 0])), [-1.0, 0.0, 1.0])
    np.testing.assert_allclose(sorted(set(book[:, 1])), [-1.0, -0.5, 0.0, 0.5])


def test_straight_through_gradient():
    fsq = FSQ((5, 4, 3))
    rng = np.random.RandomState(2)
    z = jnp.asarray(rng.normal(0, 1, (16, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(0, 1, (16, 3)), jnp.float32)
    g = jax.grad(lambda z: jnp.sum(fsq(z)[0] * w))(z)
    half = jnp.asarray([2.0, 2.0, 1.0])
    g_ref = jax.grad(lambda z: jnp.sum(fsq.bound(z) / half * w))(z)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-6)
    assert np.all(np.asarray(g) != 0)


def test_codebook_usage():
    u = codebook_usage(jnp.asarray([0, 1, 2, 3]), 8)
    assert float(u["usage_fraction"]) == pytest.approx(0.5)
    assert float(u["perplexity"]) == pytest.approx(4.0, rel=1e-5)
    u = jax.jit(codebook_usage, static_argnums=1)(jnp.zeros((3, 5), jnp.int32), 10)
    assert float(u["usage_fraction"]) == pytest.approx(0.1)
    assert float(u["perplexity"]) == pytest.approx(1.0)


def test_make_quantizer():
    cfg = ml_collections.ConfigDict(dict(quantizer="fsq", fsq=dict(levels=(8, 5, 5, 5))))
    q = make_quantizer(cfg)
    assert isinstance(q, FSQ) and q.num_codes == 1000
    cfg.quantizer = "pq"  # not a quantizer
    with pytest.raises(ValueError, match=r"image_tokenizer\.quantizer.*fsq"):
        make_quantizer(cfg)
    with pytest.raises(ValueError, match=r"image_tokenizer\.fsq\.levels"):
        FSQ((5, 1))


@pytest.mark.parametrize("levels,groups", [((5, 5, 5, 5), 2), ((3, 3, 3), 3), ((4, 2, 8), 1)])
def test_groups_index_the_same_vectors_as_the_flat_codebook(levels, groups):
    """A factorised FSQ quantizes exactly as the flat one (same z_q); its sub-codes are the
    flat code's mixed-radix digits per slice, offset by slice: sub-code g = flat digits of
    slice g + g * K. So the joint distribution over (sub-code 0, ..., sub-code G-1) is the
    flat one's over codes, re-indexed: nothing is lost or merged."""
    flat, split = FSQ(levels), FSQ(levels, groups=groups)
    k = int(np.prod(levels[:len(levels) // groups]))
    assert split.depth == groups and split.codes_per_depth == k
    assert split.num_codes == groups * k
    z = jnp.asarray(np.random.RandomState(2).normal(0, 2, (64, len(levels))), jnp.float32)
    zq_flat, codes_flat, _ = flat(z)
    zq_split, codes_split, _ = split(z)
    np.testing.assert_array_equal(np.asarray(zq_flat), np.asarray(zq_split))
    sub = np.asarray(codes_split).reshape(64, groups)
    flat_from_sub = np.zeros(64, np.int64)
    for g in range(groups):          # each sub-code is one base-k digit of the flat code
        assert ((sub[:, g] >= g * k) & (sub[:, g] < (g + 1) * k)).all()
        flat_from_sub += (sub[:, g] - g * k) * k ** g
    np.testing.assert_array_equal(flat_from_sub, np.asarray(codes_flat))
    np.testing.assert_array_equal(np.asarray(split.codes_to_vectors(codes_split)),
                                  np.asarray(zq_flat))


def test_groups_need_equal_slices():
    with pytest.raises(ValueError, match=r"fsq\.groups=2.*equal level products"):
        FSQ((5, 5, 3, 3), groups=2)
    with pytest.raises(ValueError, match=r"fsq\.groups=2: must divide the 3 channels"):
        FSQ((5, 5, 5), groups=2)
    with pytest.raises(ValueError, match="no flat codebook"):
        FSQ((5, 5), groups=2).implicit_codebook()
