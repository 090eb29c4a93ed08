"""`mmar import` / `mmar export` of transformers' unified models (Chameleon, Emu3): logits
parity after import, the checkpoint's own vocabulary kept, and a byte-identical round trip.

Each model is a tiny random transformers model (every weight perturbed, QK-norm biases
included) with a vocabulary map and a tokenizer.json the test makes up: the released
models' form (named image tokens, contiguous ids in code order) at toy size.
"""
import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from mmar import config as config_lib  # noqa: E402
from mmar import rundir  # noqa: E402
from mmar.export import hf, import_hf, unified  # noqa: E402
from mmar.export import safetensors_io as st  # noqa: E402
from mmar.tokenizers.image import pretrained  # noqa: E402
from mmar.train import state as state_lib  # noqa: E402
from tests.helpers import export_runs as helpers  # noqa: E402
from tests.helpers import unified_models as models  # noqa: E402

VOCAB, CODES, IMAGE_AT = models.VOCAB, models.CODES, models.IMAGE_AT
vocabulary, save_unified = models.vocabulary, models.save_unified


@pytest.fixture(scope="module", params=["chameleon", "emu3"])
def imported(request, tmp_path_factory):
    kind = request.param
    root = tmp_path_factory.mktemp(kind)
    model = save_unified(root / "hf", kind)
    import_hf.import_hf(root / "hf", root / "run", helpers.make_config(), log=lambda _: None)
    return kind, model, root


def test_logits_match_transformers_after_import(imported):
    kind, model, root = imported
    cfg, params, _ = import_hf.load_params(root / "hf", helpers.make_config())
    assert cfg.model.hf_class == kind and cfg.model.vocab_size == VOCAB
    if kind == "chameleon":
        assert (cfg.model.qk_norm_kind, cfg.model.norm_placement) == ("head_layernorm", "swin")
    # text and image ids, and the image markers
    tokens = np.random.default_rng(1).integers(0, VOCAB, (2, 30)).astype(np.int32)
    tokens[:, 5:5 + 16] = IMAGE_AT + np.arange(16)
    want = helpers.mmar_logits(cfg, params, tokens)
    with torch.no_grad():   # the head on the last hidden state: Chameleon's forward sets
        # the image codes' logits to the float minimum (it answers in text only)
        hidden = model.model(input_ids=torch.tensor(tokens, dtype=torch.long)).last_hidden_state
        got = model.lm_head(hidden).numpy()
    diff = float(np.abs(got - want).max())
    print(f"\n[parity] {kind}: max |logit diff| = {diff:.3g}")
    assert diff < 1e-4


def test_the_checkpoints_vocabulary_is_kept(imported):
    kind, _, root = imported
    cfg, _, _ = import_hf.load_params(root / "hf", helpers.make_config())
    vocab = config_lib.make_vocab(cfg)
    names = vocabulary(kind)
    boi, eoi = ((names["<racm3:break>"], names["<eoss>"]) if kind == "chameleon" else
                (names["<|image start|>"], names["<|image end|>"]))
    assert (vocab.boi, vocab.eoi, vocab.bos, vocab.eos) == (boi, eoi, 1, 2)
    assert vocab.image_offset == IMAGE_AT and vocab.num_image_codes == CODES
    assert vocab.size == VOCAB
    assert not vocab.is_text([boi, IMAGE_AT, IMAGE_AT + CODES - 1]).any()
    assert vocab.is_text([IMAGE_AT + CODES]).all()
    assert cfg.image_tokenizer.pretrained == unified.ARCHS[kind].vq_kind


def test_export_round_trip_is_byte_identical(imported):
    kind, model, root = imported
    hf.export(root / "run", root / "out", log=lambda _: None)
    src, out = st.SafetensorsDir(root / "hf"), st.SafetensorsDir(root / "out")
    assert sorted(src.keys()) == sorted(out.keys())
    for name in src.keys():
        assert src.get(name).tobytes() == out.get(name).tobytes(), name
    config = json.loads((root / "out" / "config.json").read_text())
    assert config["architectures"] == [unified.ARCHS[kind].hf_class]
    back = type(model).from_pretrained(root / "out", dtype=torch.float32).eval()
    tokens = torch.tensor(np.random.default_rng(2).integers(0, VOCAB, (1, 12)))
    with torch.no_grad():
        np.testing.assert_array_equal(back(input_ids=tokens).logits.numpy(),
                                      model(input_ids=tokens).logits.numpy())


def test_non_contiguous_image_tokens_are_refused(tmp_path):
    save_unified(tmp_path / "hf", "chameleon")
    cfg_path = tmp_path / "hf" / "config.json"
    hf_cfg = json.loads(cfg_path.read_text())
    vmap = hf_cfg["vocabulary_map"]
    a, b = "IMGIMGAZ", "IMGIMGBZ"   # codes 0 and 1 swapped
    vmap[a], vmap[b] = vmap[b], vmap[a]
    cfg_path.write_text(json.dumps(hf_cfg))
    with pytest.raises(ValueError, match="not contiguous ids in code order"):
        import_hf.load_params(tmp_path / "hf", helpers.make_config())


def test_the_imported_image_tokenizer_encodes_as_transformers(imported):
    """The run's runtime tokenizer (mmar.rundir.load_tokenizer, what pretokenize and train
    call) built from WORKDIR/tokenizer/pretrained: codes equal to transformers' encoder."""
    kind, model, root = imported
    cfg, _, _ = import_hf.load_params(root / "hf", helpers.make_config())
    tok = rundir.load_tokenizer(cfg, root / "run")
    images = np.random.default_rng(3).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    got = tok.encode(images)
    pixels = torch.tensor(images.transpose(0, 3, 1, 2) / 127.5 - 1.0, dtype=torch.float32)
    with torch.no_grad():
        if kind == "chameleon":
            want = model.model.vqmodel.encode(pixels).image_tokens
        else:
            want = model.model.vqmodel.encode(pixels, torch.tensor([[32, 32]] * 3)).image_tokens
    want = (torch.stack(list(want)) if isinstance(want, (list, tuple)) else want)
    want = want.reshape(3, -1).numpy()
    assert got.shape == (3, 16) and len(np.unique(got)) > 1
    np.testing.assert_array_equal(got, want)
    # data parallel on the run's mesh (every device; 3 images padded to the device count),
    # the parameters replicated: the same codes and pixels as on one device
    n = len(jax.devices())
    assert tok.batch_sharding.mesh.size == n
    assert all(len(x.sharding.device_set) == n for x in jax.tree.leaves(tok.params))
    single = pretrained.load(root / "run/tokenizer/pretrained", cfg.image_tokenizer)
    np.testing.assert_array_equal(single.encode(images), got)
    if kind == "emu3":   # uint8 pixels: float rounding of another batch size moves a few by 1
        diff = np.abs(single.decode(got).astype(int) - tok.decode(got).astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_image_decoder_must_be_the_checkpoints(tmp_path):
    """`mmar import --image_decoder=DIR`: a converted VQ-GAN with another codebook is refused
    by name, and an Emu3 import (its decoder is in the checkpoint) refuses one before
    writing anything."""
    from safetensors.numpy import load_file, save_file
    save_unified(tmp_path / "cham", "chameleon")
    models.save_converted_vqgan(tmp_path / "vqgan", tmp_path / "cham")
    tensors = load_file(tmp_path / "vqgan/model.safetensors")
    tensors["quantize.embedding.weight"] = tensors["quantize.embedding.weight"] + 1
    save_file(tensors, str(tmp_path / "vqgan/model.safetensors"))
    with pytest.raises(ValueError, match="codebook"):
        import_hf.import_hf(tmp_path / "cham", tmp_path / "run", helpers.make_config(),
                            image_decoder=tmp_path / "vqgan", log=lambda _: None)
    assert not (tmp_path / "run").exists()
    save_unified(tmp_path / "emu3", "emu3")
    with pytest.raises(ValueError, match="only a Chameleon"):
        import_hf.import_hf(tmp_path / "emu3", tmp_path / "run_emu3", helpers.make_config(),
                            image_decoder=tmp_path / "vqgan", log=lambda _: None)
    assert not (tmp_path / "run_emu3").exists()


def test_sjd_on_an_imported_chameleon_is_plain_greedy(imported):
    """mmar's decoders on the checkpoint's own vocabulary: greedy SJD (with guidance, whose
    twin is `<bos> <racm3:break>`) draws the codes of plain greedy decoding."""
    import ml_collections

    from mmar.sample import dispatch
    kind, _, root = imported
    if kind != "chameleon":
        pytest.skip("Emu3's rows sample with 'plain' only (validated)")
    cfg, params, _ = import_hf.load_params(root / "hf", helpers.make_config())
    vocab = config_lib.make_vocab(cfg)
    model_state, _ = state_lib.create_abstract(helpers.decoder_module(cfg),
                                               helpers.one_device_mesh())
    captions = [[60, 61, 62], [100, 101]]
    draws = {}
    for method, temperature in (("plain", 0.0), ("sjd", 1.0)):
        sample_cfg = ml_collections.ConfigDict(dict(
            temperature_image=temperature, cfg_scale_image=2.0, image_decoder=method,
            sjd=dict(acceptance="greedy", window=4)))
        sampler = dispatch.image_sampler("raster", model_state, vocab, cfg.model.vocab_size,
                                         sample_cfg, num_codes=16)
        draws[method] = np.asarray(sampler.images(params, captions, 16, jax.random.key(0))[0])
    assert len(np.unique(draws["plain"])) > 1
    np.testing.assert_array_equal(draws["sjd"], draws["plain"])
