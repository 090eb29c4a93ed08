"""Validation of an experiment ConfigDict: one clear error that names the bad field.

Configs are plain Python (`configs/*.py`, `get_config(preset)`). Each field's default, type
and allowed values are in mmar/schema.py; this module completes a config from it, checks the
rules that span fields before anything expensive starts, and derives the fields that follow
from others (the vocabulary size from the text tokenizer and the image codebook).
"""
from __future__ import annotations

import importlib.util
import pathlib

import ml_collections

from mmar import derived, schema
from mmar import vocab as vocab_lib

# The names of mmar/parallel/rules.py's STRATEGIES tables (a test checks they agree; the
# tables need JAX, which validation does not load).
STRATEGIES = ("dp", "fsdp", "tp", "fsdp_tp")
ConfigError = schema.ConfigError


def image_order(cfg) -> str:
    """`data.image_order`."""
    return cfg.data.image_order


def make_vocab(cfg) -> vocab_lib.Vocab:
    """The run's token space; RandAR adds one position-instruction id per grid index."""
    positions = derived.codes_per_image(cfg) if image_order(cfg) == "randar" else 0
    vocab = vocab_lib.Vocab(vocab_lib.text_size(cfg.vocab),
                            derived.num_image_codes(cfg.image_tokenizer), positions,
                            derived.max_grid_side(cfg), _pinned(cfg),
                            tuple(int(i) for i in cfg.vocab.emu3_layout_ids))
    if vocab.emu3 and not vocab.pinned:
        raise ConfigError(f"vocab.emu3_layout_ids={vocab.emu3!r}: Emu3's layout is a "
                          "checkpoint's own vocabulary (set vocab.special_ids too, as "
                          "`mmar import` of Emu3 does)")
    if vocab.pinned:
        _check_pinned(cfg, vocab)
    return vocab


def _pinned(cfg) -> tuple:
    """(pad, bos, eos, boi, eoi, image_offset) of a checkpoint's own layout, or ()."""
    ids, offset = tuple(cfg.vocab.special_ids), int(cfg.vocab.image_offset)
    if bool(ids) != (offset >= 0):
        raise ConfigError(f"vocab.special_ids={ids!r}, vocab.image_offset={offset}: a "
                          "checkpoint's layout sets both (five ids and an offset >= 0), "
                          "mmar's neither")
    return ids + (offset,) if ids else ()


def _check_pinned(cfg, vocab) -> None:
    """A pinned layout holds every id inside the tokenizer's, codes apart from specials;
    RandAR positions and keep-aspect layout ids have no place in it (yet)."""
    stop = vocab.image_offset + vocab.num_image_codes
    if stop > vocab.text_size:
        raise ConfigError(f"vocab.image_offset={vocab.image_offset}: {vocab.num_image_codes} "
                          f"image codes end at {stop}, past the tokenizer's {vocab.text_size} "
                          "ids")
    for name, i in zip(vocab_lib.SPECIALS, vocab.pinned[:5]):
        if i >= vocab.text_size or vocab.image_offset <= i < stop:
            raise ConfigError(f"vocab.special_ids: {name}={i} must be a tokenizer id "
                              f"(< {vocab.text_size}) outside the image codes "
                              f"[{vocab.image_offset}, {stop})")
    for i in vocab.emu3:
        if i >= vocab.text_size or vocab.is_image(i) or i in vocab.pinned[:5]:
            raise ConfigError(f"vocab.emu3_layout_ids: {i} must be a tokenizer id "
                              f"(< {vocab.text_size}), not an image code or a special")
    if vocab.emu3:   # what Emu3's rows are built for: raster, plain decoding, square grids
        if image_order(cfg) != "raster" or cfg.sample.image_decoder != "plain":
            field = ("data.image_order" if image_order(cfg) != "raster" else
                     "sample.image_decoder")
            raise ConfigError(f"{field}={cfg[field.split('.')[0]][field.split('.')[1]]!r}: "
                              "Emu3's image layout (rows with <eol>) is written in raster "
                              "order and sampled with 'plain'")
        h, w = derived.code_grid(cfg)
        need = len(vocab.image_prefix(h, w)) + h * (w + 1) + 1 + 4
        if cfg.data.seq_len < need:
            raise ConfigError(f"data.seq_len={cfg.data.seq_len}: Emu3's layout needs at least "
                              f"{need} tokens for one {h}x{w} image (<bos> <boi> h*w <image "
                              "token>, rows with <eol>, <eof> <eoi> <eos>), plus its caption")
    if vocab.num_positions or vocab.grid_sides:
        field = "data.image_order" if vocab.num_positions else "data.keep_aspect"
        raise ConfigError(f"{field}={cfg.data[field.split('.')[1]]!r}: a checkpoint's own "
                          "vocabulary (vocab.special_ids) has no ids for RandAR positions or "
                          "mmar's grid sizes")


def _validate_order(cfg) -> None:
    """`data.image_order` and what it needs (mmar/data/orders.py); fills model.num_targets."""
    order = image_order(cfg)
    if order not in derived.IMAGE_ORDERS:
        raise ConfigError(f"data.image_order={order!r}: must be one of {derived.IMAGE_ORDERS}")
    rar = cfg.data.rar
    if rar.anneal_end < rar.anneal_start:
        raise ConfigError(f"data.rar.anneal_end={rar.anneal_end!r}: must be a number in "
                          f"[data.rar.anneal_start={rar.anneal_start}, 1]")
    with cfg.unlocked():
        cfg.model.num_targets = derived.codes_per_image(cfg) + 1 if order == "rar" else 0
    if cfg.data.keep_aspect:
        _validate_keep_aspect(cfg)
    multiscale = cfg.image_tokenizer.quantizer == "msrq"
    if multiscale != (order == "next_scale"):
        raise ConfigError(
            f"data.image_order={order!r}: " + (
                "image_tokenizer.quantizer='msrq' writes an image as token maps of growing "
                "size, decoded coarse to fine: it needs data.image_order='next_scale'"
                if multiscale else "next-scale prediction reads the token maps of a "
                "multi-scale tokenizer: it needs image_tokenizer.quantizer='msrq', got "
                f"{cfg.image_tokenizer.quantizer!r}"))
    if multiscale:
        side = derived.code_grid(cfg)[0]
        scales = tuple(cfg.image_tokenizer.msrq.scales)
        if scales[-1] != side:
            raise ConfigError(f"image_tokenizer.msrq.scales={scales}: the last scale must be "
                              f"the code grid side, data.image_size / image_tokenizer."
                              f"downsample = {side}")
    if order == "raster":
        return
    if derived.quantizer_depth(cfg.image_tokenizer) > 1:
        raise ConfigError(f"data.image_order={order!r}: residual quantization "
                          "(image_tokenizer.quantizer='rq') and factorised FSQ (fsq.groups > 1) "
                          "are raster-only (several codes per grid position)")
    # Packing restarts positions per document and mixtures pack: neither knows the RAR /
    # RandAR positions and targets yet, so they are refused rather than silently wrong
    # (next-scale rows are raster rows: their structure follows from the tokens).
    for field, what in (("pack", "packing"), ("mixture", "mixtures")):
        if cfg.data[field] and order != "next_scale":
            raise ConfigError(f"data.{field}={cfg.data[field]!r}: {what} support only "
                              f"data.image_order='raster', not {order!r}")
    if "stories" in cfg.eval.tasks and order in ("randar", "next_scale"):
        raise ConfigError("eval.tasks: 'stories' (interleaved continuation) needs "
                          f"data.image_order 'raster' or 'rar', not {order!r}")
    n = derived.codes_per_image(cfg)
    need = 2 * n + 4 if order == "randar" else n + 4
    if cfg.data.seq_len < need:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len}: data.image_order={order!r} "
                          f"needs at least {need} tokens for one image of {n} codes "
                          "(<bos> <boi> ... <eoi> <eos>), plus its caption")


def _validate_keep_aspect(cfg) -> None:
    """What images of any shape (rows of codes ending in <eol>) are not built for yet: one
    ConfigError naming the field, rather than a model that trains on the wrong layout."""
    if image_order(cfg) != "raster":
        raise ConfigError(f"data.keep_aspect=True: images of any shape are written row by "
                          f"row (raster); data.image_order={image_order(cfg)!r} is square-only")
    if derived.quantizer_depth(cfg.image_tokenizer) > 1:
        raise ConfigError("data.keep_aspect=True: image_tokenizer.quantizer='rq' and "
                          "fsq.groups > 1 are square-only (several codes per grid position)")
    if cfg.sample.image_decoder != "plain":
        raise ConfigError(f"sample.image_decoder={cfg.sample.image_decoder!r}: SJD / ZipAR "
                          "decode square grids; data.keep_aspect=True samples with 'plain'")
    h, w = derived.code_grid(cfg)
    need = 2 + h * (w + 1) + 4 + derived.max_grid_side(cfg)   # the widest row count's <eol>s
    if cfg.data.seq_len < need:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len}: data.keep_aspect=True needs at "
                          f"least {need} tokens for one image of up to {h * w} codes with its "
                          "size and <eol> ids (<bos> <boi> ... <eoi> <eos>), plus its caption")


def _validate_image_positions(cfg, vocab) -> None:
    """`model.image_positions='2d'`: fills model.image_layout from the vocabulary and the code
    grid; refuses what cannot count codes in order (mmar/model/positions.py)."""
    m = cfg.model
    if m.image_positions != "2d":
        with cfg.unlocked():
            m.image_layout = ()
        return
    why = {"data.image_order": image_order(cfg) != "raster",
           "sample.image_decoder": cfg.sample.image_decoder != "plain",
           "data.keep_aspect": bool(cfg.data.keep_aspect),
           "vocab.emu3_layout_ids": bool(vocab.emu3)}
    for field, bad in why.items():
        if bad:
            value = cfg[field.split(".")[0]][field.split(".")[1]]
            raise ConfigError(f"{field}={value!r}: model.image_positions='2d' counts image "
                              "codes in raster order, one square grid per <boi> and one code "
                              "after another (data.image_order='raster', sample.image_decoder="
                              "'plain', data.keep_aspect=False, mmar's own image layout)")
    _, width = derived.code_grid(cfg)
    with cfg.unlocked():
        m.image_layout = (vocab.boi, vocab.image_offset, vocab.image_offset
                          + vocab.num_image_codes, width,
                          derived.quantizer_depth(cfg.image_tokenizer))


def _validate_next_scale(cfg, vocab) -> None:
    """`data.image_order='next_scale'`: fills model.scale_layout (mmar/model/next_scale.py).
    Its images have positions of their own (`_validate_image_positions` refuses '2d')."""
    m = cfg.model
    if image_order(cfg) != "next_scale":
        with cfg.unlocked():
            m.scale_layout = ()
        return
    if m.attention == "splash":
        raise ConfigError("model.attention='splash': the splash kernel has no block-causal "
                          "mask (data.image_order='next_scale'); use 'xla', 'blockwise' or "
                          "'cudnn'")
    with cfg.unlocked():
        m.scale_layout = (vocab.boi, vocab.image_offset,
                          vocab.image_offset + vocab.num_image_codes,
                          *(int(k) for k in cfg.image_tokenizer.msrq.scales))


def validate(cfg) -> ml_collections.ConfigDict:
    """Completes `cfg` (mmar/schema.py: older names moved, defaults filled, unknown fields
    refused), checks every field's own rule and the cross-field rules below, and fills the
    derived fields (model.vocab_size when 0, model.num_targets, model.image_layout).

    Returns the completed config; raises ConfigError naming the first bad field.
    """
    cfg = schema.complete(cfg)
    schema.check(cfg)
    if cfg.data.mixture:
        try:
            derived.parse_mixture(cfg.data.mixture)
        except ValueError as e:
            raise ConfigError(f"data.mixture={cfg.data.mixture!r}: {e} (want 'name[:weight],"
                              "...' with names shapes, stories, digits, a folder, or webdataset:GLOB, "
                              "parquet:GLOB, obelics:GLOB)") from None
    m = cfg.model
    if m.n_heads % m.n_kv_heads:
        raise ConfigError(f"model.n_kv_heads={m.n_kv_heads}: must divide model.n_heads="
                          f"{m.n_heads}")
    tok = cfg.image_tokenizer
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
        if [cfg.mesh[a] for a in group].count(-1) > 1:
            raise ConfigError(f"mesh: at most one of {group} may be -1")
    if cfg.sample.image_shape and not cfg.data.keep_aspect:
        raise ConfigError(f"sample.image_shape={cfg.sample.image_shape!r}: the model is "
                          "trained on square images (data.keep_aspect=False); leave it '' for "
                          f"{cfg.data.image_size} pixels")
    decoder = cfg.sample.image_decoder
    if cfg.sample.negative_prompt and (decoder != "plain" or image_order(cfg) == "randar"):
        raise ConfigError(f"sample.negative_prompt={cfg.sample.negative_prompt!r}: plain "
                          "decoding of a raster or RAR model only (sample.image_decoder="
                          f"{decoder!r}, data.image_order={image_order(cfg)!r})")
    depth = derived.quantizer_depth(cfg.image_tokenizer)
    if decoder != "plain" and depth > 1:
        raise ConfigError(f"sample.image_decoder={decoder!r}: SJD / LANTERN / ZipAR decode one "
                          f"code per grid position; this image tokenizer writes {depth} (RQ "
                          "depth or fsq.groups): use 'plain'")
    if decoder != "plain" and image_order(cfg) != "raster":
        raise ConfigError(f"sample.image_decoder={decoder!r}: SJD / LANTERN / ZipAR decode "
                          f"raster-order models; data.image_order={image_order(cfg)!r} "
                          "samples with 'plain' (RandAR: sample.randar.*, docs/decoding.md)")
    _validate_image_positions(cfg, vocab)
    _validate_next_scale(cfg, vocab)
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
