"""Emu3's image layout (mmar/vocab.py `Vocab.emu3`): `<|image start|> h*w <|image token|>`,
h rows of w codes each ending in `<|extra_200|>`, `<|extra_201|> <|image end|>`, as its
processor and `convert_img2bpe` write it; and mmar's greedy text-to-image codes on an
imported tiny Emu3 equal transformers' `generate` under the released layout constraint."""
import jax
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from mmar import config as config_lib  # noqa: E402
from mmar.export import import_hf  # noqa: E402
from mmar.sample.plain import Sampler  # noqa: E402
from mmar.train import state as state_lib  # noqa: E402
from tests.helpers import export_runs as helpers  # noqa: E402
from tests.helpers import unified_models as models  # noqa: E402


@pytest.fixture(scope="module")
def emu3(tmp_path_factory):
    """(transformers model, mmar config, params) of one tiny Emu3 import."""
    root = tmp_path_factory.mktemp("emu3")
    model = models.save_unified(root / "hf", "emu3")
    cfg, params, _ = import_hf.load_params(root / "hf", helpers.make_config())
    return model, cfg, params


def test_the_import_takes_emu3s_layout_ids(emu3):
    _, cfg, _ = emu3
    names = models.vocabulary("emu3")
    want = [names[t] for t in ("<|extra_200|>", "<|extra_201|>", "<|image token|>", "*",
                               *"0123456789")]
    assert list(cfg.vocab.emu3_layout_ids) == want
    vocab = config_lib.make_vocab(cfg)
    assert vocab.emu3 and vocab.has_rows and vocab.eol == names["<|extra_200|>"]


def test_image_body_is_emu3s(emu3):
    model, cfg, _ = emu3
    vocab, names = config_lib.make_vocab(cfg), models.vocabulary("emu3")
    codes = np.random.default_rng(0).integers(0, models.CODES, (12, 3))
    body = vocab.image_body(codes.reshape(-1), grid=(12, 3))
    size = [names[c] for c in "12*3"]
    # the rows as transformers writes them: codes -> visual token ids, <|extra_200|> last
    rows = model.model.vocabulary_mapping.convert_img2bpe(torch.tensor(codes)).numpy()
    assert body.tolist() == [*size, names["<|image token|>"], *rows.reshape(-1).tolist(),
                             names["<|extra_201|>"]]
    back, grid = vocab.parse_image_body(body)
    assert grid == (12, 3) and back.tolist() == codes.reshape(-1).tolist()
    with pytest.raises(ValueError, match="<eof>"):
        vocab.parse_image_body(body[:-1])
    with pytest.raises(ValueError, match="h\\*w"):
        vocab.parse_image_body(np.concatenate([[names["*"]], body]))
    # inside the image, the size and row ends are structure (modality 0), the codes images
    assert vocab.is_layout(body).sum() == len(size) + 1 + 12 + 1


def test_greedy_codes_equal_transformers_generate(emu3):
    model, cfg, params = emu3
    vocab = config_lib.make_vocab(cfg)
    h, w = 4, 4
    model_state, _ = state_lib.create_abstract(helpers.decoder_module(cfg),
                                               helpers.one_device_mesh())
    sampler = Sampler(model_state, vocab, cfg.model.vocab_size, ml_collections.ConfigDict(
        dict(temperature_image=0.0, top_k_image=0, cfg_scale_image=1.0)))
    caption = [60 + i for i in range(8)] + [110, 111]   # plain word ids of the vocabulary
    codes, passes = sampler.images(params, [caption], h * w, jax.random.key(0), grid=(h, w))
    assert passes == h * (w + 1)

    names = models.vocabulary("emu3")
    prompt = [vocab.bos, *caption, vocab.boi, *vocab.image_prefix(h, w)]
    assert prompt[-4:] == [names["4"], names["*"], names["4"], names["<|image token|>"]]
    visual = list(range(models.IMAGE_AT, models.IMAGE_AT + models.CODES))

    def allowed(_, ids):   # the constraint of transformers' Emu3 text-to-image example
        offset = len(ids) - len(prompt)
        return [names["<|extra_200|>"]] if offset % (w + 1) == w else visual

    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), do_sample=False,
                             max_new_tokens=h * (w + 1), prefix_allowed_tokens_fn=allowed)
    rows = out[0, len(prompt):].numpy().reshape(h, w + 1)
    assert (rows[:, -1] == names["<|extra_200|>"]).all()
    got = vocab.codes_from_ids(rows[:, :-1].reshape(-1))
    print(f"\n[generate] emu3: {h}x{w} codes, first {got[:6].tolist()}")
    assert len(set(got.tolist())) > 1
    np.testing.assert_array_equal(np.asarray(codes)[0], got)


def test_negative_prompt_is_the_guidance_twins_text(emu3):
    """Guidance scale 0 samples from the unconditional twin alone: with a negative prompt N
    that twin is `<bos> N <boi> h*w <image token>`, so its greedy codes are those of caption
    N unguided (and differ from the caption-free twin's)."""
    _, cfg, params = emu3
    vocab = config_lib.make_vocab(cfg)
    model_state, _ = state_lib.create_abstract(helpers.decoder_module(cfg),
                                               helpers.one_device_mesh())
    sampler = Sampler(model_state, vocab, cfg.model.vocab_size, ml_collections.ConfigDict(
        dict(temperature_image=0.0, top_k_image=0)))
    caption, negative = [60, 61, 62], [100, 101, 102, 103]

    def draw(ids, **kw):
        return np.asarray(sampler.images(params, [ids], 16, jax.random.key(1), grid=(4, 4),
                                         **kw)[0])

    unguided_negative = draw(negative, cfg_scale_image=1.0)
    np.testing.assert_array_equal(draw(caption, negative=negative, cfg_scale_image=0.0),
                                  unguided_negative)
    assert not np.array_equal(draw(caption, cfg_scale_image=0.0), unguided_negative)
