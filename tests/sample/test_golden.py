"""Golden outputs: every decoder draws exactly the recorded codes, captions and pass counts.

On the `test` preset sizes, a randomly initialised decoder (fixed seed, `init_std` 0.5 for
peaked, varied predictions) per image order decodes fixed captions with fixed keys: plain
raster sampling (with and without guidance, top-k / top-p, a guidance interval), captions,
interleaved continuation, RAR target-aware sampling, SJD (greedy, probabilistic, LANTERN),
ZipAR and RandAR (constant and cosine schedules, inpainting). The results are stored in
`golden_decoding.json` next to this file; any change to what a seed draws fails here.

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

_MODELS = {}


def _model(test_config, order):
    """(cfg, model_state, params, vocab) of a random decoder for one image order (cached)."""
    if order not in _MODELS:
        cfg = ml_collections.ConfigDict(test_config.to_dict())
        with cfg.unlocked():
            cfg.model.update(init_std=0.5, vocab_size=0)
            cfg.data.image_order = order
            if order == "randar":
                cfg.data.seq_len = 80
                cfg.eval.tasks = ("frechet",)
        cfg = config_lib.validate(cfg)
        mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
        model_state, params = state.create(lambda r: Decoder(cfg.model, rngs=r), mesh, seed=3)
        _MODELS[order] = (cfg, model_state, params, config_lib.make_vocab(cfg))
    return _MODELS[order]


def _sample_cfg(cfg, **fields):
    return ml_collections.ConfigDict(dict(cfg.sample.to_dict(), **fields))


def _plain(test_config, order="raster", **fields):
    cfg, model_state, params, vocab = _model(test_config, order)
    return plain.Sampler(model_state, vocab, cfg.model.vocab_size, _sample_cfg(cfg, **fields),
                         target_aware=order == "rar"), params


def _images(test_config, key, order="raster", **fields):
    sampler, params = _plain(test_config, order, **fields)
    codes, passes = sampler.images(params, CAPTIONS, N, jax.random.key(key))
    return {"codes": codes, "passes": passes}


def _captions(test_config, key, order="raster", **fields):
    sampler, params = _plain(test_config, order, **fields)
    codes = np.random.default_rng(key).integers(0, 125, (2, N))
    return {"ids": sampler.captions(params, codes, jax.random.key(key))}


def _interleaved(test_config, key, **fields):
    """A story-like prefix (text, image, text, `<boi>`) continued, guided first image."""
    sampler, params = _plain(test_config, **fields)
    v = sampler.vocab
    rng = np.random.default_rng(key)
    prompts = [[v.bos, *c, v.boi, *v.image_ids(rng.integers(0, 125, N)).tolist(), v.eoi,
                *c[::-1], v.boi] for c in CAPTIONS]
    return {"ids": sampler.run(params, prompts, N + 6, jax.random.key(key), n=N,
                               allow_images=True)}


def _parallel(test_config, module, key, **fields):
    cfg, model_state, params, vocab = _model(test_config, "raster")
    vectors = np.asarray(FSQ(cfg.image_tokenizer.levels).implicit_codebook())
    sample_cfg = _sample_cfg(cfg, **fields)
    if module == "sjd":
        sampler = sjd.SJDSampler(model_state, vocab, cfg.model.vocab_size, sample_cfg,
                                 code_vectors=vectors)
    else:
        sampler = zipar.ZipARSampler(model_state, vocab, cfg.model.vocab_size, sample_cfg)
    codes, passes, rows = sampler.images_rows(params, CAPTIONS, N, jax.random.key(key))
    return {"codes": codes, "passes": passes, "row_passes": rows}


def _randar(test_config, key, **kw):
    cfg, model_state, params, vocab = _model(test_config, "randar")
    fields = {k: v for k, v in kw.items() if k not in ("order", "known", "known_mask")}
    sampler = randar.RandarSampler(model_state, vocab, cfg.model.vocab_size,
                                   _sample_cfg(cfg, **fields))
    res = sampler.generate(params, CAPTIONS, N, jax.random.key(key),
                           **{k: v for k, v in kw.items() if k not in fields})
    return {"codes": res.codes, "orders": res.orders, "passes": res.forward_passes}


KNOWN_MASK = np.arange(N) % 5 == 0
KNOWN = np.arange(len(CAPTIONS) * N).reshape(len(CAPTIONS), N) % 125

CASES = {
    "plain_t1_cfg1": lambda c: _images(c, 0, temperature_image=1.0, cfg_scale_image=1.0),
    "plain_t1_cfg2": lambda c: _images(c, 1, temperature_image=1.0, cfg_scale_image=2.0),
    "plain_greedy_cfg2": lambda c: _images(c, 0, temperature_image=0.0, cfg_scale_image=2.0),
    "plain_topk_topp_interval": lambda c: _images(
        c, 2, temperature_image=0.8, top_k_image=20, top_p_image=0.9, cfg_scale_image=3.0,
        cfg_interval_image=(0.0, 0.5)),
    "captions_greedy": lambda c: _captions(c, 3, temperature_text=0.0),
    "captions_sampled": lambda c: _captions(c, 4, temperature_text=1.0, top_k_text=30,
                                            top_p_text=0.95),
    "interleaved_cfg2": lambda c: _interleaved(c, 5, temperature_text=1.0,
                                               temperature_image=1.0, cfg_scale_image=2.0),
    "rar_t1_cfg2": lambda c: _images(c, 6, "rar", temperature_image=1.0, cfg_scale_image=2.0),
    "rar_greedy_cfg1": lambda c: _images(c, 0, "rar", temperature_image=0.0,
                                         cfg_scale_image=1.0),
    "sjd_greedy_cfg2": lambda c: _parallel(c, "sjd", 7, temperature_image=1.0,
                                           cfg_scale_image=2.0, sjd_window=3,
                                           sjd_acceptance="greedy"),
    "sjd_prob_cfg2": lambda c: _parallel(c, "sjd", 7, temperature_image=1.0,
                                         cfg_scale_image=2.0, sjd_window=4),
    "sjd_prob_topk_topp": lambda c: _parallel(c, "sjd", 8, temperature_image=0.9,
                                              top_k_image=30, top_p_image=0.9,
                                              cfg_scale_image=1.0, sjd_window=4),
    "sjd_lantern_cfg2": lambda c: _parallel(c, "sjd", 9, temperature_image=1.0,
                                            cfg_scale_image=2.0, sjd_window=4, lantern_k=6,
                                            lantern_delta=0.1),
    "sjd_lantern_pp": lambda c: _parallel(c, "sjd", 9, temperature_image=1.0,
                                          cfg_scale_image=1.0, sjd_window=4, lantern_k=6,
                                          lantern_delta=3.0),
    "zipar_w1_cfg2": lambda c: _parallel(c, "zipar", 10, temperature_image=1.0,
                                         cfg_scale_image=2.0, zipar_window=1),
    "zipar_w2_cfg1": lambda c: _parallel(c, "zipar", 11, temperature_image=1.0,
                                         cfg_scale_image=1.0, zipar_window=2),
    "randar_constant_cfg2": lambda c: _randar(c, 12, temperature_image=1.0,
                                              cfg_scale_image=2.0, randar_schedule="constant",
                                              randar_tokens_per_step=3),
    "randar_cosine_cfg1": lambda c: _randar(c, 13, temperature_image=1.0, cfg_scale_image=1.0,
                                            randar_schedule="cosine", randar_steps=4),
    "randar_inpaint_raster": lambda c: _randar(c, 14, temperature_image=1.0,
                                               cfg_scale_image=2.0, randar_tokens_per_step=2,
                                               order="raster", known=KNOWN,
                                               known_mask=KNOWN_MASK),
    "randar_captions": lambda c: _captions(c, 15, "randar", temperature_text=1.0),
}


def _plain_json(out):
    return {k: np.asarray(v).tolist() if isinstance(v, np.ndarray) else v
            for k, v in out.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(test_config, case):
    got = _plain_json(CASES[case](test_config))
    stored = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if UPDATE:
        stored[case] = got
        GOLDEN.write_text(json.dumps(stored, indent=None, sort_keys=True) + "\n")
        return
    assert case in stored, f"no golden record for {case}: MMAR_UPDATE_GOLDEN=1 records it"
    assert got == stored[case]
