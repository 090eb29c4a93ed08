"""Golden outputs: every decoder draws exactly the recorded codes, pass counts and texts.

On the `test` preset sizes, a randomly initialised decoder (fixed seed, `init_std` 0.5 for
peaked, varied predictions) per image order decodes fixed captions with fixed keys: plain
raster sampling (guided, greedy, top-k / top-p with a guidance interval), interleaved
continuation (an image, then text), RAR target-aware sampling, SJD with LANTERN, ZipAR and
RandAR (random orders, several codes per pass). The results are stored in
`golden_decoding.json` next to this file; any change to what a seed draws fails here.

Compiling is nearly all of the cost, so each decoder and order is covered once: cases that
differ only in traced settings (temperature, top-k / top-p, guidance scale and interval)
share one sampler per model and decoder, hence one compiled program, and pass their
settings per call; and the programs compile with `jax_disable_most_optimizations`
(`cheap_compiles`). The file also holds records of variants not run here (unguided
programs, other windows, schedules, inpainting, captions): each would cost a compile and
the other sample tests check those paths against references.

To re-record after an intended change of the sampled numbers (say why in the change):

    MMAR_UPDATE_GOLDEN=1 pytest tests/sample/test_golden.py
"""
import json
import os
import pathlib

import jax
import ml_collections
import numpy as np
import pytest

from mmar import config as config_lib
from mmar.model.transformer import Decoder
from mmar.parallel import mesh as mesh_lib
from mmar.sample import plain, randar, sjd, zipar
from mmar.tokenizers.image.quantizers import FSQ
from mmar.train import state

GOLDEN = pathlib.Path(__file__).with_name("golden_decoding.json")
UPDATE = os.environ.get("MMAR_UPDATE_GOLDEN") == "1"
N = 16                                                            # codes per image (4 x 4)
CAPTIONS = [[97, 32, 98], [99, 100, 101, 102, 103, 104], [105]]   # left padding

_MODELS, _SAMPLERS = {}, {}


def _model(test_config, order):
    """(cfg, model_state, params, vocab) of a random decoder for one image order (cached)."""
    if order not in _MODELS:
        cfg = ml_collections.ConfigDict(test_config.to_dict())
        with cfg.unlocked():
            cfg.model.update(init_std=0.5, vocab_size=0)
            cfg.vocab.text_tokenizer = "bytes"   # the recorded layout: CAPTIONS are bytes
            cfg.data.image_order = order
            if order == "randar":
                cfg.data.seq_len = 80
                cfg.eval.tasks = ("frechet",)
        cfg = config_lib.validate(cfg)
        mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
        model_state, params = state.create(lambda r: Decoder(cfg.model, rngs=r), mesh, seed=3)
        _MODELS[order] = (cfg, model_state, params, config_lib.make_vocab(cfg))
    return _MODELS[order]


def _sampler(test_config, order, kind):
    """(sampler, params): one sampler per model and decoder kind ("plain" | "sjd" | "zipar" |
    "randar"), built from the preset's `sample` section and shared by the cases (cached)."""
    if (order, kind) not in _SAMPLERS:
        cfg, model_state, params, vocab = _model(test_config, order)
        args = (model_state, vocab, cfg.model.vocab_size, cfg.sample)
        if kind == "sjd":
            vectors = np.asarray(FSQ(cfg.image_tokenizer.fsq.levels).implicit_codebook())
            sampler = sjd.SJDSampler(*args, code_vectors=vectors)
        elif kind == "zipar":
            sampler = zipar.ZipARSampler(*args)
        elif kind == "randar":
            sampler = randar.RandarSampler(*args)
        else:
            sampler = plain.Sampler(*args, target_aware=order == "rar")
        _SAMPLERS[order, kind] = sampler, params
    return _SAMPLERS[order, kind]


def _images(test_config, key, order="raster", **settings):
    sampler, params = _sampler(test_config, order, "plain")
    codes, passes = sampler.images(params, CAPTIONS, N, jax.random.key(key), **settings)
    return {"codes": codes, "passes": passes}


def _interleaved(test_config, key, **settings):
    """A story-like prefix (text, image, text, `<boi>`) continued, guided first image."""
    sampler, params = _sampler(test_config, "raster", "plain")
    v = sampler.vocab
    rng = np.random.default_rng(key)
    prompts = [[v.bos, *c, v.boi, *v.image_ids(rng.integers(0, 125, N)).tolist(), v.eoi,
                *c[::-1], v.boi] for c in CAPTIONS]
    return {"ids": sampler.run(params, prompts, N + 6, jax.random.key(key), n=N,
                               allow_images=True, **settings)}


def _parallel(test_config, kind, key, **settings):
    sampler, params = _sampler(test_config, "raster", kind)
    codes, passes, rows = sampler.images_rows(params, CAPTIONS, N, jax.random.key(key),
                                              **settings)
    return {"codes": codes, "passes": passes, "row_passes": rows}


def _randar(test_config, key, **settings):
    sampler, params = _sampler(test_config, "randar", "randar")
    res = sampler.generate(params, CAPTIONS, N, jax.random.key(key), **settings)
    return {"codes": res.codes, "orders": res.orders, "passes": res.forward_passes}


CASES = {
    # plain raster images: one compiled program (guided), three settings
    "plain_t1_cfg2": lambda c: _images(c, 1, temperature_image=1.0, cfg_scale_image=2.0),
    "plain_greedy_cfg2": lambda c: _images(c, 0, temperature_image=0.0, cfg_scale_image=2.0),
    "plain_topk_topp_interval": lambda c: _images(
        c, 2, temperature_image=0.8, top_k_image=20, top_p_image=0.9, cfg_scale_image=3.0,
        cfg_interval_image=(0.0, 0.5)),
    "interleaved_cfg2": lambda c: _interleaved(c, 5, temperature_text=1.0,
                                               temperature_image=1.0, cfg_scale_image=2.0),
    "rar_t1_cfg2": lambda c: _images(c, 6, "rar", temperature_image=1.0, cfg_scale_image=2.0),
    "sjd_lantern_cfg2": lambda c: _parallel(c, "sjd", 9, temperature_image=1.0,
                                            cfg_scale_image=2.0,
                                            sjd=dict(window=4, acceptance="probabilistic",
                                                     lantern_k=6, lantern_delta=0.1)),
    "zipar_w1_cfg2": lambda c: _parallel(c, "zipar", 10, temperature_image=1.0,
                                         cfg_scale_image=2.0, zipar=dict(window=1)),
    "randar_constant_cfg2": lambda c: _randar(c, 12, temperature_image=1.0,
                                              cfg_scale_image=2.0,
                                              randar=dict(schedule="constant",
                                                          tokens_per_step=3)),
}


def _plain_json(out):
    return {k: np.asarray(v).tolist() if isinstance(v, np.ndarray) else v
            for k, v in out.items()}


@pytest.fixture(scope="module", autouse=True)
def cheap_compiles():
    """Unless re-recording, this module's programs compile with
    `jax_disable_most_optimizations`: a few times cheaper to compile, and the numbers
    recorded at the default optimisation must come out the same (which this test checks)."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", old or not UPDATE)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


@pytest.mark.parametrize("case", list(CASES))
def test_golden(test_config, case):
    got = _plain_json(CASES[case](test_config))
    stored = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if UPDATE:
        stored[case] = got
        GOLDEN.write_text(json.dumps(stored, indent=None, sort_keys=True) + "\n")
        return
    assert case in stored, f"no golden record for {case}: MMAR_UPDATE_GOLDEN=1 records it"
    assert got == stored[case]
