"""Validation of an experiment ConfigDict: one clear error that names the bad field.

Configs are plain Python (`configs/*.py`, `get_config(preset)`); this module checks the
fields every job relies on before anything expensive starts, and derives the fields that
follow from others (the vocabulary size from the text tokenizer and the image codebook).
"""
from __future__ import annotations

import importlib.util
import pathlib

import ml_collections

from mmar import derived
from mmar import vocab as vocab_lib

# The names of mmar/parallel/rules.py's STRATEGIES tables (a test checks they agree; the
# tables need JAX, which validation does not load).
STRATEGIES = ("dp", "fsdp", "tp", "fsdp_tp")
SECTIONS = ("data", "vocab", "image_tokenizer", "model", "train", "mesh", "checkpoint",
            "sample", "eval")


class ConfigError(ValueError):
    """A config field has a bad value; the message starts with the field's dotted path."""


def _positive_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _nonneg(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


def _fraction(v):
    return isinstance(v, (int, float)) and 0.0 <= v <= 1.0


def _mixture(v):
    try:
        return derived.parse_mixture(v)
    except ValueError:
        return []


# (dotted field, predicate, what a good value looks like)
_CHECKS = (
    ("data.image_size", _positive_int, "a positive int"),
    ("data.num_train", _positive_int, "a positive int"),
    ("data.num_test", _positive_int, "a positive int"),
    ("data.num_unseen", _positive_int, "a positive int"),
    ("data.seq_len", _positive_int, "a positive int"),
    ("data.i2t_fraction", _fraction, "a number in [0, 1]"),
    ("data.num_workers", lambda v: isinstance(v, int) and v >= 0, "an int >= 0"),
    ("data.loss_weight_text", _nonneg, "a number >= 0"),
    ("data.loss_weight_image", _nonneg, "a number >= 0"),
    ("data.caption_dropout", _fraction, "a number in [0, 1]"),
    ("data.pack", lambda v: isinstance(v, bool), "True or False"),
    ("data.pack_bins", _positive_int, "a positive int"),
    ("data.oversize", lambda v: v in ("split", "drop"), "'split' or 'drop'"),
    ("data.max_bad_fraction", _fraction, "a number in [0, 1]"),
    ("data.mixture", lambda v: isinstance(v, str) and (not v or bool(_mixture(v))),
     "'' or 'name[:weight],...' with names shapes, stories, digits or a folder"),
    ("data.pretokenized", lambda v: isinstance(v, bool), "True or False"),
    ("data.shard_records", _positive_int, "a positive int"),
    ("image_tokenizer.levels", lambda v: len(v) > 0 and all(_positive_int(x) and x >= 2 for x in v),
     "a non-empty tuple of ints >= 2"),
    ("image_tokenizer.quantizer", lambda v: v in derived.QUANTIZERS,
     "one of 'fsq', 'vq', 'lfq', 'rq'"),
    ("image_tokenizer.codebook_size", lambda v: _positive_int(v) and v >= 2, "an int >= 2"),
    ("image_tokenizer.codebook_dim", _positive_int, "a positive int"),
    ("image_tokenizer.commitment", _nonneg, "a number >= 0"),
    ("image_tokenizer.ema_decay", lambda v: _fraction(v) and v < 1, "a number in [0, 1)"),
    ("image_tokenizer.lfq_bits", lambda v: _positive_int(v) and v <= 30, "an int in [1, 30]"),
    ("image_tokenizer.entropy_weight", _nonneg, "a number >= 0"),
    ("image_tokenizer.entropy_temperature", lambda v: _nonneg(v) and v > 0, "a number > 0"),
    ("image_tokenizer.rq_depth", _positive_int, "a positive int"),
    ("image_tokenizer.disc_weight", _nonneg, "a number >= 0 (0 = no discriminator)"),
    ("image_tokenizer.disc_start", lambda v: isinstance(v, int) and v >= 0, "an int >= 0"),
    ("image_tokenizer.steps", _positive_int, "a positive int"),
    ("image_tokenizer.batch_size", _positive_int, "a positive int"),
    ("image_tokenizer.lr", lambda v: isinstance(v, float) and v > 0, "a float > 0"),
    ("model.d_model", _positive_int, "a positive int"),
    ("model.n_layers", _positive_int, "a positive int"),
    ("model.n_heads", _positive_int, "a positive int"),
    ("model.n_kv_heads", _positive_int, "a positive int"),
    ("model.head_dim", _positive_int, "a positive int"),
    ("model.mlp_dim", _positive_int, "a positive int"),
    ("model.dtype", lambda v: v in ("float32", "bfloat16"), "'float32' or 'bfloat16'"),
    ("model.attention", lambda v: v in ("xla", "blockwise", "cudnn", "splash"),
     "'xla', 'blockwise', 'cudnn' or 'splash'"),
    ("model.attention_block", _positive_int, "a positive int"),
    ("model.remat", lambda v: v in ("none", "full", "dots"), "'none', 'full' or 'dots'"),
    ("model.scan_layers", lambda v: isinstance(v, bool), "True or False"),
    ("train.steps", _positive_int, "a positive int"),
    ("train.batch_size", _positive_int, "a positive int"),
    ("train.lr", lambda v: isinstance(v, float) and v > 0, "a float > 0"),
    ("train.warmup_steps", lambda v: isinstance(v, int) and v >= 0, "an int >= 0"),
    ("train.schedule", lambda v: v in ("cosine", "constant"), "'cosine' or 'constant'"),
    ("train.min_lr_ratio", _fraction, "a number in [0, 1]"),
    ("train.weight_decay", _nonneg, "a number >= 0"),
    ("train.grad_clip", _nonneg, "a number >= 0 (0 = off)"),
    ("train.z_loss", _nonneg, "a number >= 0"),
    ("train.log_every", _positive_int, "a positive int"),
    ("train.grad_accum", _positive_int, "a positive int (microbatches per step)"),
    ("train.on_nonfinite", lambda v: v in ("stop", "skip"), "'stop' or 'skip'"),
    ("train.max_skipped_steps", lambda v: isinstance(v, int) and v >= 0, "an int >= 0"),
    ("train.profile_steps", lambda v: len(v) == 0 or (len(v) == 2 and 0 < v[0] <= v[1]),
     "() or (first, last) with 0 < first <= last"),
    ("mesh.strategy", lambda v: v in STRATEGIES, f"one of {STRATEGIES}"),
    ("checkpoint.every_steps", _positive_int, "a positive int"),
    ("checkpoint.max_to_keep", _positive_int, "a positive int"),
    ("sample.temperature_text", _nonneg, "a number >= 0 (0 = greedy)"),
    ("sample.temperature_image", _nonneg, "a number >= 0 (0 = greedy)"),
    ("sample.top_k_text", lambda v: isinstance(v, int) and v >= 0, "an int >= 0 (0 = off)"),
    ("sample.top_k_image", lambda v: isinstance(v, int) and v >= 0, "an int >= 0 (0 = off)"),
    ("sample.top_p_text", lambda v: _nonneg(v) and 0 < v <= 1, "a number in (0, 1] (1 = off)"),
    ("sample.top_p_image", lambda v: _nonneg(v) and 0 < v <= 1, "a number in (0, 1] (1 = off)"),
    ("sample.cfg_scale_image", _nonneg, "a number >= 0 (1 = off, 0 = unconditional)"),
    ("sample.cfg_interval_image", lambda v: len(v) == 2 and 0 <= v[0] < v[1] <= 1,
     "(a, b) with 0 <= a < b <= 1"),
    ("sample.interleaved_tokens", _positive_int, "a positive int"),
    ("sample.max_text_len", _positive_int, "a positive int"),
    ("sample.batch_size", _positive_int, "a positive int"),
    ("eval.num_examples", _positive_int, "a positive int"),
    ("eval.tasks", lambda v: not isinstance(v, str) and set(v) <= {"stories", "digits",
                                                                  "frechet"},
     "a tuple of 'stories', 'digits', 'frechet'"),
    ("eval.inception_weights", lambda v: isinstance(v, str), "a path or ''"),
)


IMAGE_DECODERS = ("plain", "sjd", "zipar")
_DECODER_CHECKS = (
    ("image_decoder", lambda v: v in IMAGE_DECODERS, f"one of {IMAGE_DECODERS}"),
    ("sjd_window", _positive_int, "a positive int (draft codes per pass)"),
    ("sjd_acceptance", lambda v: v in ("probabilistic", "greedy"),
     "'probabilistic' or 'greedy'"),
    ("lantern_k", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
     "an int >= 0 (latent neighbours per code)"),
    ("lantern_delta", _nonneg, "a number >= 0 (0 = exact SJD)"),
    ("zipar_window", _positive_int, "a positive int (codes a row leads the next by)"),
)


def check_image_decoder(sample) -> None:
    """The parallel image decoder options (mmar/sample/sjd.py, zipar.py) present in
    `sample` (a ConfigDict section or a dict of overrides); absent ones keep their defaults."""
    for field, ok, want in _DECODER_CHECKS:
        if field not in sample:
            continue
        try:
            good = ok(sample[field])
        except TypeError:
            good = False
        if not good:
            raise ConfigError(f"sample.{field}={sample[field]!r}: must be {want}")


def _get(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        if part not in node:
            raise ConfigError(f"{dotted}: missing from the config")
        node = node[part]
    return node


def image_order(cfg) -> str:
    """`data.image_order` ("raster" when a config predates the field)."""
    return cfg.data.get("image_order", "raster")


def make_vocab(cfg) -> vocab_lib.Vocab:
    """The run's token space; RandAR adds one position-instruction id per grid index."""
    text = vocab_lib.make_text_tokenizer(cfg.vocab)
    positions = derived.codes_per_image(cfg) if image_order(cfg) == "randar" else 0
    return vocab_lib.Vocab(text.vocab_size, derived.num_image_codes(cfg.image_tokenizer),
                           positions)


def _validate_order(cfg) -> None:
    """`data.image_order` and what it needs (mmar/data/orders.py); fills model.num_targets."""
    order = image_order(cfg)
    if order not in derived.IMAGE_ORDERS:
        raise ConfigError(f"data.image_order={order!r}: must be one of {derived.IMAGE_ORDERS}")
    start = cfg.data.get("rar_anneal_start", 0.25)
    end = cfg.data.get("rar_anneal_end", 0.75)
    if not (_fraction(start) and not isinstance(start, bool)):
        raise ConfigError(f"data.rar_anneal_start={start!r}: must be a number in [0, 1]")
    if not (_fraction(end) and not isinstance(end, bool) and end >= start):
        raise ConfigError(f"data.rar_anneal_end={end!r}: must be a number in "
                          f"[data.rar_anneal_start={start}, 1]")
    with cfg.unlocked():
        cfg.model.num_targets = derived.codes_per_image(cfg) + 1 if order == "rar" else 0
    sample = cfg.sample
    if sample.get("randar_schedule", "constant") not in ("constant", "cosine"):
        raise ConfigError(f"sample.randar_schedule={sample.randar_schedule!r}: must be "
                          "'constant' or 'cosine'")
    for field in ("randar_tokens_per_step", "randar_steps"):
        if not _positive_int(sample.get(field, 1)):
            raise ConfigError(f"sample.{field}={sample.get(field)!r}: must be a positive int")
    if order == "raster":
        return
    if cfg.image_tokenizer.quantizer == "rq":
        raise ConfigError(f"data.image_order={order!r}: residual quantization "
                          "(image_tokenizer.quantizer='rq') is raster-only (several codes per "
                          "grid position)")
    # Packing restarts positions per document and mixtures pack: neither knows the other
    # orders' positions / targets yet, so they are refused rather than silently wrong.
    for field, what in (("pack", "packing"), ("mixture", "mixtures")):
        if cfg.data.get(field):
            raise ConfigError(f"data.{field}={cfg.data.get(field)!r}: {what} support only "
                              f"data.image_order='raster', not {order!r}")
    if "stories" in cfg.eval.get("tasks", ()) and order == "randar":
        raise ConfigError("eval.tasks: 'stories' (interleaved continuation) needs "
                          "data.image_order 'raster' or 'rar', not 'randar'")
    n = derived.codes_per_image(cfg)
    need = 2 * n + 4 if order == "randar" else n + 4
    if cfg.data.seq_len < need:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len}: data.image_order={order!r} "
                          f"needs at least {need} tokens for one image of {n} codes "
                          "(<bos> <boi> ... <eoi> <eos>), plus its caption")


def validate(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks every field in `_CHECKS` plus cross-field rules; fills derived fields.

    Returns the same (now validated) config; raises ConfigError naming the first bad field.
    """
    for section in SECTIONS:
        if section not in cfg:
            raise ConfigError(f"{section}: section missing from the config")
    for dotted, ok, want in _CHECKS:
        value = _get(cfg, dotted)
        try:
            good = ok(value)
        except TypeError:
            good = False
        if not good:
            raise ConfigError(f"{dotted}={value!r}: must be {want}")
    m = cfg.model
    if m.n_heads % m.n_kv_heads:
        raise ConfigError(f"model.n_kv_heads={m.n_kv_heads}: must divide model.n_heads="
                          f"{m.n_heads}")
    tok = cfg.image_tokenizer
    if tok.quantizer == "rq" and (tok.ema or tok.dead_code_restart):
        raise ConfigError("image_tokenizer.ema: EMA and dead-code restart are VQ options; "
                          "RQ trains its codebooks by gradient")
    try:
        derived.autoencoder_shape(tok)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    _validate_order(cfg)
    try:
        vocab = make_vocab(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    with cfg.unlocked():
        if m.vocab_size == 0:
            m.vocab_size = vocab.size
    if m.vocab_size < vocab.used:
        raise ConfigError(f"model.vocab_size={m.vocab_size}: the vocabulary needs at least "
                          f"{vocab.used} ids")
    for group in (("data", "fsdp", "tensor"), ("dcn_data", "dcn_fsdp", "dcn_tensor")):
        for axis in group:
            size = cfg.mesh.get(axis, 1)
            if not (isinstance(size, int) and (size == -1 or size > 0)):
                raise ConfigError(f"mesh.{axis}={size!r}: must be a positive int or -1 "
                                  "(the rest)")
        if [cfg.mesh.get(a, 1) for a in group].count(-1) > 1:
            raise ConfigError(f"mesh: at most one of {group} may be -1")
    check_image_decoder(cfg.sample)
    decoder = cfg.sample.get("image_decoder", "plain")
    if decoder != "plain" and image_order(cfg) != "raster":
        raise ConfigError(f"sample.image_decoder={decoder!r}: SJD / LANTERN / ZipAR decode "
                          f"raster-order models; data.image_order={image_order(cfg)!r} "
                          "samples with 'plain' (RandAR: sample.randar_*, docs/decoding.md)")
    accum, batch = cfg.train.grad_accum, cfg.train.batch_size
    if batch % accum:
        raise ConfigError(f"train.batch_size={batch}: must be a multiple of "
                          f"train.grad_accum={accum}")
    return cfg


def load(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/config.py:preset` (the same syntax as the --config flag), unvalidated."""
    path, _, arg = spec.partition(":")
    file = pathlib.Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"mmar_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
