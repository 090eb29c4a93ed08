"""Export to / import from transformers: logits parity, round trips, generation, sharding.

Every case starts from random weights (every tensor perturbed, norms included), written as a
real Orbax run directory, exported through the same code path as `mmar export`.
"""
import json
import time

import jax
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmar import config as config_lib  # noqa: E402
from mmar import rundir  # noqa: E402
from mmar.export import assets, hf, import_hf  # noqa: E402
from mmar.export import safetensors_io as st  # noqa: E402
from mmar.sample.plain import Sampler  # noqa: E402
from mmar.train import state as state_lib  # noqa: E402
from tests.helpers import export_runs as helpers  # noqa: E402

CASES = {  # dense models: without / with QK-norm, MHA and GQA, tied and untied
    "llama_mha": dict(qk_norm=False, d_model=32, n_heads=4, n_kv_heads=4, head_dim=8),
    "llama_gqa_tied": dict(qk_norm=False, n_heads=4, n_kv_heads=2, head_dim=16,
                           tie_embeddings=True),
    "qwen3_gqa": dict(qk_norm=True, d_model=48, n_heads=4, n_kv_heads=2, head_dim=16),
}
ARCH = {"llama_mha": "LlamaForCausalLM", "llama_gqa_tied": "LlamaForCausalLM",
        "qwen3_gqa": "Qwen3ForCausalLM"}


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    """(case, cfg, params, export dir) per model case."""
    case = request.param
    cfg = helpers.make_config(**CASES[case])
    root = tmp_path_factory.mktemp(case)
    params = helpers.write_run(root / "run", cfg)
    hf.export(root / "run", root / "hf", log=lambda _: None)
    return case, cfg, params, root / "hf"


def load_hf(directory):
    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)


def test_logits_match_transformers(exported):
    case, cfg, params, out = exported
    model = load_hf(out)
    assert type(model).__name__ == ARCH[case]
    assert json.loads((out / "config.json").read_text())["architectures"] == [ARCH[case]]
    tokens = np.random.default_rng(1).integers(0, cfg.model.vocab_size, (3, 40)).astype(np.int32)
    want = helpers.mmar_logits(cfg, params, tokens)
    with torch.no_grad():
        got = model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    diff = float(np.abs(got - want).max())
    print(f"\n[parity] {case}: max |logit diff| = {diff:.3g} (logits up to "
          f"{np.abs(want).max():.2f})")
    assert got.shape == want.shape
    assert diff < 1e-4


def test_export_then_import_gives_identical_params(exported):
    _, cfg, params, out = exported
    cfg2, params2, text_size = import_hf.load_params(out)
    assert text_size is None  # an mmar export: the vocabulary is not extended again
    assert cfg2.model.to_dict() == cfg.model.to_dict()
    flat, flat2 = jax.tree.leaves_with_path(params), jax.tree.leaves_with_path(params2)
    assert [p for p, _ in flat] == [p for p, _ in flat2]
    for (path, a), (_, b) in zip(flat, flat2):
        assert a.dtype == b.dtype and np.array_equal(a, b), path


def test_greedy_image_codes_match_mmar_sampler(exported):
    case, cfg, params, out = exported
    vocab = config_lib.make_vocab(cfg)
    model_state, _ = state_lib.create_abstract(helpers.decoder_module(cfg), helpers.one_device_mesh())
    sample_cfg = ml_collections.ConfigDict(dict(temperature_image=0.0, top_k_image=0,
                                                cfg_scale_image=1.0))
    sampler = Sampler(model_state, vocab, cfg.model.vocab_size, sample_cfg)
    text = rundir.load_text_tokenizer(cfg, out.parent / "run")   # the test preset's BPE
    caption = text.encode("a red circle left of a blue square")
    decoder = assets.ImageDecoder.from_pretrained(out)
    n = decoder.codes_per_image
    want = vocab.image_ids(sampler.images(params, [caption], n, jax.random.key(0))[0][0])

    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    prompt = decoder.image_prompt(tokenizer("a red circle left of a blue square").input_ids)
    assert prompt == [vocab.bos, *caption, vocab.boi]
    with torch.no_grad():
        ids = load_hf(out).generate(torch.tensor([prompt]), do_sample=False,
                                    **decoder.generation_kwargs())
    got = ids[0, len(prompt):].numpy()
    print(f"\n[generate] {case}: {n} codes, first {want[:6].tolist()}")
    if not cfg.model.tie_embeddings:  # a random tied model greedily repeats its input
        assert len(set(want.tolist())) > 1  # not a degenerate constant image
    np.testing.assert_array_equal(got, want)
    images = decoder.decode_ids(got[None])
    assert images.shape == (1, 32, 32, 3) and images.dtype == np.uint8


def test_image_decoder_matches_mmar_tokenizer(exported, tmp_path):
    _, cfg, _, out = exported
    run = out.parent / "run"
    codes = np.random.default_rng(2).integers(0, 125, (4, 16))
    want = rundir.load_tokenizer(cfg, run).decode(codes)
    decoder = assets.ImageDecoder.from_pretrained(out)
    vocab = config_lib.make_vocab(cfg)
    np.testing.assert_array_equal(decoder.decode_ids(vocab.image_ids(codes)), want)
    decoder.save_png(want, tmp_path / "row.png")
    from PIL import Image
    assert Image.open(tmp_path / "row.png").size == (4 * 32, 32)


def test_text_tokenizer_round_trip(exported):
    _, cfg, _, out = exported
    vocab = config_lib.make_vocab(cfg)
    text = rundir.load_text_tokenizer(cfg, out.parent / "run")   # the test preset's BPE
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    caption = "two green squares above a purple triangle, naïve café"
    ids = tokenizer(caption).input_ids
    assert ids == [vocab.bos, *text.encode(caption)]
    assert len(ids) < len(caption.encode("utf-8"))   # merges, not bytes
    assert tokenizer.decode(ids, skip_special_tokens=True) == caption
    assert tokenizer.convert_tokens_to_ids(["<pad>", "<bos>", "<eos>", "<boi>", "<eoi>"]) == \
        [vocab.pad, vocab.bos, vocab.eos, vocab.boi, vocab.eoi]
    assert tokenizer.decode([vocab.boi, *text.encode("hi"), vocab.eoi]) == "<boi>hi<eoi>"


def test_sharded_checkpoint_exports_like_unsharded(tmp_path):
    """8-device FSDP x tensor-parallel checkpoint vs 1 device: byte-identical export files,
    split into shards with an index; transformers loads the sharded directory."""
    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (make test)")
    cfg = helpers.make_config(**CASES["qwen3_gqa"])
    from mmar.parallel import mesh as mesh_lib
    mesh8 = mesh_lib.make_mesh({"data": 1, "fsdp": 4, "tensor": 2}, jax.devices()[:8])
    params = helpers.write_run(tmp_path / "one", cfg)
    helpers.write_run(tmp_path / "eight", cfg, mesh=mesh8)
    spec = json.loads((tmp_path / "eight/decoder/checkpoints/5/params/_sharding").read_text())
    assert any("fsdp" in json.dumps(v) for v in spec.values())  # really written sharded
    t0 = time.perf_counter()
    for name in ("one", "eight"):
        hf.export(tmp_path / name, tmp_path / f"hf_{name}", max_shard_size="40KB",
                  log=lambda _: None)
    print(f"\n[sharded] two exports in {time.perf_counter() - t0:.1f}s")
    files = sorted(p.name for p in (tmp_path / "hf_one").rglob("*") if p.is_file())
    assert st.INDEX in files and sum(f.endswith(".safetensors") for f in files) > 3
    assert files == sorted(p.name for p in (tmp_path / "hf_eight").rglob("*") if p.is_file())
    for f in (tmp_path / "hf_one").rglob("*"):
        if f.is_file():
            assert f.read_bytes() == (tmp_path / "hf_eight" / f.relative_to(tmp_path / "hf_one")
                                      ).read_bytes(), f.name
    model = load_hf(tmp_path / "hf_eight")
    tokens = np.arange(20, dtype=np.int32)[None] * 7
    with torch.no_grad():
        got = model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    assert np.abs(got - helpers.mmar_logits(cfg, params, tokens)).max() < 1e-4


def test_safetensors_files_read_by_the_safetensors_package(exported):
    _, _, _, out = exported
    from safetensors.numpy import load_file
    tensors = load_file(out / "model.safetensors")
    ours = st.SafetensorsDir(out)
    assert sorted(tensors) == sorted(ours.keys())
    for name, value in tensors.items():
        np.testing.assert_array_equal(value, ours.get(name))


def test_bfloat16_export_loads(tmp_path):
    cfg = helpers.make_config(**CASES["llama_gqa_tied"])
    params = helpers.write_run(tmp_path / "run", cfg)
    hf.export(tmp_path / "run", tmp_path / "hf", dtype="bfloat16", log=lambda _: None)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert model.dtype == torch.bfloat16
    tokens = np.arange(16, dtype=np.int32)[None] * 11
    with torch.no_grad():
        got = model(torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()
    want = helpers.mmar_logits(cfg, params, tokens)
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()


def test_native_layout_round_trip(tmp_path):
    """--format mmar (the layout for models transformers cannot express) -> identical params."""
    cfg = helpers.make_config(**CASES["qwen3_gqa"])
    params = helpers.write_run(tmp_path / "run", cfg)
    hf.export(tmp_path / "run", tmp_path / "native", fmt="mmar", log=lambda _: None)
    assert not (tmp_path / "native/config.json").exists()
    assert "blocks.attn.q" in st.SafetensorsDir(tmp_path / "native").keys()
    _, params2, _ = import_hf.load_params(tmp_path / "native")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("fmt", ["hf", "mmar"])
def test_lora_run_exports_with_the_adapters_merged(tmp_path, fmt):
    """A LoRA run (model.lora.rank > 0, every adapter non-zero) exports as the plain model:
    no adapter tensor, the config's rank 0, and the logits of the unmerged run (transformers
    for hf; the native layout imports back to `lora.merge` of the params)."""
    from mmar.model import lora
    cfg = helpers.make_config(**CASES["qwen3_gqa"])
    with cfg.unlocked():
        cfg.model.lora.update(rank=3, alpha=6.0, targets=("q", "v", "o", "down"))
    params = helpers.write_run(tmp_path / "run", cfg)
    logs = []
    hf.export(tmp_path / "run", tmp_path / "out", fmt=fmt, log=logs.append)
    assert any("merged the LoRA adapters into 4 weights" in m for m in logs)
    assert not [n for n in st.SafetensorsDir(tmp_path / "out").keys() if "lora" in n]
    exported_cfg = json.loads((tmp_path / "out/mmar_config.json").read_text())
    assert exported_cfg["model"]["lora"]["rank"] == 0
    tokens = np.random.default_rng(2).integers(0, cfg.model.vocab_size, (2, 24)).astype(np.int32)
    want = helpers.mmar_logits(cfg, params, tokens)
    plain = lora.merge(params, alpha=6.0)
    if fmt == "hf":
        with torch.no_grad():
            got = load_hf(tmp_path / "out")(torch.tensor(tokens, dtype=torch.long)).logits
        assert np.abs(got.numpy() - want).max() < 1e-4
    else:
        _, imported, _ = import_hf.load_params(tmp_path / "out")
        for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(imported)):
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    # The adapters matter: the base weights alone give other logits.
    base = lora.merge(params, alpha=0.0)
    plain_cfg = helpers.make_config(**CASES["qwen3_gqa"])
    assert np.abs(helpers.mmar_logits(plain_cfg, base, tokens) - want).max() > 1e-3
