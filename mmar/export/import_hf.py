"""A transformers Llama / Qwen3 checkpoint (safetensors) -> an mmar decoder checkpoint.

The use: start multimodal training from a text LLM (the Lumina-mGPT / Anole recipe). The
text ids keep the LLM's rows; mmar's special ids (`<pad> <bos> <eos> <boi> <eoi>`) and the
image-code ids are appended after them and the total is padded to a multiple of 128, the
same layout as mmar's own vocabulary with the LLM's vocabulary as the text range. New rows
start at the mean of the existing embedding (and head) rows plus N(0, init_std) noise, so
the new tokens begin where the model's average token is rather than far outside it. A
`tokenizer.json` beside the weights becomes the run's text tokenizer (`vocab.text_tokenizer`
= its path, `vocab.text_vocab_size` = the model's vocab_size), so mmar encodes text to the
model's own ids.

An mmar export (it carries `mmar.json` and `mmar_config.json`) comes back unchanged: same
config, same vocabulary, identical parameters (tested), and a trained bpe / unigram text
tokenizer back in RUN_DIR/text_tokenizer. A `--format mmar` export (mmar's own names, e.g. a
Mixture-of-Transformers decoder) is read by name.

Everything the user points us at is read as JSON and safetensors only (never pickle);
anything that cannot map exactly raises one error naming the file and the field.
"""
from __future__ import annotations

import json
import pathlib
import shutil

import jax
import ml_collections
import numpy as np

from mmar import config as config_lib
from mmar import derived, schema
from mmar import vocab as vocab_lib
from mmar.export import assets, hf, unified
from mmar.export import safetensors_io as st
from mmar.model.transformer import Decoder
from mmar.parallel import mesh as mesh_lib
from mmar.tokenizers import text as text_lib
from mmar.train import checkpoint as checkpoint_lib
from mmar.train import state as state_lib
from mmar.vocab import PAD_MULTIPLE, SPECIALS

SUPPORTED = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
             **{name: arch.hf_class for name, arch in unified.ARCHS.items()}}


def _read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing") from None
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def model_section(hf_cfg: dict, path) -> dict:
    """mmar `model` fields from a transformers config.json; errors name the field."""
    model_type = hf_cfg.get("model_type")
    if model_type not in SUPPORTED:
        raise ValueError(f"{path}: model_type={model_type!r} cannot be imported (one of "
                         f"{sorted(SUPPORTED)})")
    full, hf_cfg = hf_cfg, unified.text_config(hf_cfg)   # Emu3: the decoder's own fields

    def need(field, ok, want):
        value = hf_cfg.get(field)
        if not ok(value):
            raise ValueError(f"{path}: {field}={value!r} cannot be imported ({want})")
        return value

    need("hidden_act", lambda v: v in (None, "silu"), "mmar's MLP is SwiGLU (silu)")
    need("attention_bias", lambda v: not v, "mmar's attention has no biases")
    need("mlp_bias", lambda v: not v, "mmar's MLP has no biases")
    need("use_sliding_window", lambda v: not v, "mmar attends over the whole sequence")
    need("rope_scaling", lambda v: not v or v.get("rope_type", v.get("type")) == "default",
         "mmar's RoPE is the default (unscaled) one")
    need("rope_parameters", lambda v: not v or v.get("rope_type", "default") == "default",
         "mmar's RoPE is the default (unscaled) one")
    need("partial_rotary_factor", lambda v: v in (None, 1, 1.0), "mmar rotates all of head_dim")
    d, heads = hf_cfg.get("hidden_size"), hf_cfg.get("num_attention_heads")
    rope = hf_cfg.get("rope_parameters") or {}
    out = {
        "d_model": d, "n_layers": hf_cfg.get("num_hidden_layers"), "n_heads": heads,
        "n_kv_heads": hf_cfg.get("num_key_value_heads") or heads,
        "head_dim": hf_cfg.get("head_dim") or d // heads,
        "mlp_dim": hf_cfg.get("intermediate_size"),
        "rope_theta": float(rope.get("rope_theta") or hf_cfg.get("rope_theta") or 10000.0),
        "norm_eps": float(hf_cfg.get("rms_norm_eps", 1e-6)),
        "qk_norm": model_type == "qwen3", "qk_norm_kind": "rms", "norm_placement": "pre",
        "hf_class": "",
        "image_positions": "1d",   # transformers' classes: 1-D RoPE for every token
        "tie_embeddings": bool(hf_cfg.get("tie_word_embeddings", False)),
        "init_std": float(hf_cfg.get("initializer_range", 0.02)),
    }
    if model_type in unified.ARCHS:
        out.update(unified.model_fields(full, path))
    return out


def _config(hf_dir: pathlib.Path, base_cfg):
    """(mmar config, text vocabulary size, the model's vocab size in the checkpoint)."""
    hf_cfg_path = hf_dir / "config.json"
    hf_cfg = _read_json(hf_cfg_path) if hf_cfg_path.is_file() else None
    if (hf_dir / assets.MMAR_JSON).is_file() and (hf_dir / "mmar_config.json").is_file():
        # completed first: an export by an older mmar saved the flat names (mmar/schema.py)
        cfg = schema.complete(_read_json(hf_dir / "mmar_config.json"))
        if hf_cfg is not None:  # the transformers config is the source of truth for shapes
            cfg.model.update(model_section(hf_cfg, hf_cfg_path))
        return config_lib.validate(cfg), None, cfg.model.vocab_size
    if hf_cfg is None:
        raise FileNotFoundError(f"{hf_cfg_path}: missing (a transformers checkpoint has one)")
    if base_cfg is None:
        raise ValueError(f"{hf_dir} is not an mmar export: pass --config=configs/FILE.py:PRESET "
                         "for the image tokenizer, data and training sections")
    if unified.arch_of(hf_cfg) is not None:
        return _unified_config(hf_dir, hf_cfg, hf_cfg_path, base_cfg)
    text_size = hf_cfg.get("vocab_size")
    if not isinstance(text_size, int) or text_size <= 0:
        raise ValueError(f"{hf_cfg_path}: vocab_size={text_size!r} must be a positive int")
    cfg = ml_collections.ConfigDict(base_cfg.to_dict())
    tokenizer_json = hf_dir / text_lib.FILENAME
    if tokenizer_json.is_file():   # the model's own text tokenizer, its rows the text ids
        cfg.vocab.update(text_tokenizer=str(tokenizer_json.absolute()),
                         text_vocab_size=text_size)
    num_codes = derived.num_image_codes(cfg.image_tokenizer)
    # RandAR position ids follow the codes (mmar/vocab.py)
    positions = derived.codes_per_image(cfg) if config_lib.image_order(cfg) == "randar" else 0
    used = text_size + len(SPECIALS) + num_codes + positions
    cfg.model.update(model_section(hf_cfg, hf_cfg_path),
                     vocab_size=-(-used // PAD_MULTIPLE) * PAD_MULTIPLE)
    cfg.model.param_dtype = "float32"
    return config_lib.validate(cfg), text_size, text_size


def _unified_config(hf_dir, hf_cfg, hf_cfg_path, base_cfg):
    """Chameleon / Emu3: the checkpoint's vocabulary kept as it is (mmar/export/unified.py),
    its tokenizer.json the run's text tokenizer, its image tokenizer the run's."""
    tokenizer_json = hf_dir / text_lib.FILENAME
    if not tokenizer_json.is_file():
        raise FileNotFoundError(
            f"{tokenizer_json}: missing; mmar reads the model's text tokenizer from it (save "
            "one with transformers: AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR))")
    data = _read_json(tokenizer_json)
    strings = {t["content"]: int(t["id"]) for t in data.get("added_tokens") or []}
    if isinstance(data.get("model", {}).get("vocab"), dict):
        strings = {**data["model"]["vocab"], **strings}
    size = unified.text_config(hf_cfg).get("vocab_size")
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"{hf_cfg_path}: vocab_size={size!r} must be a positive int")
    vocab_fields, _ = unified.vocab_fields(hf_cfg, hf_cfg_path, strings, size)
    tok_fields, resolution = unified.image_tokenizer_fields(hf_cfg, hf_cfg_path)
    cfg = ml_collections.ConfigDict(base_cfg.to_dict())
    own = vocab_lib.ids_in_tokenizer_json(data)   # 0: exactly the file's ids
    cfg.vocab.update(text_tokenizer=str(tokenizer_json.absolute()),
                     text_vocab_size=0 if own == size else size, **vocab_fields)
    vq = tok_fields.pop("vq")
    cfg.image_tokenizer.update(tok_fields)
    cfg.image_tokenizer.vq.update(vq)
    if resolution:   # Chameleon's VQ-GAN was trained at one size (512)
        cfg.data.image_size = int(resolution)
    cfg.model.update(model_section(hf_cfg, hf_cfg_path), vocab_size=size,
                     param_dtype="float32")
    return config_lib.validate(cfg), None, size


def _abstract_params(model_cfg):
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices("cpu")[:1])
    return state_lib.create_abstract(lambda rngs: Decoder(model_cfg, rngs=rngs), mesh)[1]


def _name(path) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _extend_rows(w: np.ndarray, rows: int, std: float, rng) -> np.ndarray:
    """[V_text, E] -> [rows, E]: new rows at the mean row plus N(0, std) noise."""
    new = w.mean(0, keepdims=True) + rng.normal(0, std, (rows - len(w), w.shape[1]))
    return np.concatenate([w, new.astype(w.dtype)])


def load_params(hf_dir, base_cfg=None, seed: int = 0):
    """(mmar config, nested dict of float32 numpy params) from a transformers directory."""
    hf_dir = pathlib.Path(hf_dir)
    cfg, text_size, hf_vocab = _config(hf_dir, base_cfg)
    m = cfg.model
    tensors = st.SafetensorsDir(hf_dir)
    native = "embed.embedding" in tensors  # an mmar-layout (--format mmar) export
    dtype = np.dtype(m.param_dtype)
    rng = np.random.default_rng(seed)
    layers, hf_names = hf.hf_names(m)

    def get(name, shape):
        if name not in tensors:
            raise ValueError(f"{hf_dir}: tensor {name!r} missing")
        value = tensors.get(name)
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"{hf_dir}: tensor {name!r} has shape {tuple(value.shape)}, the "
                             f"config needs {tuple(shape)}")
        return value.astype(dtype)

    def load(path, leaf):
        name = _name(path)
        if native:
            return get(name, leaf.shape)
        if name in hf.LAYER_MAP:
            hf_name, kind = hf.LAYER_MAP[name]
            layer_shape = leaf.shape[1:]
            hf_shape = hf.to_hf(kind, np.empty(layer_shape, np.bool_)).shape
            return np.stack([hf.to_mmar(kind, get(f"{layers}{i}.{hf_name}", hf_shape),
                                        layer_shape) for i in range(m.n_layers)])
        if name not in hf.GLOBAL_MAP:
            raise ValueError(f"mmar parameter {name!r} has no transformers equivalent")
        kind = hf.GLOBAL_MAP[name][1]
        if name == "final_norm.scale":
            return get(hf_names[name], leaf.shape)
        rows = (hf_vocab, leaf.shape[1]) if name == "embed.embedding" else (hf_vocab, leaf.shape[0])
        value = get(hf_names[name], rows)  # both stored [vocab, embed] in transformers
        if text_size is not None:
            value = _extend_rows(value, m.vocab_size, m.init_std, rng)
        return value if kind == "copy" else value.T

    params = jax.tree_util.tree_map_with_path(load, _abstract_params(m))
    return cfg, params, text_size


def import_hf(hf_dir, out, base_cfg=None, *, step: int = 0, seed: int = 0,
              image_decoder=None, log=print):
    """Writes `<out>/decoder/checkpoints/<step>` (params + config), the layout that the
    mmar jobs and `mmar export` read; plus `<out>/decoder/vocab.json` (the id layout) and
    `<out>/config.json`. `image_decoder`: a Chameleon VQ-GAN converted by convert_vqgan,
    whose decoder the import adds (transformers' Chameleon holds the encoder only)."""
    if image_decoder is not None and not pathlib.Path(image_decoder).is_dir():
        raise FileNotFoundError(f"--image_decoder={image_decoder}: not a directory")
    cfg, params, text_size = load_params(hf_dir, base_cfg, seed)
    if image_decoder is not None:   # checked before anything is written
        unified.add_vq_decoder(image_decoder, hf_dir)
    out = pathlib.Path(out) / "decoder"
    ckpt = checkpoint_lib.Checkpointer(out / "checkpoints", async_save=False)
    try:
        if ckpt.latest_step() is not None:
            raise FileExistsError(f"{ckpt.directory} already holds a checkpoint; import into "
                                  "an empty run directory")
        ckpt.save(step, params=params, config=cfg, force=True)
    finally:
        ckpt.close()
    vocab = config_lib.make_vocab(cfg)
    text = vocab.text_size
    layout = {"text_size": text,
              "special_ids": dict(zip(SPECIALS, (vocab.pad, vocab.bos, vocab.eos, vocab.boi,
                                                 vocab.eoi))),
              "image_offset": vocab.image_offset,
              "num_image_codes": derived.num_image_codes(cfg.image_tokenizer),
              "vocab_size": cfg.model.vocab_size}
    (out / "vocab.json").write_text(json.dumps(layout, indent=1))
    # The config to train, sample and export from: --config=configs/run.py:<out>
    (out.parent / schema.RUN_CONFIG).write_text(cfg.to_json(indent=1))
    hf_cfg_path = pathlib.Path(hf_dir) / "config.json"
    if cfg.model.hf_class:
        # Chameleon / Emu3: their image tokenizer, and the config export writes back
        hf_cfg = _read_json(hf_cfg_path)
        (out / unified.HF_CONFIG).write_text(json.dumps(hf_cfg, indent=1))
        n_vq = unified.copy_vq_tensors(st.SafetensorsDir(hf_dir), hf_cfg, out.parent /
                                       "tokenizer" / unified.PRETRAINED_DIR)
        log(f"[import] {unified.ARCHS[cfg.model.hf_class].hf_class}: {n_vq} image tokenizer "
            f"tensors -> {out.parent / 'tokenizer' / unified.PRETRAINED_DIR}")
        if image_decoder is not None:
            n_dec = unified.add_vq_decoder(image_decoder, hf_dir,
                                           out.parent / "tokenizer" / unified.PRETRAINED_DIR)
            log(f"[import] the VQ-GAN decoder of {image_decoder}: {n_dec} tensors")
    kept = pathlib.Path(hf_dir) / text_lib.RUN_SUBDIR / text_lib.FILENAME
    if vocab_lib.text_kind(cfg.vocab) in vocab_lib.TRAINED_KINDS and kept.is_file():
        # an mmar export of a bpe / unigram run: its trained text tokenizer, as it was
        (out.parent / text_lib.RUN_SUBDIR).mkdir(exist_ok=True)
        shutil.copyfile(kept, out.parent / text_lib.RUN_SUBDIR / text_lib.FILENAME)
    n = sum(x.size for x in jax.tree.leaves(params))
    specials = (f"specials {list(layout['special_ids'].values())}" if cfg.vocab.special_ids
                else f"specials at {text}")
    log(f"[import] {hf_dir} -> {ckpt.directory}/{step} ({n:,} parameters, vocabulary "
        f"{cfg.model.vocab_size}: text {text}, {specials}, image codes at "
        f"{layout['image_offset']}); config: {out.parent / schema.RUN_CONFIG} "
        f"(--config=configs/run.py:{out.parent})")
    return ckpt.directory / str(step)
