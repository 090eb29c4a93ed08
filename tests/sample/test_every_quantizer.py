"""Every quantizer through the jobs that read codes back: a run whose image tokenizer is VQ,
LFQ, RQ or a factorised FSQ with the alpha patch decoder (flat FSQ: tests/test_cli.py,
tests/export) samples images through the run loader and the configured sampler, decodes them,
and exports an image decoder that turns the same ids into the same pixels. RQ and the
factorised FSQ write `depth` codes per position, each depth in its own id range: the sampler
and transformers' `generate` (through the export's generation arguments) draw only ids of
the position's depth, and a code of the wrong depth is an error, not a silent clamp in the
codebook lookup."""
import jax
import ml_collections
import numpy as np
import pytest

from mmar import config as config_lib
from mmar import derived, rundir
from mmar.export import assets, hf
from mmar.sample import dispatch
from tests.helpers import export_runs

QUANTIZERS = ("vq", "lfq", "rq", "fsq_groups")
# the factorised FSQ of the `tiny` preset: 2 sub-codes of 25 ids per cell, where x what
FSQ_GROUPS = dict(quantizer="fsq", arch="patch_alpha", fsq=dict(levels=(5, 5, 5, 5), groups=2))


def _config(quantizer):
    cfg = config_lib.load(str(export_runs.ROOT / "configs/t2i_shapes.py") + ":test")
    with cfg.unlocked():
        if quantizer == "fsq_groups":
            cfg.image_tokenizer.update(FSQ_GROUPS)
        else:
            cfg.image_tokenizer.quantizer = quantizer
        cfg.vocab.text_tokenizer = "bytes"
        cfg.data.seq_len = 96            # RQ: 16 positions x depth codes per image
        cfg.model.init_std = 0.1
        cfg.sample.temperature_image = 1.0   # random draws: every id the constraint allows
    return config_lib.validate(cfg)


@pytest.fixture(scope="module", params=QUANTIZERS)
def run_dir(request, tmp_path_factory):
    cfg = _config(request.param)
    workdir = tmp_path_factory.mktemp(request.param)
    export_runs.write_run(workdir, cfg)
    hf.export(workdir, workdir / "hf", log=lambda _: None)
    return cfg, workdir


def _depth_ranges_hold(codes, tok_cfg) -> bool:
    depth = derived.quantizer_depth(tok_cfg)
    if depth == 1:
        return bool((codes >= 0).all() and (codes < derived.num_image_codes(tok_cfg)).all())
    size = derived.num_image_codes(tok_cfg) // depth
    per_depth = codes.reshape(len(codes), -1, depth) // size
    return bool((per_depth == np.arange(depth)).all())


@pytest.mark.slow
def test_sampled_codes_decode_and_the_export_decodes_them_alike(run_dir):
    cfg, workdir = run_dir
    run = rundir.load(cfg, workdir)
    num_codes = derived.codes_per_image(cfg)
    _, images_sampler = dispatch.samplers(cfg, run.model_state, run.vocab, num_codes)
    captions = [run.text.encode(c) for c in ("a red square", "two blue circles")] * 2
    codes, _ = images_sampler.images(run.params, captions, num_codes, jax.random.key(0))
    assert codes.shape == (4, num_codes)
    assert _depth_ranges_hold(codes, cfg.image_tokenizer)
    images = run.tokenizer.decode(codes)
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    decoder = assets.ImageDecoder.from_pretrained(workdir / "hf")
    np.testing.assert_array_equal(decoder.decode_ids(run.vocab.image_ids(codes)), images)


@pytest.mark.slow
def test_a_code_of_the_wrong_depth_is_refused(run_dir):
    cfg, workdir = run_dir
    if derived.quantizer_depth(cfg.image_tokenizer) == 1:
        pytest.skip("one id range per depth: RQ and factorised FSQ only")
    run = rundir.load(cfg, workdir)
    codes = np.zeros((1, derived.codes_per_image(cfg)), np.int32)   # depth 0's code 0 at
    with pytest.raises(ValueError, match="depth 1"):                # every position
        run.tokenizer.decode(codes)
    decoder = assets.ImageDecoder.from_pretrained(workdir / "hf")
    with pytest.raises(ValueError, match="depth 1"):
        decoder.decode_ids(run.vocab.image_ids(codes))


@pytest.mark.slow
def test_transformers_generate_draws_each_depth_from_its_range(run_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg, workdir = run_dir
    if derived.quantizer_depth(cfg.image_tokenizer) == 1:
        pytest.skip("one id range per depth: RQ and factorised FSQ only")
    model = transformers.AutoModelForCausalLM.from_pretrained(workdir / "hf",
                                                              dtype=torch.float32)
    decoder = assets.ImageDecoder.from_pretrained(workdir / "hf")
    prompt = decoder.image_prompt(list(b"a red square"))
    torch.manual_seed(0)
    out = model.generate(torch.tensor([prompt] * 2), do_sample=True, top_k=0,
                         **decoder.generation_kwargs())
    ids = out[:, len(prompt):].numpy()
    vocab = config_lib.make_vocab(cfg)
    assert _depth_ranges_hold(vocab.codes_from_ids(ids), cfg.image_tokenizer)
    assert decoder.decode_ids(ids).shape == (2, 32, 32, 3)
