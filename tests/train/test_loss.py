"""The decoder loss against a plain numpy reference."""
import jax.numpy as jnp
import numpy as np

from mmar.train.loss import decoder_loss


def _numpy_loss(logits, tokens, weights, modality, z):
    logits = logits[:, :-1].astype(np.float64)
    targets, w, mod = tokens[:, 1:], weights[:, 1:], modality[:, 1:]
    m = logits.max(-1, keepdims=True)
    log_z = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    nll = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    loss = (w * (nll + z * log_z ** 2)).sum() / w.sum()
    out = {"loss": loss}
    for name, k in (("text", 0), ("image", 1)):
        sel = (w > 0) & (mod == k)
        out[f"loss_{name}"] = nll[sel].mean()
        out[f"accuracy_{name}"] = (logits.argmax(-1) == targets)[sel].mean()
    return out


def test_decoder_loss_matches_numpy():
    rng = np.random.default_rng(0)
    b, s, v = 3, 10, 17
    logits = rng.normal(size=(b, s, v)).astype(np.float32) * 3
    tokens = rng.integers(0, v, (b, s)).astype(np.int32)
    tokens[0, 3] = logits[0, 2].argmax()  # at least one correct prediction
    modality = rng.integers(0, 2, (b, s)).astype(np.int32)
    weights = rng.uniform(0.5, 2.0, (b, s)).astype(np.float32)
    weights[:, -2:] = 0.0  # padding
    batch = {"tokens": tokens, "loss_weights": weights, "modality": modality}
    loss, metrics = decoder_loss(jnp.asarray(logits), batch, z_loss=1e-3)
    ref = _numpy_loss(logits, tokens, weights, modality, 1e-3)
    np.testing.assert_allclose(float(loss), ref["loss"], rtol=1e-5)
    for k in ("loss_text", "loss_image", "accuracy_text", "accuracy_image"):
        np.testing.assert_allclose(float(metrics[k]), ref[k], rtol=1e-5, err_msg=k)


def test_padding_does_not_count():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 6, 9)).astype(np.float32)
    tokens = rng.integers(0, 9, (1, 6)).astype(np.int32)
    w = np.array([[0, 1, 1, 1, 0, 0]], np.float32)
    batch = {"tokens": tokens, "loss_weights": w, "modality": np.zeros((1, 6), np.int32)}
    changed = dict(batch, tokens=tokens.copy())
    changed["tokens"][0, 4:] = (tokens[0, 4:] + 1) % 9  # padding targets differ
    a, _ = decoder_loss(jnp.asarray(logits), batch)
    b, _ = decoder_loss(jnp.asarray(logits), changed)
    assert float(a) == float(b)


def test_tied_top_logits_count_as_wrong():
    """Constant logits (every id ties for the top) must not score as all correct."""
    tokens = jnp.asarray([[1, 2, 3, 0]], jnp.int32)
    batch = {"tokens": tokens, "loss_weights": jnp.ones((1, 4)),
             "modality": jnp.zeros((1, 4), jnp.int32)}
    _, metrics = decoder_loss(jnp.zeros((1, 4, 5)), batch)
    assert float(metrics["accuracy_text"]) == 0.0
    peaked = jnp.zeros((1, 4, 5)).at[0, jnp.arange(3), jnp.asarray([2, 3, 0])].set(1.0)
    _, metrics = decoder_loss(peaked, batch)
    assert float(metrics["accuracy_text"]) == 1.0
