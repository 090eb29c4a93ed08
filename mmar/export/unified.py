"""transformers' unified models, Chameleon / Anole and Emu3, <-> mmar: what differs from Llama.

Both are Llama-layout decoders over one vocabulary in which image codes are named tokens,
so `mmar import` (mmar/export/import_hf.py) and `mmar export` (mmar/export/hf.py) reuse the
Llama weight mapping and add only what this module holds:

- **where the tensors are**: Chameleon keeps the decoder under `model.` (as Llama) and its
  image tokenizer under `model.vqmodel.`; Emu3 is saved in its released layout,
  `text_model.model.`, `text_model.lm_head` and `vqmodel.`.
- **the decoder options**: Chameleon's QK-norm is a LayerNorm with a weight and a bias per
  head (`model.qk_norm_kind='head_layernorm'`, tensors `q_norm.weight` / `q_norm.bias`
  [heads, head_dim]) and its 30B puts the norms after attention and the MLP (`swin_norm`:
  `model.norm_placement='swin'`); Emu3's text model is a plain Llama.
- **the vocabulary**: kept as the checkpoint has it (`vocab.special_ids`,
  `vocab.image_offset`, mmar/vocab.py `Vocab.pinned`). The config's `vocabulary_map`
  names the specials and the image tokens; the image tokens must be contiguous ids in code
  order (they are in the released models), the one form mmar's image ids take.
- **the image tokenizer**: its tensors and `vq_config` are copied as they are into
  WORKDIR/tokenizer/pretrained/ (`image_tokenizer.pretrained`), read by the JAX ports
  (mmar/tokenizers/image/chameleon_vqgan.py, emu3_vqvae.py) and written back by export.
- **the source config.json** is kept in WORKDIR/decoder/hf_config.json: export writes it
  back with the model's shapes, so the fine-tuned model loads in the class it came from.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re

import numpy as np

from mmar.export import safetensors_io as st

PRETRAINED_DIR = "pretrained"        # WORKDIR/tokenizer/pretrained/
HF_CONFIG = "hf_config.json"         # WORKDIR/decoder/hf_config.json


@dataclasses.dataclass(frozen=True)
class Arch:
    """One transformers class: its tensor prefix, its image tokenizer and image tokens."""
    model_type: str
    hf_class: str                # transformers class name
    prefix: str                  # the decoder's tensors: prefix + "layers.{i}." ...
    vq_kind: str                 # image_tokenizer.pretrained
    boi: str                     # vocabulary_map names of the image start / end tokens
    eoi: str
    code_name: re.Pattern        # an image token's name -> its code (group 1)
    head: str = "lm_head.weight"
    vq_prefix: str = "model.vqmodel."
    # Tokens of an image layout with rows (`vocab.emu3_layout_ids`, mmar/vocab.py): <eol>,
    # <eof>, <image token>, then the size's characters '*' '0'..'9'; () = codes only.
    layout_tokens: tuple = ()

    def code_of(self, name: str) -> int | None:
        match = self.code_name.fullmatch(name)
        if match is None:
            return None
        # Chameleon writes the code's digits as letters A-J ("IMGIMGBACZ" is code 102)
        digits = match.group(1).translate(str.maketrans("ABCDEFGHIJ", "0123456789"))
        return int(digits)


ARCHS = {
    "chameleon": Arch("chameleon", "ChameleonForConditionalGeneration", "model.",
                      "chameleon_vqgan", "<racm3:break>", "<eoss>",
                      re.compile(r"IMGIMG([A-J]+)Z")),
    # saved as the released checkpoints are (transformers maps the names on load)
    "emu3": Arch("emu3", "Emu3ForConditionalGeneration", "text_model.model.", "emu3_vqvae",
                 "<|image start|>", "<|image end|>",
                 re.compile(r"<\|visual token (\d+)\|>"), head="text_model.lm_head.weight",
                 vq_prefix="vqmodel.",
                 layout_tokens=("<|extra_200|>", "<|extra_201|>", "<|image token|>", "*",
                                *"0123456789")),
}


def arch_of(hf_cfg: dict) -> Arch | None:
    return ARCHS.get(hf_cfg.get("model_type"))


def text_config(hf_cfg: dict) -> dict:
    """The decoder's fields: Emu3 nests them in `text_config`, Chameleon does not."""
    return hf_cfg.get("text_config") or {} if hf_cfg.get("model_type") == "emu3" else hf_cfg


def model_fields(hf_cfg: dict, path) -> dict:
    """The mmar `model` fields that Chameleon / Emu3 set beyond Llama's."""
    arch = ARCHS[hf_cfg["model_type"]]
    fields = {"hf_class": arch.model_type, "qk_norm": False, "norm_placement": "pre"}
    if arch.model_type == "chameleon":
        d, heads = hf_cfg.get("hidden_size"), hf_cfg.get("num_attention_heads")
        fields.update(qk_norm=True, qk_norm_kind="head_layernorm", head_dim=d // heads,
                      norm_placement="swin" if hf_cfg.get("swin_norm") else "pre")
    return fields


def vocab_fields(hf_cfg: dict, path, tokenizer_vocab: dict[str, int] | None,
                 vocab_size: int) -> tuple[dict, int]:
    """({special_ids, image_offset[, emu3_layout_ids]}, number of image codes) from the
    config's `vocabulary_map`, checked against the tokenizer's own ids; ValueError naming
    the file and the token otherwise."""
    arch = ARCHS[hf_cfg["model_type"]]
    names = hf_cfg.get("vocabulary_map")
    if not isinstance(names, dict) or not names:
        raise ValueError(f"{path}: vocabulary_map missing (it names the image tokens)")

    def id_of(token, what):
        if token not in names:
            raise ValueError(f"{path}: vocabulary_map has no {token!r} ({what})")
        return int(names[token])

    text = text_config(hf_cfg)
    specials = []
    for field, what in (("pad_token_id", "<pad>"), ("bos_token_id", "<bos>"),
                        ("eos_token_id", "<eos>")):
        value = text.get(field)
        if field == "pad_token_id" and value is None:
            value = text.get("eos_token_id")   # Chameleon has none: pad with <eos>, masked
        if isinstance(value, list):
            value = value[0]
        if not isinstance(value, int) or not 0 <= value < vocab_size:
            raise ValueError(f"{path}: {field}={value!r} must be an id in [0, {vocab_size}) "
                             f"(mmar's {what})")
        specials.append(value)
    specials += [id_of(arch.boi, "the image start token"), id_of(arch.eoi, "the image end token")]
    codes = {}
    for name, i in names.items():
        code = arch.code_of(name)
        if code is not None:
            codes[code] = int(i)
    if not codes:
        raise ValueError(f"{path}: vocabulary_map names no image token (like "
                         f"{arch.code_name.pattern!r})")
    offset = codes.get(0, min(codes.values()))
    if sorted(codes) != list(range(len(codes))) or any(
            i != offset + c for c, i in codes.items()):
        raise ValueError(f"{path}: the image tokens of vocabulary_map are not contiguous ids "
                         "in code order (id = first id + code); mmar's image ids need that")
    if tokenizer_vocab is not None:
        for token, i in list(zip((arch.boi, arch.eoi), specials[3:])) + [
                (n, int(names[n])) for n in names if arch.code_of(n) in (0, len(codes) - 1)]:
            if tokenizer_vocab.get(token) != i:
                raise ValueError(f"{path}: vocabulary_map says {token!r} is id {i}, the "
                                 f"tokenizer.json beside it says {tokenizer_vocab.get(token)}")
    fields = {"special_ids": tuple(specials), "image_offset": offset}
    if arch.layout_tokens:   # Emu3: its size prefix and row ends, by the tokenizer's ids
        where = tokenizer_vocab if tokenizer_vocab is not None else names
        missing = [t for t in arch.layout_tokens if t not in where]
        if missing:
            raise ValueError(f"{path}: the tokenizer has no {missing[0]!r} (Emu3 writes an "
                             "image's size as text and ends its rows with <|extra_200|>)")
        fields["emu3_layout_ids"] = tuple(int(where[t]) for t in arch.layout_tokens)
    return fields, len(codes)


def image_tokenizer_fields(hf_cfg: dict, path) -> tuple[dict, int | None]:
    """(mmar `image_tokenizer` fields, the image size the tokenizer was trained at or None)
    from `vq_config`: a VQ of the checkpoint's codebook, used as it is."""
    arch = ARCHS[hf_cfg["model_type"]]
    vq = hf_cfg.get("vq_config") or {}
    mult = vq.get("channel_multiplier") or ((1, 1, 2, 2, 4) if arch.model_type == "chameleon"
                                            else (1, 2, 2, 4))
    size = vq.get("num_embeddings" if arch.model_type == "chameleon" else "codebook_size")
    dim = vq.get("embed_dim")
    if size is None or dim is None:
        raise ValueError(f"{path}: vq_config needs the codebook size and embed_dim")
    downsample = 2 ** (len(mult) - 1)
    fields = {"pretrained": arch.vq_kind, "quantizer": "vq", "arch": "conv",
              "downsample": downsample,
              "vq": {"codebook_size": int(size), "codebook_dim": int(dim)}}
    return fields, vq.get("resolution")


def copy_vq_tensors(tensors: st.SafetensorsDir, hf_cfg: dict, out_dir) -> int:
    """`model.vqmodel.*` -> out_dir/model.safetensors (prefix dropped, dtype and bytes as
    they are) + out_dir/config.json ({kind, vq_config}); returns the tensor count. A
    checkpoint without them (a text-only save) is a ValueError naming the prefix."""
    arch = ARCHS[hf_cfg["model_type"]]
    names = [n for n in tensors.keys() if n.startswith(arch.vq_prefix)]
    if not names:
        raise ValueError(f"the checkpoint has no {arch.vq_prefix}* tensors ({arch.hf_class}'s "
                         "image tokenizer)")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    planned = []
    for name in names:
        value = tensors.get(name)
        planned.append(st.Planned(name[len(arch.vq_prefix):], value.shape, value.dtype,
                                  lambda value=value: value))
    st.write_file(out_dir / "model.safetensors", planned)
    (out_dir / "config.json").write_text(json.dumps(
        {"kind": arch.vq_kind, "vq_config": hf_cfg.get("vq_config") or {}}, indent=1))
    return len(names)


DECODER_FILE = "decoder.safetensors"   # WORKDIR/tokenizer/pretrained/: Chameleon's decoder
# The VQ-GAN config fields that must agree between the transformers checkpoint and the
# converted release for the decoder to belong to the encoder.
_VQ_SHAPE_FIELDS = ("embed_dim", "num_embeddings", "latent_channels", "base_channels",
                    "channel_multiplier", "resolution")


def add_vq_decoder(converted_dir, hf_dir, out_dir=None) -> int:
    """Chameleon's decoder half (`decoder.*`, `post_quant_conv.*`) from a VQ-GAN converted by
    `python -m mmar.tokenizers.image.convert_vqgan` -> out_dir/decoder.safetensors, beside the
    encoder `copy_vq_tensors` wrote (out_dir None: only the checks, which the import runs
    before it writes anything). transformers' Chameleon holds the encoder only; images are
    drawn with the released VQ-GAN's decoder. Refused, naming the file, when the converted
    VQ-GAN is not the one of the checkpoint in `hf_dir` (another config, or another
    codebook). Returns the tensor count."""
    converted_dir, hf_dir = pathlib.Path(converted_dir), pathlib.Path(hf_dir)
    hf_cfg = json.loads((hf_dir / "config.json").read_text())
    if hf_cfg.get("model_type") != "chameleon":
        raise ValueError(f"--image_decoder={converted_dir}: only a Chameleon / Anole import "
                         "takes one (Emu3's checkpoint holds its decoder)")
    config_path = converted_dir / "config.json"
    try:
        converted = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{config_path}: cannot read the converted VQ-GAN's config ({e}); "
                         "write it with python -m mmar.tokenizers.image.convert_vqgan") from None
    vq = hf_cfg.get("vq_config") or {}
    for field in _VQ_SHAPE_FIELDS:
        if field in vq and field in converted and list(np.ravel(vq[field])) != list(
                np.ravel(converted[field])):
            raise ValueError(f"{config_path}: {field}={converted[field]!r}, the imported "
                             f"checkpoint's vq_config has {vq[field]!r}: not its VQ-GAN")
    tensors, encoder = st.SafetensorsDir(converted_dir), st.SafetensorsDir(hf_dir)
    codebook, theirs = "quantize.embedding.weight", ARCHS["chameleon"].vq_prefix
    if codebook in tensors and theirs + codebook in encoder and not np.array_equal(
            tensors.get(codebook).astype(np.float32),
            encoder.get(theirs + codebook).astype(np.float32)):
        raise ValueError(f"{converted_dir}: its codebook ({codebook}) differs from the imported "
                         "checkpoint's: the decoder of another VQ-GAN would draw other images")
    names = [n for n in tensors.keys() if n.startswith(("decoder.", "post_quant_conv."))]
    if not names:
        raise ValueError(f"{converted_dir}: no decoder.* tensors (a converted release has them)")
    if out_dir is None:
        return len(names)
    st.write_file(pathlib.Path(out_dir) / DECODER_FILE, [
        st.Planned(n, tensors.shape(n), tensors.dtype(n), lambda n=n: tensors.get(n))
        for n in names])
    return len(names)


def vq_plan(pretrained_dir, arch: Arch) -> list[st.Planned]:
    """The image tokenizer's tensors to write back under `model.vqmodel.`: the ones the
    transformers class holds (Chameleon's has no decoder: the released VQ-GAN's decoder
    weights, in DECODER_FILE when the import added them, stay out)."""
    tensors = st.SafetensorsDir(pretrained_dir)
    plan = []
    for name in tensors.keys():
        if arch.model_type == "chameleon" and name.startswith("decoder."):
            continue
        plan.append(st.Planned(arch.vq_prefix + name, tensors.shape(name), tensors.dtype(name),
                               lambda name=name: tensors.get(name)))
    return plan


def hf_config(template: dict, cfg, dtype: str) -> dict:
    """The imported config.json with the model's shapes and ids as the run has them (a
    fine-tune changes neither: this is a check as much as a copy)."""
    out = json.loads(json.dumps(template))
    m = cfg.model
    text = out["text_config"] if out.get("model_type") == "emu3" else out
    text.update(vocab_size=m.vocab_size, hidden_size=m.d_model, intermediate_size=m.mlp_dim,
                num_hidden_layers=m.n_layers, num_attention_heads=m.n_heads,
                num_key_value_heads=m.n_kv_heads, rms_norm_eps=m.norm_eps,
                tie_word_embeddings=bool(m.tie_embeddings))
    out["dtype"] = dtype
    return out
