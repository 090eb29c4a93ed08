"""Which decoder draws a run's images, and which its texts: the one place that chooses.

A model's training order (`data.image_order`, mmar/data/orders.py) fixes how its images can
be decoded: "raster" by any image decoder, "rar" by plain decoding fed the target embeddings,
"randar" by the RandAR sampler, "next_scale" by the next-scale sampler (one pass per
scale). Among the decoders of raster-order models,
`sample.image_decoder` chooses:

    "plain"  one code per forward pass               mmar/sample/plain.py
    "sjd"    speculative Jacobi decoding (+ LANTERN)  mmar/sample/sjd.py
    "zipar"  rows of the code grid in parallel        mmar/sample/zipar.py
    (randar) any order, m codes per pass              mmar/sample/randar.py
    (next_scale) one token map per pass, coarse to fine  mmar/sample/next_scale.py

Every image sampler reads the `sample` section (its decoder's options under `sample.sjd`,
`sample.zipar`, `sample.randar`: mmar/schema.py) and has `images(params, caption_ids,
num_codes, key, **overrides) -> (codes [B, num_codes] int32, forward passes for the batch)`
and `settings(**overrides)` (overrides: fields of the section, a decoder's options as a
partial section, e.g. `sjd=dict(window=4)`); texts (captions, interleaved documents) always
come from the plain sampler.
"""
from __future__ import annotations

from mmar import config as config_lib
from mmar import derived
from mmar.model.next_scale import ScaleLayout
from mmar.sample import core, next_scale, plain, randar, sjd, zipar
from mmar.vocab import Vocab


def image_sampler(image_order: str, model_state, vocab: Vocab, vocab_rows: int, sample_cfg, *,
                  num_codes: int | None = None, code_vectors=None, method: str | None = None,
                  depth: int = 1, layout: ScaleLayout | None = None):
    """The image sampler of a model trained in `image_order`. `method` (default:
    `sample.image_decoder`) picks among the raster-order decoders; `code_vectors` (the image
    tokenizer's, `sjd.code_vectors`) are LANTERN's, `num_codes` plain decoding's documents;
    `depth` the RQ depth (codes per latent position: plain decoding only); `layout` a
    next-scale decoder's (model.scale_layout)."""
    overrides = {} if method is None else {"image_decoder": method}
    method = core.section(sample_cfg, **overrides).image_decoder
    if depth > 1 and (method != "plain" or image_order == "randar"):
        raise ValueError(f"image_tokenizer (RQ depth or fsq.groups {depth}): its codes are "
                         f"{depth} per grid position, each depth in its own id range; "
                         f"{'randar' if image_order == 'randar' else method!r} decodes one "
                         "code per position: use sample.image_decoder='plain' with a raster "
                         "or rar model")
    if method != "plain" and image_order != "raster":
        raise ValueError(f"sample.image_decoder={method!r} decodes raster-order models only; "
                         f"a {image_order!r} decoder (data.image_order) needs 'plain' (RAR "
                         "needs its target embeddings fed; RandAR has its own parallel "
                         "decoding, sample.randar.*)")
    if image_order == "randar":
        return randar.RandarSampler(model_state, vocab, vocab_rows, sample_cfg,
                                    num_codes=num_codes)
    if image_order == "next_scale":
        return next_scale.NextScaleSampler(model_state, vocab, vocab_rows, sample_cfg,
                                           layout)
    if method == "sjd":
        return sjd.SJDSampler(model_state, vocab, vocab_rows, sample_cfg,
                              code_vectors=code_vectors)
    if method == "zipar":
        return zipar.ZipARSampler(model_state, vocab, vocab_rows, sample_cfg)
    return plain.Sampler(model_state, vocab, vocab_rows, sample_cfg, num_codes=num_codes,
                         target_aware=image_order == "rar", depth=depth)


def samplers(cfg, model_state, vocab: Vocab, num_codes: int, code_vectors=None):
    """(text sampler, image sampler) of a run's config: the plain sampler draws every text
    (RAR: with its target embeddings); the image sampler follows `data.image_order` and
    `sample.image_decoder` (the same object as the text sampler when that is plain)."""
    order = config_lib.image_order(cfg)
    depth = derived.quantizer_depth(cfg.image_tokenizer)
    text = plain.Sampler(model_state, vocab, cfg.model.vocab_size, cfg.sample,
                         num_codes=num_codes, target_aware=order == "rar", depth=depth)
    if order not in ("randar", "next_scale") and cfg.sample.image_decoder == "plain":
        return text, text
    layout = tuple(cfg.model.scale_layout)
    return text, image_sampler(order, model_state, vocab, cfg.model.vocab_size, cfg.sample,
                               num_codes=num_codes, code_vectors=code_vectors, depth=depth,
                               layout=ScaleLayout(*layout[:3], layout[3:]) if layout else None)
