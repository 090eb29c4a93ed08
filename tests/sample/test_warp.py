"""The one logits warp (temperature / top-k / top-p) against the distribution computed in plain
numpy: the draws of `sample_logits` and the probabilities of `warped_probs`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmar.sample.core import sample_logits, warped_probs

LOGITS = np.array([2.0, 1.5, 1.4, 0.3, 0.0, -0.5, 3.0, -1.0, 0.8, 1.0], np.float32)
ALLOWED = np.array([1, 1, 1, 1, 1, 1, 0, 1, 1, 1], bool)   # the largest logit is not allowed


def expected(temperature, top_k, top_p):
    """The reference: mask, scale, keep the top k, then the smallest prefix reaching p."""
    z = np.where(ALLOWED, LOGITS / temperature, -np.inf)
    order = np.argsort(-z, kind="stable")
    keep = np.zeros_like(ALLOWED)
    k = top_k or len(z)
    kept = [i for i in order[:k] if np.isfinite(z[i])]
    p = np.exp(z[kept] - z[kept].max())
    p /= p.sum()
    mass = 0.0
    for i, pi in zip(kept, p):
        if mass >= top_p and top_p < 1:
            break
        keep[i] = True
        mass += pi
    out = np.where(keep, np.exp(z - z[keep].max()), 0.0)
    return out / out.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.6), (1.3, 5, 0.8), (1.0, 0, 0.01)])
def test_matches_reference_distribution(temperature, top_k, top_p):
    n = 40000
    rows = lambda x, dt: jnp.full((n,), x, dt)  # noqa: E731
    toks = sample_logits(jnp.tile(LOGITS, (n, 1)), jnp.tile(ALLOWED, (n, 1)),
                         jax.random.key(0), rows(temperature, jnp.float32),
                         rows(top_k, jnp.int32), rows(top_p, jnp.float32))
    freq = np.bincount(np.asarray(toks), minlength=len(LOGITS)) / n
    want = expected(temperature, top_k, top_p)
    assert np.all(freq[want == 0] == 0), (freq, want)   # only allowed, kept ids are drawn
    np.testing.assert_allclose(freq, want, atol=0.01)
    support = {(1.0, 3, 1.0): 3, (1.0, 0, 0.01): 1}   # the reference cuts what it should
    if (temperature, top_k, top_p) in support:
        assert (want > 0).sum() == support[(temperature, top_k, top_p)]


def test_temperature_zero_is_argmax_of_allowed_per_row():
    logits = jnp.stack([LOGITS, -LOGITS])
    toks = sample_logits(logits, jnp.stack([ALLOWED, ALLOWED]), jax.random.key(1),
                         jnp.array([0.0, 0.0]), jnp.array([0, 0]), jnp.array([1.0, 1.0]))
    assert toks.tolist() == [0, 7]   # 6 (largest) is not allowed; row 2 negated
    # Settings are per row: row 0 greedy, row 1 top-1.
    toks = sample_logits(logits, jnp.stack([ALLOWED, ALLOWED]), jax.random.key(1),
                         jnp.array([0.0, 5.0]), jnp.array([0, 1]), jnp.array([1.0, 1.0]))
    assert toks.tolist() == [0, 7]


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.6), (1.3, 5, 0.8), (1.0, 0, 0.01)])
def test_probabilities_are_the_reference_distribution(temperature, top_k, top_p):
    """`warped_probs` (SJD's target distribution) is exactly what `sample_logits` draws."""
    probs = warped_probs(jnp.asarray(LOGITS)[None], jnp.asarray(ALLOWED)[None],
                         jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))
    np.testing.assert_allclose(np.asarray(probs)[0], expected(temperature, top_k, top_p),
                               atol=1e-6)


def test_probabilities_at_temperature_zero_are_a_point_mass():
    probs = warped_probs(jnp.stack([LOGITS, -LOGITS]), jnp.stack([ALLOWED, ALLOWED]),
                         jnp.array([0.0, 0.0]), jnp.array([0, 0]), jnp.array([1.0, 1.0]))
    np.testing.assert_array_equal(np.asarray(probs).argmax(-1), [0, 7])
    np.testing.assert_array_equal(np.asarray(probs).max(-1), [1.0, 1.0])
