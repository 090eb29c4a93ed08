"""Every field of an experiment config, once: its default, its own rule (type, range,
allowed values) and one line of help, in `SCHEMA`; older flat names and their places now, in
`RENAMED`. mmar/schema.py fills, migrates, checks and prints configs from these tables.

Options that belong to one alternative sit under it (`image_tokenizer.vq.codebook_size`,
`sample.sjd.window`, `model.mot.tile`), so a preset shows only the alternative it uses.
This module imports only mmar.errors: it is the bottom of the package graph.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

from mmar.errors import UserError


class ConfigError(UserError, ValueError):
    """A config field has a bad value; the message starts with the field's dotted path."""


@dataclasses.dataclass(frozen=True)
class Field:
    default: Any
    help: str
    check: Callable[[Any], bool] | None = None
    want: str = ""                 # what a good value looks like, for the error message


# ---- predicates ---------------------------------------------------------------------------

def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def positive_int(v):
    return _int(v) and v > 0


def _nonneg_int(v):
    return _int(v) and v >= 0


def _nonneg(v):
    return _num(v) and v >= 0


def _fraction(v):
    return _num(v) and 0.0 <= v <= 1.0


def _bool(v):
    return isinstance(v, bool)


def _one_of(*choices):
    return (lambda v: v in choices), "one of " + ", ".join(repr(c) for c in choices)


POSITIVE = dict(check=positive_int, want="a positive int")
NONNEG_INT = dict(check=_nonneg_int, want="an int >= 0")
NONNEG = dict(check=_nonneg, want="a number >= 0")
FRACTION = dict(check=_fraction, want="a number in [0, 1]")
BOOL = dict(check=_bool, want="True or False")
POSITIVE_FLOAT = dict(check=lambda v: isinstance(v, float) and v > 0, want="a float > 0")


def _image_shape(v):
    return isinstance(v, str) and (v == "" or re.fullmatch(r"[1-9][0-9]*x[1-9][0-9]*", v)
                                   is not None)


def choice(*choices) -> dict:
    check, want = _one_of(*choices)
    return dict(check=check, want=want)


def _mesh_axis(v):
    return _int(v) and (v == -1 or v > 0)


# The projections of a block that `model.lora.targets` may name (mmar/model/lora.py).
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


# ---- the sections -------------------------------------------------------------------------

def _train_section(**defaults) -> dict:
    """The optimisation settings of one trained model (the decoder's `train`, the image
    tokenizer's `image_tokenizer.train`): the same fields, each model its own defaults."""
    d = dict(steps=3000, batch_size=32, lr=3e-3, warmup_steps=100, schedule="cosine",
             min_lr_ratio=0.1, weight_decay=0.05, b1=0.9, b2=0.95, grad_clip=1.0, z_loss=1e-4,
             log_every=50)
    d.update(defaults)
    return {
        "steps": Field(d["steps"], "optimizer steps", **POSITIVE),
        "batch_size": Field(d["batch_size"], "global batch (examples per step, all devices)",
                            **POSITIVE),
        "lr": Field(d["lr"], "peak learning rate", **POSITIVE_FLOAT),
        "warmup_steps": Field(d["warmup_steps"], "linear warmup from 0", **NONNEG_INT),
        "schedule": Field(d["schedule"], "after warmup", **choice("cosine", "constant")),
        "min_lr_ratio": Field(d["min_lr_ratio"], "cosine: final lr / peak lr", **FRACTION),
        "weight_decay": Field(d["weight_decay"], "AdamW decay on matrices (not norms/biases)",
                              **NONNEG),
        "b1": Field(d["b1"], "Adam beta1", **FRACTION),
        "b2": Field(d["b2"], "Adam beta2", **FRACTION),
        "grad_clip": Field(d["grad_clip"], "global-norm clip (0 = off)", **NONNEG),
        "z_loss": Field(d["z_loss"], "decoder: weight of log(Z)^2 (PaLM)", **NONNEG),
        "log_every": Field(d["log_every"], "steps between metric lines", **POSITIVE),
        "grad_accum": Field(1, "microbatches per step; batch_size is the global batch",
                            check=positive_int, want="a positive int (microbatches per step)"),
        "on_nonfinite": Field("stop", "a NaN/inf loss: stop, or skip the step",
                              **choice("stop", "skip")),
        "max_skipped_steps": Field(100, "with on_nonfinite='skip': stop after this many",
                                   **NONNEG_INT),
        "profile_steps": Field((), "(first, last): a profiler trace of those steps -> "
                               "WORKDIR/profile",
                               check=lambda v: len(v) == 0 or (len(v) == 2 and 0 < v[0] <= v[1]),
                               want="() or (first, last) with 0 < first <= last"),
    }


SCHEMA: dict[str, Any] = {
    "preset": Field("", "the preset's name (set by the config file)"),
    "seed": Field(0, "initialisation and data order", **NONNEG_INT),
    "data": {
        "name": Field("shapes", "the built-in data set the single-source jobs read"),
        "image_size": Field(32, "pixels per side (keep_aspect: of the square of the same area)",
                            **POSITIVE),
        "keep_aspect": Field(False, "images keep their aspect ratio: about image_size^2 "
                             "pixels on the code grid, the grid's shape in the token stream "
                             "(docs/data.md)", **BOOL),
        "max_aspect_ratio": Field(2.0, "keep_aspect: wider or taller images are cropped to "
                                  "this ratio", check=lambda v: _num(v) and v >= 1,
                                  want="a number >= 1"),
        "grid": Field(4, "shapes: cells per side", **POSITIVE),
        "max_objects": Field(3, "shapes: objects per scene", **POSITIVE),
        "jitter": Field(0, "shapes: pixels of random offset", **NONNEG_INT),
        "seed": Field(0, "shapes: generator seed", **NONNEG_INT),
        "colors": Field(("red", "green", "blue", "yellow", "purple", "orange"), "shapes"),
        "shapes": Field(("circle", "square", "triangle"), "shapes"),
        "heldout_combos": Field(("green triangle", "blue circle", "red square"),
                                "shapes: colour-shape pairs kept out of training"),
        "num_train": Field(20000, "shapes: training scenes", **POSITIVE),
        "num_test": Field(200, "shapes: held-out scenes", **POSITIVE),
        "num_unseen": Field(200, "shapes: scenes with held-out pairs", **POSITIVE),
        "data_dir": Field("", "prepared data sets ('' = $MMAR_DATA_DIR or "
                          "~/.cache/mmar/datasets)"),
        "i2t_fraction": Field(0.7, "share of training pairs that put the image first",
                              **FRACTION),
        "seq_len": Field(64, "tokens per row", **POSITIVE),
        "num_workers": Field(0, "Grain worker processes (0 = in the main process)",
                             **NONNEG_INT),
        "loss_weight_text": Field(1.0, "loss weight of text tokens", **NONNEG),
        "loss_weight_image": Field(1.0, "loss weight of image tokens", **NONNEG),
        "caption_dropout": Field(0.0, "P(drop a caption before its image): CFG training",
                                 **FRACTION),
        "pack": Field(False, "several documents per row (segment ids keep them apart)",
                      **BOOL),
        "pack_bins": Field(16, "rows filled at a time by first-fit packing", **POSITIVE),
        "oversize": Field("split", "a document longer than seq_len: split (never inside an "
                          "image) or drop", **choice("split", "drop")),
        "max_bad_fraction": Field(0.01, "stop past this share of bad records / drops",
                                  **FRACTION),
        "mixture": Field("", "'' = the shapes pairs; or 'name[:weight],...' over shapes, "
                         "stories, digits, a prepared folder, or webdataset:GLOB, "
                         "parquet:GLOB, obelics:GLOB (docs/data.md)"),
        "ingest": {  # the streamed sources webdataset:, parquet:, obelics: (mmar/data/ingest)
            "caption_field": Field("caption", "webdataset: caption in {key}.json if no .txt"),
            "image_column": Field("image", "parquet: image column (bytes or {bytes, path})"),
            "text_column": Field("text", "parquet: caption column"),
            "texts_column": Field("texts", "obelics: list of texts, None where an image is"),
            "images_column": Field("images", "obelics: list of images, None where a text is"),
            "max_images": Field(32, "images per document; more: skipped", **POSITIVE),
            "max_text_bytes": Field(65536, "text bytes per document; more: skipped", **POSITIVE),
            "batch_size": Field(256, "images per image-tokenizer call", **POSITIVE),
            "decode_threads": Field(2, "threads decoding beside the encoder", **POSITIVE),
        },
        "pretokenized": Field(False, "train reads WORKDIR/tokens from `mmar pretokenize`",
                              **BOOL),
        "shard_records": Field(1024, "records per token shard", **POSITIVE),
        "image_order": Field("raster", "order of an image's codes (docs/decoding.md)",
                             **choice("raster", "rar", "randar", "next_scale")),
        "rar": {
            "anneal_start": Field(0.25, "permute every row until this fraction of "
                                  "train.steps", **FRACTION),
            "anneal_end": Field(0.75, "then P(permute) decays linearly to 0 here",
                                **FRACTION),
        },
    },
    "vocab": {
        "text_tokenizer": Field(
            "bytes", "'bytes'; 'bpe' or 'unigram' (trained by `mmar text-tokenizer-train` into "
            "WORKDIR/text_tokenizer); or the path of a tokenizer.json (docs/tokenizers.md)",
            check=lambda v: isinstance(v, str) and v.strip() != "",
            want="'bytes', 'bpe', 'unigram' or the path of a tokenizer.json"),
        "text_vocab_size": Field(
            0, "bpe / unigram: text ids to train (0 = 32000); a tokenizer.json: 0 = its own "
            "ids, more keeps the rest unused. The special ids come after the text ids",
            check=lambda v: _int(v) and (v == 0 or v >= 256),
            want="0 or an int >= 256 (a byte-level tokenizer starts from the 256 bytes)"),
        "special_ids": Field(
            (), "a checkpoint's own ids of <pad> <bos> <eos> <boi> <eoi> (`mmar import` of "
            "Chameleon / Emu3 sets them, docs/pretrained.md); () = mmar's layout",
            check=lambda v: len(v) in (0, 5) and all(_int(x) and x >= 0 for x in v),
            want="() or five ints >= 0 (pad, bos, eos, boi, eoi)"),
        "image_offset": Field(
            -1, "with special_ids: the id of image code 0 (codes contiguous); -1 = mmar's "
            "layout", check=lambda v: _int(v) and v >= -1, want="an int >= -1"),
        "emu3_layout_ids": Field(
            (), "with special_ids: Emu3's image layout, the ids of <eol> <eof> <image token> "
            "'*' '0'..'9' (`mmar import` of Emu3 sets them, mmar/vocab.py); () = none",
            check=lambda v: len(v) in (0, 14) and all(_int(x) and x >= 0 for x in v),
            want="() or 14 ints >= 0 (eol, eof, image token, '*', the digits 0 to 9)"),
    },
    "image_tokenizer": {
        "quantizer": Field("fsq", "docs/tokenizers.md; 'msrq': VAR's multi-scale residual "
                           "codes (data.image_order='next_scale')",
                           **choice("fsq", "vq", "lfq", "rq", "msrq")),
        "arch": Field("patch", "'patch': one code per downsample x downsample cell; "
                      "'patch_alpha': the same, drawn from two sub-codes as an alpha mask "
                      "(where) and a colour (what) (fsq.groups=2, docs/tokenizers.md); 'conv'",
                      **choice("patch", "patch_alpha", "conv")),
        "downsample": Field(8, "pixels per code side", **POSITIVE),
        "channels": Field(32, "conv: base channels", **POSITIVE),
        "channel_mult": Field((1, 2, 4), "conv: channel multiplier per stride-2 stage"),
        "num_res_blocks": Field(0, "conv: residual blocks per stage", **NONNEG_INT),
        "norm": Field("group", "conv: normalisation", **choice("group", "none")),
        "pretrained": Field("", "a released image tokenizer (`mmar import`: WORKDIR/tokenizer/"
                            "pretrained/, docs/pretrained.md), used as it is; '' = mmar's own",
                            **choice("", "chameleon_vqgan", "emu3_vqvae")),
        "loss": Field("l2", "reconstruction loss", **choice("l2", "l1", "l1+l2")),
        "aux_loss_weight": Field(1.0, "weight of the quantizer's aux loss", **NONNEG),
        # min_lr_ratio 0.1, not 0: a cosine to zero froze two cell contents in one FSQ code
        # (1 seed of 12 on `tiny`); at 0.1 of the peak they keep separating (0 of 12:
        # docs/first_run.md, "The tokenizer check")
        "train": _train_section(steps=2000, batch_size=64, lr=3e-3, warmup_steps=100,
                                log_every=200, min_lr_ratio=0.1, weight_decay=0.0,
                                grad_clip=0.0, z_loss=0.0),
        "check": {   # mmar/tokenizers/image/check.py, run at the end of tokenizer-train
            "mode": Field("stop", "after training, on held-out shapes images: the judge on "
                          "reconstructions, and no code standing for two cell contents. "
                          "'stop' refuses a tokenizer that fails, 'warn' logs it, 'off'",
                          **choice("stop", "warn", "off")),
            "min_accuracy": Field(0.99, "least judge accuracy on reconstructions", **FRACTION),
        },
        "fsq": {
            "levels": Field((5, 5, 5), "levels per channel; codes = their product",
                            check=lambda v: len(v) > 0 and all(positive_int(x) and x >= 2
                                                               for x in v),
                            want="a non-empty tuple of ints >= 2"),
            "groups": Field(1, "sub-codebooks: the levels split into this many equal slices "
                            "of equal product, one code (sub-token) per slice and position "
                            "(docs/tokenizers.md, 'Factorised codes')", **POSITIVE),
        },
        "vq": {
            "codebook_size": Field(256, "codes", check=lambda v: positive_int(v) and v >= 2,
                                   want="an int >= 2"),
            "codebook_dim": Field(8, "code vector size", **POSITIVE),
            "l2_norm": Field(True, "LlamaGen's l2-normalised codes", **BOOL),
            "commitment": Field(0.25, "commitment loss weight", **NONNEG),
            "ema": Field(False, "codebook by EMA instead of gradient", **BOOL),
            "ema_decay": Field(0.99, "EMA decay", check=lambda v: _fraction(v) and v < 1,
                               want="a number in [0, 1)"),
            "dead_code_restart": Field(False, "re-seed unused codes from the batch", **BOOL),
        },
        "lfq": {
            "bits": Field(8, "codes = 2^bits", check=lambda v: positive_int(v) and v <= 30,
                          want="an int in [1, 30]"),
            "entropy_weight": Field(0.1, "entropy penalty weight", **NONNEG),
            "entropy_gamma": Field(1.0, "weight of the batch-entropy term", **NONNEG),
            "entropy_temperature": Field(0.1, "softmax temperature of the entropy terms",
                                         check=lambda v: _num(v) and v > 0,
                                         want="a number > 0"),
            "commitment": Field(0.25, "commitment loss weight", **NONNEG),
        },
        "rq": {
            "depth": Field(2, "codes per position; depth d gets ids offset by "
                           "d * codebook_size", **POSITIVE),
            "shared": Field(False, "one codebook for every depth", **BOOL),
            "codebook_size": Field(256, "codes per depth",
                                   check=lambda v: positive_int(v) and v >= 2,
                                   want="an int >= 2"),
            "codebook_dim": Field(8, "code vector size", **POSITIVE),
            "commitment": Field(0.25, "commitment loss weight", **NONNEG),
        },
        "msrq": {   # mmar/tokenizers/image/multiscale.py
            "scales": Field((1, 2, 3, 4), "token map sides, coarse to fine; the last is the "
                            "code grid side (data.image_size / downsample)",
                            check=lambda v: len(v) > 0 and all(positive_int(x) for x in v)
                            and list(v) == sorted(set(v)),
                            want="increasing positive ints"),
            "codebook_size": Field(256, "codes (one codebook for every scale)",
                                   check=lambda v: positive_int(v) and v >= 2,
                                   want="an int >= 2"),
            "codebook_dim": Field(8, "code vector size", **POSITIVE),
            "commitment": Field(0.25, "commitment loss weight", **NONNEG),
        },
        "disc": {
            "weight": Field(0.0, "PatchGAN adversarial loss weight (0 = no discriminator)",
                            **NONNEG),
            "start": Field(500, "step at which the adversarial loss starts", **NONNEG_INT),
            "channels": Field(32, "discriminator base channels", **POSITIVE),
        },
    },
    "model": {
        "vocab_size": Field(0, "0 = derived from the text tokenizer and the image codes",
                            **NONNEG_INT),
        "d_model": Field(128, "residual width", **POSITIVE),
        "n_layers": Field(4, "blocks", **POSITIVE),
        "n_heads": Field(4, "query heads", **POSITIVE),
        "n_kv_heads": Field(2, "key/value heads (GQA); divides n_heads", **POSITIVE),
        "head_dim": Field(32, "per head", **POSITIVE),
        "mlp_dim": Field(256, "SwiGLU hidden width", **POSITIVE),
        "rope_theta": Field(10000.0, "RoPE base", check=lambda v: _num(v) and v > 0,
                            want="a number > 0"),
        "qk_norm": Field(True, "RMSNorm on queries and keys", **BOOL),
        "hf_class": Field("", "the transformers class `mmar import` read and `mmar export` "
                          "writes back: '' = Llama (Qwen3 with QK-norm), 'chameleon', 'emu3'",
                          **choice("", "chameleon", "emu3")),
        "qk_norm_kind": Field("rms", "'rms': one RMSNorm over head_dim shared by the heads "
                              "(Qwen3); 'head_layernorm': a LayerNorm with its own weight and "
                              "bias per head (Chameleon)", **choice("rms", "head_layernorm")),
        "norm_placement": Field("pre", "'pre': x + f(norm(x)) (Llama); 'swin': x + norm(f(x)) "
                                "(Chameleon's swin_norm)", **choice("pre", "swin")),
        "tie_embeddings": Field(False, "output head = embedding matrix", **BOOL),
        "norm_eps": Field(1e-5, "RMSNorm epsilon", check=lambda v: _num(v) and v > 0,
                          want="a number > 0"),
        "dtype": Field("float32", "activations", **choice("float32", "bfloat16")),
        "param_dtype": Field("float32", "parameters", **choice("float32", "bfloat16")),
        "remat": Field("none", "rematerialise each block", **choice("none", "full", "dots")),
        "init_std": Field(0.02, "normal init of matrices", **NONNEG),
        "scan_layers": Field(True, "False: unroll the layer scan (faster step, longer "
                             "compile)", **BOOL),
        "attention": Field("xla", "kernel: 'blockwise' (no S x S scores), 'cudnn' (GPU), "
                           "'splash' (TPU)", **choice("xla", "blockwise", "cudnn", "splash")),
        "attention_block": Field(512, "blockwise: queries per block", **POSITIVE),
        "num_targets": Field(0, "derived: RAR target-position embeddings (set by validate)",
                             **NONNEG_INT),
        "image_positions": Field("1d", "RoPE positions of image codes: '1d' (the sequence), "
                                 "'2d' (sequence, row, column: mmar/model/positions.py; not "
                                 "exportable)", **choice("1d", "2d")),
        "image_layout": Field((), "derived with image_positions='2d' (set by validate): boi "
                              "id, first and stop code id, grid width, codes per cell",
                              check=lambda v: len(v) in (0, 5), want="() or five ints"),
        "scale_layout": Field((), "derived with data.image_order='next_scale' (set by "
                              "validate): boi id, first and stop code id, then the scales",
                              check=lambda v: len(v) == 0 or len(v) >= 4,
                              want="() or at least four ints"),
        "mot": {
            "enabled": Field(False, "Mixture-of-Transformers: per-modality block weights",
                             **BOOL),
            "num_modalities": Field(2, "text, image", **POSITIVE),
            "matmul": Field("auto", "grouped matmul ('auto': ragged on TPU, else tiled)",
                            **choice("auto", "tiled", "ragged")),
            "tile": Field(128, "tiled: rows per window", **POSITIVE),
        },
        "lora": {  # LoRA fine-tuning (docs/training.md): base frozen, adapters trained
            "rank": Field(0, "adapter rank (0 = off: every parameter trained)", **NONNEG_INT),
            "alpha": Field(16.0, "the update is scaled by alpha / rank",
                           check=lambda v: _num(v) and v > 0, want="a number > 0"),
            "targets": Field(LORA_TARGETS, "projections that get adapters",
                             check=lambda v: not isinstance(v, str) and len(v) > 0
                             and set(v) <= set(LORA_TARGETS),
                             want="a non-empty tuple of " + ", ".join(
                                 repr(t) for t in LORA_TARGETS)),
        },
    },
    "train": _train_section(),
    "mesh": {
        **{axis: Field(-1 if axis == "data" else 1, "devices on this mesh axis (-1 = the "
                       "rest)", check=_mesh_axis, want="a positive int or -1 (the rest)")
           for axis in ("data", "fsdp", "tensor", "dcn_data", "dcn_fsdp", "dcn_tensor")},
        "strategy": Field("fsdp_tp", "which axes shard what (docs/training.md)",
                          **choice("dp", "fsdp", "tp", "fsdp_tp")),
    },
    "checkpoint": {
        "every_steps": Field(1000, "steps between checkpoints", **POSITIVE),
        "max_to_keep": Field(2, "checkpoints kept", **POSITIVE),
    },
    "sample": {
        "temperature_text": Field(0.0, "0 = greedy", **NONNEG),
        "temperature_image": Field(1.0, "0 = greedy", **NONNEG),
        "top_k_text": Field(0, "0 = off", **NONNEG_INT),
        "top_k_image": Field(0, "0 = off", **NONNEG_INT),
        "top_p_text": Field(1.0, "nucleus (1 = off)", check=lambda v: _num(v) and 0 < v <= 1,
                            want="a number in (0, 1] (1 = off)"),
        "top_p_image": Field(1.0, "nucleus (1 = off)",
                             check=lambda v: _num(v) and 0 < v <= 1,
                             want="a number in (0, 1] (1 = off)"),
        "cfg_scale_image": Field(2.0, "classifier-free guidance (1 = off, 0 = unconditional)",
                                 **NONNEG),
        "cfg_interval_image": Field((0.0, 1.0), "guide codes whose raster fraction is in "
                                    "[a, b)",
                                    check=lambda v: len(v) == 2 and 0 <= v[0] < v[1] <= 1,
                                    want="(a, b) with 0 <= a < b <= 1"),
        "negative_prompt": Field(
            "", "text-to-image guidance: the text of the unconditional twin (Emu3's release "
            "guides with one; docs/pretrained.md); '' = no text, the twin is <bos> <boi>",
            check=lambda v: isinstance(v, str), want="a string"),
        "image_shape": Field("", "text-to-image 'HxW' in pixels (data.keep_aspect models; "
                             "'' = square data.image_size)", check=_image_shape,
                             want="'' or 'HxW' with positive ints, e.g. '256x512'"),
        "interleaved_tokens": Field(64, "new tokens per continued story", **POSITIVE),
        "max_text_len": Field(48, "longest generated caption", **POSITIVE),
        "batch_size": Field(50, "prompts per sampling batch", **POSITIVE),
        "seed": Field(0, "sampling key; -1 = the run's `seed` (so one override re-seeds "
                      "everything)", check=lambda v: _int(v) and v >= -1,
                      want="an int >= -1"),
        "image_decoder": Field("plain", "raster models: 'sjd' (speculative Jacobi, LANTERN) "
                               "or 'zipar' parallel decoding", **choice("plain", "sjd",
                                                                       "zipar")),
        "sjd": {
            "window": Field(8, "draft codes per pass", **POSITIVE),
            "acceptance": Field("probabilistic", "draft acceptance",
                                **choice("probabilistic", "greedy")),
            "lantern_k": Field(6, "LANTERN: latent neighbours per code", **NONNEG_INT),
            "lantern_delta": Field(0.0, "LANTERN: relaxation (0 = exact SJD)", **NONNEG),
        },
        "zipar": {
            "window": Field(2, "codes a row leads the next by", **POSITIVE),
        },
        "randar": {
            "schedule": Field("constant", "codes per pass: constant tokens_per_step, or "
                              "RandAR's cosine in `steps` passes",
                              **choice("constant", "cosine")),
            "tokens_per_step": Field(1, "constant schedule: codes per pass", **POSITIVE),
            "steps": Field(8, "cosine schedule: passes per image", **POSITIVE),
        },
    },
    "eval": {
        "num_examples": Field(200, "held-out examples per split", **POSITIVE),
        "grid_columns": Field(10, "columns of the sample grids", **POSITIVE),
        "tasks": Field(("frechet",), "beside t2i / i2t (docs/evaluation.md)",
                       check=lambda v: not isinstance(v, str) and set(v) <= {
                           "stories", "digits", "frechet"},
                       want="a tuple of 'stories', 'digits', 'frechet'"),
        "inception_weights": Field("", "a Keras InceptionV3 .weights.h5 for fid_inception "
                                   "('' = off)", check=lambda v: isinstance(v, str),
                                   want="a path or ''"),
    },
}
# Sections only some configs have (checked by their own job: mmar/scaling/sweep.py).
OPTIONAL_SECTIONS = ("sweep",)

# Older flat names -> their place now. A name with several places (one value shared by
# every quantizer that had the option) is copied to each.
RENAMED: dict[str, tuple[str, ...]] = {
    "image_tokenizer.levels": ("image_tokenizer.fsq.levels",),
    "image_tokenizer.codebook_size": ("image_tokenizer.vq.codebook_size",
                                      "image_tokenizer.rq.codebook_size"),
    "image_tokenizer.codebook_dim": ("image_tokenizer.vq.codebook_dim",
                                     "image_tokenizer.rq.codebook_dim"),
    "image_tokenizer.commitment": ("image_tokenizer.vq.commitment",
                                   "image_tokenizer.lfq.commitment",
                                   "image_tokenizer.rq.commitment"),
    **{f"image_tokenizer.{k}": (f"image_tokenizer.vq.{k}",)
       for k in ("l2_norm", "ema", "ema_decay", "dead_code_restart")},
    "image_tokenizer.lfq_bits": ("image_tokenizer.lfq.bits",),
    **{f"image_tokenizer.{k}": (f"image_tokenizer.lfq.{k}",)
       for k in ("entropy_weight", "entropy_gamma", "entropy_temperature")},
    "image_tokenizer.rq_depth": ("image_tokenizer.rq.depth",),
    "image_tokenizer.rq_shared": ("image_tokenizer.rq.shared",),
    **{f"image_tokenizer.disc_{k}": (f"image_tokenizer.disc.{k}",)
       for k in ("weight", "start", "channels")},
    **{f"image_tokenizer.{k}": (f"image_tokenizer.train.{k}",)
       for k in ("steps", "batch_size", "lr", "warmup_steps", "log_every")},
    "model.mot": ("model.mot.enabled",),          # a bool before it was a section
    "model.mot_matmul": ("model.mot.matmul",),
    "model.mot_tile": ("model.mot.tile",),
    "model.num_modalities": ("model.mot.num_modalities",),
    "data.rar_anneal_start": ("data.rar.anneal_start",),
    "data.rar_anneal_end": ("data.rar.anneal_end",),
    "sample.sjd_window": ("sample.sjd.window",),
    "sample.sjd_acceptance": ("sample.sjd.acceptance",),
    "sample.lantern_k": ("sample.sjd.lantern_k",),
    "sample.lantern_delta": ("sample.sjd.lantern_delta",),
    "sample.zipar_window": ("sample.zipar.window",),
    "sample.randar_schedule": ("sample.randar.schedule",),
    "sample.randar_tokens_per_step": ("sample.randar.tokens_per_step",),
    "sample.randar_steps": ("sample.randar.steps",),
}
