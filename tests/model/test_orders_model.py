"""Decoders trained in other image orders: RandAR likelihood, RAR target embeddings, and
RAR's raster sampler fed with targets (against full forward passes)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from mmar import config as config_lib
from mmar.data import orders, sequences
from mmar.model.transformer import Decoder
from mmar.parallel import mesh as mesh_lib
from mmar.sample.plain import Sampler
from mmar.train import loss as loss_lib
from mmar.train import state


def _cfg(test_config, order, **model):
    cfg = ml_collections.ConfigDict(test_config.to_dict())
    with cfg.unlocked():
        cfg.data.update(image_order=order, seq_len=80)
        cfg.eval.tasks = ("frechet",)
        cfg.model.update(vocab_size=0, **model)
    return config_lib.validate(cfg)


def _summed_loss(model, row):
    graphdef, params = nnx.split(model)

    @jax.jit
    def summed(params, batch):
        logits = nnx.merge(graphdef, params)(batch["tokens"], batch["positions"],
                                             batch["segment_ids"], batch["modality"])
        nll = loss_lib.token_losses(logits, batch["tokens"])[0]
        return jnp.sum(nll * batch["loss_weights"][:, 1:])
    return float(summed(params, {k: jnp.asarray(v)[None] for k, v in row.items()}))


def test_randar_likelihood_does_not_depend_on_the_order_for_a_blind_model(test_config):
    """Attention output zeroed and all P embeddings equal: the prediction at every P slot is
    the same distribution f, so the summed loss is sum_c -log f(c) whatever the order, iff
    every code is scored exactly once, at its P slot (dropped / duplicated codes or weights
    on the wrong tokens change it)."""
    cfg = _cfg(test_config, "randar", init_std=0.5)
    vocab = config_lib.make_vocab(cfg)
    model = Decoder(cfg.model, rngs=nnx.Rngs(0))
    emb = model.embed.embedding[...]
    p = slice(vocab.position_offset, vocab.used)
    model.embed.embedding[...] = emb.at[p].set(emb[vocab.position_offset])
    model.blocks.attn.o[...] = jnp.zeros_like(model.blocks.attn.o[...])
    codes = np.random.default_rng(0).integers(0, vocab.num_image_codes, 16)
    row = sequences.pair_example([97, 98], vocab.image_ids(codes), vocab, 80,
                                 image_first=False, text_weight=0.0)
    losses = [_summed_loss(model, orders.randar_row(row, vocab, 80, rng))
              for rng in (None, np.random.default_rng(1), np.random.default_rng(2))]
    # the same number from the definition: -log softmax(f)[c] summed over the codes
    tok = jnp.asarray([[vocab.position_offset]])
    f = jax.nn.log_softmax(model(tok, tok * 0, jnp.ones_like(tok))[0, 0])
    expected = -float(sum(f[vocab.image_offset + c] for c in codes))  # text weighs 0 here
    np.testing.assert_allclose(losses, [expected] * 3, rtol=1e-5)
    # a row with one code duplicated (another dropped) scores differently
    dup = codes.copy()
    dup[1] = dup[0] if codes[1] != codes[0] else (codes[0] + 1) % vocab.num_image_codes
    bad = sequences.pair_example([97, 98], vocab.image_ids(dup), vocab, 80, image_first=False,
                                 text_weight=0.0)
    assert abs(_summed_loss(model, orders.randar_row(bad, vocab, 80, None)) - expected) > 1e-3


def test_rar_decoder_needs_targets_and_uses_them(test_config):
    cfg = _cfg(test_config, "rar", init_std=0.5)
    assert cfg.model.num_targets == 17
    model = Decoder(cfg.model, rngs=nnx.Rngs(0))
    tok = jnp.asarray([[1, 2, 3]])
    with pytest.raises(ValueError, match="targets"):
        model(tok, tok, jnp.ones_like(tok))
    a = model(tok, tok, jnp.ones_like(tok), targets=jnp.asarray([[0, 1, 2]]))
    b = model(tok, tok, jnp.ones_like(tok), targets=jnp.asarray([[0, 1, 3]]))
    assert np.abs(np.asarray(a[0, 2] - b[0, 2])).max() > 1e-3
    np.testing.assert_allclose(a[0, :2], b[0, :2], rtol=1e-6)  # causal: earlier slots same


@pytest.mark.parametrize("scale", [1.0, 3.0])
@pytest.mark.slow
def test_rar_sampler_feeds_raster_targets(test_config, scale):
    """Greedy RAR raster sampling = full forwards with raster targets on every token."""
    cfg = _cfg(test_config, "rar", init_std=0.5)
    vocab = config_lib.make_vocab(cfg)
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    model_state, params = state.create(lambda r: Decoder(cfg.model, rngs=r), mesh, seed=3)
    sample_cfg = ml_collections.ConfigDict(dict(cfg.sample.to_dict(), temperature_image=0.0,
                                                cfg_scale_image=scale))
    sampler = Sampler(model_state, vocab, cfg.model.vocab_size, sample_cfg, target_aware=True)
    n, captions = 5, [[97, 32, 98], [99, 100, 101, 102]]
    got, _ = sampler.images(params, captions, n, jax.random.key(0))
    model = model_state.merge(params)
    allowed = vocab.is_image(np.arange(cfg.model.vocab_size))

    def last(seq):
        t = jnp.asarray([seq])
        targets = jnp.asarray([orders.raster_targets(seq + [vocab.eoi], vocab)[:-1]])
        k = sum(vocab.is_image(seq)) if vocab.boi in seq else 0
        targets = targets.at[0, -1].set(k + 1 if k < n else 0)
        return np.asarray(model(t, jnp.arange(len(seq))[None], jnp.ones_like(t),
                                targets=targets)[0, -1])

    for caption, row in zip(captions, got):
        seq, unc = [vocab.bos, *caption, vocab.boi], [vocab.bos, vocab.boi]
        for _ in range(n):
            logits = last(seq)
            if scale != 1.0:
                u = last(unc)
                logits = u + scale * (logits - u)
            c = int(np.argmax(np.where(allowed, logits, -np.inf)))
            seq, unc = seq + [c], unc + [c]
        assert vocab.image_ids(row).tolist() == seq[-n:]
