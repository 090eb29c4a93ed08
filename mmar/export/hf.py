"""mmar decoder <-> Hugging Face transformers: the weight mapping, config.json, and export.

Why the mapping is this short: mmar's decoder was written in the Llama layout on purpose.
RoPE rotates dimension i with i + head_dim/2 (transformers' `rotate_half`) with the same
frequencies theta^(-2i/head_dim), so q/k need no permutation; RMSNorm is x/rms(x) * w (not
1 + w) with the same epsilon; query head h reads kv head h // (H/KVH) as `repeat_kv`; QK-norm
is an RMSNorm over head_dim before RoPE, exactly Qwen3's q_norm/k_norm. What changes is only
the layout: mmar keeps heads as an axis ([embed, heads, head_dim]) and stacks layers on a
leading axis; transformers has one [out, in] matrix per layer.

    QK-norm off -> LlamaForCausalLM        QK-norm on -> Qwen3ForCausalLM
    model.hf_class='chameleon' / 'emu3' (an import of one) -> ChameleonForConditionalGeneration /
    Emu3ForConditionalGeneration, with its image tokenizer (mmar/export/unified.py)
    Mixture-of-Transformers or any parameter not in the table -> no transformers
    equivalent: `--format mmar` (mmar's own safetensors layout, docs/export.md).

z-loss is a training term only; it changes no weight.
"""
from __future__ import annotations

import json
import pathlib
import re
import shutil

import numpy as np

from mmar import config as config_lib
from mmar import derived
from mmar import vocab as vocab_lib
from mmar.export import assets
from mmar.export import orbax_reader
from mmar.export import safetensors_io as st
from mmar.export import unified
from mmar.tokenizers import text as text_lib
from mmar.tokenizers.text import model as text_model

DEFAULT_MAX_SHARD = "5GB"
FORMATS = ("hf", "mmar")

# mmar stacked name -> (transformers name inside `model.layers.{i}.`, kind)
LAYER_MAP = {
    "blocks.attn_norm.scale": ("input_layernorm.weight", "copy"),
    "blocks.attn.q": ("self_attn.q_proj.weight", "in_heads"),
    "blocks.attn.k": ("self_attn.k_proj.weight", "in_heads"),
    "blocks.attn.v": ("self_attn.v_proj.weight", "in_heads"),
    "blocks.attn.o": ("self_attn.o_proj.weight", "heads_out"),
    "blocks.attn.q_norm.scale": ("self_attn.q_norm.weight", "copy"),
    "blocks.attn.k_norm.scale": ("self_attn.k_norm.weight", "copy"),
    "blocks.attn.q_norm.bias": ("self_attn.q_norm.bias", "copy"),   # Chameleon's per head
    "blocks.attn.k_norm.bias": ("self_attn.k_norm.bias", "copy"),
    "blocks.mlp_norm.scale": ("post_attention_layernorm.weight", "copy"),
    "blocks.mlp.gate": ("mlp.gate_proj.weight", "transpose"),
    "blocks.mlp.up": ("mlp.up_proj.weight", "transpose"),
    "blocks.mlp.down": ("mlp.down_proj.weight", "transpose"),
}
GLOBAL_MAP = {
    "embed.embedding": ("model.embed_tokens.weight", "copy"),
    "final_norm.scale": ("model.norm.weight", "copy"),
    "head": ("lm_head.weight", "transpose"),
}


def to_hf(kind: str, w: np.ndarray) -> np.ndarray:
    """One layer's mmar array -> the transformers [out, in] (or vector) layout."""
    if kind == "copy":
        return w
    if kind == "transpose":
        return w.T
    if kind == "in_heads":      # [embed, heads, head_dim] -> [heads * head_dim, embed]
        return w.reshape(w.shape[0], -1).T
    if kind == "heads_out":     # [heads, head_dim, embed] -> [embed, heads * head_dim]
        return w.reshape(-1, w.shape[-1]).T
    raise ValueError(kind)


def to_mmar(kind: str, w: np.ndarray, mmar_shape) -> np.ndarray:
    """The inverse of `to_hf`, given the mmar shape of one layer."""
    if kind == "copy":
        return w.reshape(mmar_shape)
    return w.T.reshape(mmar_shape)


def hf_names(model_cfg) -> tuple[str, dict[str, str]]:
    """(the prefix of layer i's tensors before `{i}.`, mmar global name -> transformers name)
    of the class `architecture` names: Emu3 nests its decoder in `model.text_model.`."""
    arch = unified.ARCHS.get(model_cfg.hf_class)
    prefix = arch.prefix if arch else "model."
    names = {mmar: name.replace("model.", prefix, 1) for mmar, (name, _) in GLOBAL_MAP.items()}
    if arch:
        names["head"] = arch.head
    return prefix + "layers.", names


def expected_names(model_cfg) -> set[str]:
    names = set(LAYER_MAP) | set(GLOBAL_MAP)
    if not model_cfg.qk_norm:
        names -= {"blocks.attn.q_norm.scale", "blocks.attn.k_norm.scale"}
    if not (model_cfg.qk_norm and model_cfg.qk_norm_kind == "head_layernorm"):
        names -= {"blocks.attn.q_norm.bias", "blocks.attn.k_norm.bias"}
    if model_cfg.tie_embeddings:
        names.discard("head")
    return names


def architecture(model_cfg) -> tuple[str, str]:
    if model_cfg.hf_class:
        arch = unified.ARCHS[model_cfg.hf_class]
        return arch.model_type, arch.hf_class
    return ("qwen3", "Qwen3ForCausalLM") if model_cfg.qk_norm else ("llama", "LlamaForCausalLM")


def check_order(cfg) -> None:
    """RAR adds a target embedding to the input (mmar/data/orders.py): no Llama has one.
    RandAR decoders are plain Llamas whose vocabulary ends with position-instruction ids
    (mmar.json records them), so they export as they are."""
    if cfg.data.image_order == "rar":
        raise ValueError("data.image_order='rar': a transformers Llama cannot hold RAR's "
                         "target embeddings (model.num_targets); export it with --format mmar "
                         "(docs/export.md)")
    if cfg.data.image_order == "next_scale":
        raise ValueError("data.image_order='next_scale': a transformers Llama has no "
                         "block-causal mask, scale inputs or scale embeddings (mmar/model/"
                         "next_scale.py); export it with --format mmar (docs/export.md)")


def check_mappable(model_cfg, names) -> None:
    """Raises ValueError unless the checkpoint maps exactly onto Llama / Qwen3 (or the
    Chameleon / Emu3 class it was imported from)."""
    if not model_cfg.hf_class and (model_cfg.norm_placement != "pre" or (
            model_cfg.qk_norm and model_cfg.qk_norm_kind != "rms")):
        field = ("norm_placement" if model_cfg.norm_placement != "pre" else "qk_norm_kind")
        raise ValueError(f"model.{field}={model_cfg[field]!r}: Llama and Qwen3 have pre-norm "
                         "and an RMS QK-norm; only a Chameleon import (model.hf_class="
                         "'chameleon') exports it, or --format mmar (docs/export.md)")
    if model_cfg.mot.enabled:
        raise ValueError("model.mot.enabled=True: a Mixture-of-Transformers decoder has no "
                         "transformers equivalent; export it with --format mmar (docs/export.md)")
    if model_cfg.image_positions == "2d":
        raise ValueError("model.image_positions='2d': transformers' Llama, Qwen3, Chameleon "
                         "and Emu3 give image codes 1-D RoPE positions, so the exported model "
                         "would read images differently; export it with --format mmar "
                         "(docs/export.md)")
    extra = sorted(set(names) - expected_names(model_cfg))
    missing = sorted(expected_names(model_cfg) - set(names))
    if extra or missing:
        raise ValueError(f"the checkpoint's parameters do not map onto {architecture(model_cfg)[1]}"
                         f": unexpected {extra}, missing {missing}; use --format mmar")


def hf_config(cfg, vocab, dtype: str) -> dict:
    """config.json for transformers (Llama, or Qwen3 with QK-norm)."""
    m = cfg.model
    model_type, arch = architecture(m)
    out = {
        "architectures": [arch], "model_type": model_type,
        "vocab_size": m.vocab_size, "hidden_size": m.d_model, "intermediate_size": m.mlp_dim,
        "num_hidden_layers": m.n_layers, "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.n_kv_heads, "head_dim": m.head_dim, "hidden_act": "silu",
        # RoPE has no length limit; this is the trained length (serving engines cap on it).
        "max_position_embeddings": int(cfg.data.seq_len),
        "rms_norm_eps": m.norm_eps, "rope_theta": m.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},
        "attention_bias": False, "attention_dropout": 0.0,
        "tie_word_embeddings": bool(m.tie_embeddings), "initializer_range": m.init_std,
        "bos_token_id": vocab.bos, "eos_token_id": vocab.eos, "pad_token_id": vocab.pad,
        "dtype": dtype, "use_cache": True,
    }
    if model_type == "llama":
        out.update(mlp_bias=False, pretraining_tp=1)
    else:
        out.update(use_sliding_window=False, sliding_window=None,
                   max_window_layers=m.n_layers, layer_types=["full_attention"] * m.n_layers)
    return out


def parse_size(text) -> int:
    """'5GB', '200MB', '10KB' or a byte count -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", str(text).upper())
    if not match:
        raise ValueError(f"--max_shard_size={text!r}: expected e.g. 5GB, 200MB or a byte count")
    unit = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9}
    return int(float(match.group(1)) * unit[match.group(2)])


def _plan_hf(reader, cfg, dtype) -> list[st.Planned]:
    """The transformers tensors in order, each produced from one layer slice when asked."""
    m = cfg.model
    plan = []
    layers, names = hf_names(m)

    def add(hf_name, mmar_name, kind, index=None):
        shape = reader.shape(mmar_name)[0 if index is None else 1:]
        hf_shape = to_hf(kind, np.empty(shape, np.bool_)).shape
        plan.append(st.Planned(hf_name, hf_shape, dtype,
                               lambda: to_hf(kind, reader.read(mmar_name, index))))

    add(names["embed.embedding"], "embed.embedding", "copy")
    for i in range(m.n_layers):
        for name, (hf_name, kind) in LAYER_MAP.items():
            if name in reader.names:
                add(f"{layers}{i}.{hf_name}", name, kind, i)
    add(names["final_norm.scale"], "final_norm.scale", "copy")
    if not m.tie_embeddings:
        add(names["head"], "head", "transpose")
    return plan


def _plan_mmar(reader, dtype) -> list[st.Planned]:
    return [st.Planned(name, reader.shape(name), dtype, lambda name=name: reader.read(name))
            for name in reader.names]


def export(checkpoint, out_dir, *, fmt: str = "hf", dtype: str | None = None,
           max_shard_size=DEFAULT_MAX_SHARD, image_tokenizer=None, text_tokenizer=None,
           log=print) -> pathlib.Path:
    """Writes `out_dir` from an mmar decoder checkpoint (a run workdir, its decoder dir or a
    step dir). The image tokenizer is taken from `image_tokenizer` or the run workdir; a
    trained text tokenizer from `text_tokenizer` (a tokenizer.json) or the run workdir."""
    if fmt not in FORMATS:
        raise ValueError(f"--format={fmt!r}: one of {FORMATS}")
    step_dir = orbax_reader.find_step_dir(checkpoint, "decoder")
    reader = orbax_reader.CheckpointReader(step_dir)
    cfg = reader.config()
    lora = cfg.model.lora
    if lora.rank:   # the adapters go into the weights: the export is the plain model
        reader = orbax_reader.LoRAMergedReader(reader, lora.alpha)
        log(f"[export] model.lora.rank={lora.rank}: merged the LoRA adapters into "
            f"{len(reader.adapted)} weights (W + alpha / rank * A @ B)")
        cfg = reader.config()   # rank 0: what the merged weights are
    vocab = config_lib.make_vocab(cfg)
    if fmt == "hf":
        check_order(cfg)
        check_mappable(cfg.model, reader.names)
    dtype = dtype or cfg.model.param_dtype
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"--dtype={dtype!r}: one of ('float32', 'bfloat16')")
    np_dtype = np.dtype(st.DTYPES["F32" if dtype == "float32" else "BF16"])
    out_dir = pathlib.Path(out_dir)
    _check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in list(out_dir.glob("model*.safetensors")) + list(out_dir.glob(f"*{st.INDEX}")):
        old.unlink()  # a re-export with other shard counts must not leave stale shards
    plan = _plan_hf(reader, cfg, np_dtype) if fmt == "hf" else _plan_mmar(reader, np_dtype)
    arch = unified.ARCHS.get(cfg.model.hf_class) if fmt == "hf" else None
    if arch is not None:   # the imported image tokenizer goes back in, as it came
        plan += unified.vq_plan(_pretrained_dir(step_dir, image_tokenizer), arch)
    files = st.write_sharded(out_dir, plan, parse_size(max_shard_size))
    if fmt == "hf":
        config = (unified.hf_config(_imported_config(step_dir), cfg, dtype) if arch else
                  hf_config(cfg, vocab, dtype))
        (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    elif (out_dir / "config.json").exists():
        (out_dir / "config.json").unlink()  # only a transformers export has one
    (out_dir / "mmar_config.json").write_text(cfg.to_json(indent=1))
    assets.write_generation_config(out_dir, vocab)
    text = _text_tokenizer(cfg, vocab, step_dir, text_tokenizer)
    special_tokens = assets.write_text_tokenizer(out_dir, vocab, cfg, text)
    tok_dir = (None if cfg.image_tokenizer.pretrained else
               _tokenizer_step_dir(step_dir, image_tokenizer))
    codes_shape = None
    if cfg.image_tokenizer.pretrained:
        codes_shape = derived.code_grid(cfg)
        shutil.rmtree(out_dir / assets.IMAGE_DIR, ignore_errors=True)
        if arch is None:
            log(f"[export] image_tokenizer.pretrained={cfg.image_tokenizer.pretrained!r}: "
                "not exported with --format mmar (it is in the hf export, model.vqmodel.*)")
    elif tok_dir is not None:
        codes_shape = assets.export_image_tokenizer(tok_dir, out_dir / assets.IMAGE_DIR, cfg)
    else:
        shutil.rmtree(out_dir / assets.IMAGE_DIR, ignore_errors=True)
        log(f"[export] no image tokenizer checkpoint found near {step_dir}; exported the "
            "decoder only (pass --image_tokenizer=DIR)")
    assets.write_mmar_json(out_dir, cfg, vocab, fmt=fmt, step=int(step_dir.name)
                           if step_dir.name.isdigit() else None, codes_shape=codes_shape,
                           special_tokens=special_tokens)
    arch = architecture(cfg.model)[1] if fmt == "hf" else "mmar layout"
    log(f"[export] {step_dir} -> {out_dir} ({arch}, {dtype}, {len(plan)} tensors in "
        f"{len(files)} file(s))")
    return out_dir


def _check_out_dir(out_dir: pathlib.Path) -> None:
    """An export replaces the weight files of the directory it writes; so it writes only into
    a new or empty directory, or over an earlier mmar export (one with mmar.json). Anything
    else (a downloaded model, a run directory, a home directory) is refused: FileExistsError."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"--out {out_dir}: a file, not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / assets.MMAR_JSON).is_file():
        raise FileExistsError(
            f"--out {out_dir}: not empty and not an mmar export (no {assets.MMAR_JSON}); an "
            "export replaces the weight files there: choose a new or empty directory")


def _text_tokenizer(cfg, vocab, step_dir, path):
    """The run's text tokenizer (None for bytes): `path`, the config's file, or the run
    workdir's trained one (mmar/rundir.py's layout: text_tokenizer/tokenizer.json)."""
    kind = vocab_lib.text_kind(cfg.vocab)
    if kind == "bytes":
        return None
    if path is None and kind == "file":
        path = vocab_lib.tokenizer_file(cfg.vocab)
    if path is None:
        run_dir = orbax_reader.run_dir_of(step_dir, "decoder")
        path = run_dir / text_lib.RUN_SUBDIR / text_lib.FILENAME if run_dir else None
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"vocab.text_tokenizer={kind!r}: no trained text tokenizer near {step_dir} "
                f"(WORKDIR/{text_lib.RUN_SUBDIR}/{text_lib.FILENAME}, from `mmar "
                "text-tokenizer-train`); pass --text_tokenizer=PATH")
    return text_model.load(path, kind=kind, vocab_size=vocab.text_size)


def _imported_config(step_dir) -> dict:
    """The config.json `mmar import` kept (WORKDIR/decoder/hf_config.json)."""
    run_dir = orbax_reader.run_dir_of(step_dir, "decoder")
    path = run_dir / "decoder" / unified.HF_CONFIG if run_dir else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"model.hf_class: no {unified.HF_CONFIG} near {step_dir} "
                                "(`mmar import` writes WORKDIR/decoder/hf_config.json): export "
                                "from the run directory the import made")
    return json.loads(path.read_text())


def _pretrained_dir(step_dir, image_tokenizer) -> pathlib.Path:
    """The imported image tokenizer: `--image_tokenizer DIR` or WORKDIR/tokenizer/pretrained."""
    if image_tokenizer:
        return pathlib.Path(image_tokenizer)
    run_dir = orbax_reader.run_dir_of(step_dir, "decoder")
    path = run_dir / "tokenizer" / unified.PRETRAINED_DIR if run_dir else None
    if path is None or not path.is_dir():
        raise FileNotFoundError(f"image_tokenizer.pretrained: no tokenizer/"
                                f"{unified.PRETRAINED_DIR} near {step_dir}; pass "
                                "--image_tokenizer=DIR")
    return path


def _tokenizer_step_dir(decoder_step_dir, image_tokenizer):
    if image_tokenizer:
        return orbax_reader.find_step_dir(image_tokenizer, "tokenizer")
    run_dir = orbax_reader.run_dir_of(decoder_step_dir, "decoder")
    if run_dir is None:
        return None
    try:
        return orbax_reader.find_step_dir(run_dir / "tokenizer", "tokenizer")
    except FileNotFoundError:
        return None
