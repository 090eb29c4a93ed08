"""Tiny random transformers unified models (Chameleon with swin-norm, Emu3) saved as
transformers saves them, with a vocabulary map and a WordLevel tokenizer.json the tests make
up: the released models' form (named image tokens, contiguous ids in code order) at toy
size. The image tokenizers work on the `test` preset's 32-pixel images (8x downsample: a 4x4
grid of 64 codes)."""
from __future__ import annotations

import tokenizers
import torch
import transformers

VOCAB, CODES, IMAGE_AT = 128, 64, 40


def _letters(code: int) -> str:
    return "".join("ABCDEFGHIJ"[int(c)] for c in str(code))


def vocabulary(kind: str) -> dict[str, int]:
    """token -> id: specials, then the image tokens at IMAGE_AT.., the rest plain words."""
    names = {}
    if kind == "chameleon":
        specials = ["<unk>", "<s>", "</s>", "<pad>", "<racm3:break>", "<eoss>", "<image>"]
        code_name = "IMGIMG{}Z"
    else:
        specials = ["<|endoftext|>", "<|extra_203|>", "<|extra_204|>", "<|image start|>",
                    "<|image end|>", "<|image token|>", "<|extra_200|>", "<|extra_201|>",
                    "<image>"]
        code_name = "<|visual token {:06d}|>"
    for i, s in enumerate([*specials, "*", *"0123456789"]):   # Emu3 writes h*w as text
        names[s] = i
    for c in range(CODES):
        names[code_name.format(_letters(c) if kind == "chameleon" else c)] = IMAGE_AT + c
    for i in range(VOCAB):
        if i not in names.values():
            names[f"w{i}"] = i
    return names


def save_unified(directory, kind: str):
    """A random tiny Chameleon (swin-norm on) or Emu3 saved as transformers does, plus a
    WordLevel tokenizer.json holding the same ids."""
    names = vocabulary(kind)
    text = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                rms_norm_eps=1e-5)
    if kind == "chameleon":
        vq = dict(embed_dim=8, num_embeddings=CODES, latent_channels=8, resolution=32,
                  base_channels=32, channel_multiplier=[1, 1, 2, 2], num_res_blocks=1,
                  attn_resolutions=[])
        config = transformers.ChameleonConfig(**text, swin_norm=True, vq_config=vq,
                                              vocabulary_map=names, bos_token_id=1,
                                              eos_token_id=2, pad_token_id=3)
        cls = transformers.ChameleonForConditionalGeneration
    else:
        vq = dict(codebook_size=CODES, embed_dim=4, latent_channels=4, base_channels=32,
                  channel_multiplier=[1, 1, 1, 1], num_res_blocks=1, attn_resolutions=[],
                  hidden_size=32, num_attention_heads=1, temporal_downsample_factor=4)
        config = transformers.Emu3Config(
            text_config=dict(text, head_dim=8, bos_token_id=1, eos_token_id=2, pad_token_id=0),
            vq_config=vq, vocabulary_map=names)
        cls = transformers.Emu3ForConditionalGeneration
    torch.manual_seed(0)
    model = cls(config).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(directory)
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(names, unk_token=list(names)[0]))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.save(str(directory / "tokenizer.json"))
    return model


def save_converted_vqgan(directory, hf_dir):
    """What `python -m mmar.tokenizers.image.convert_vqgan` writes for the tiny Chameleon of
    `hf_dir`: its VQ-GAN's encoder and codebook as the checkpoint has them, plus a random
    decoder half (torch names and layouts), and the vq_config."""
    import json
    import pathlib

    import numpy as np
    from flax import nnx
    from safetensors.numpy import save_file

    from mmar.export import safetensors_io as st
    from mmar.tokenizers.image import chameleon_vqgan, chameleon_vqgan_weights

    directory, hf_dir = pathlib.Path(directory), pathlib.Path(hf_dir)
    vq = json.loads((hf_dir / "config.json").read_text())["vq_config"]
    src = st.SafetensorsDir(hf_dir)
    prefix = chameleon_vqgan.TRANSFORMERS_PREFIX
    tensors = {n[len(prefix):]: src.get(n) for n in src.keys() if n.startswith(prefix)}
    rng = np.random.default_rng(3)
    module = chameleon_vqgan.ChameleonVQGAN(vq, decoder=True, rngs=nnx.Rngs(3))
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        name = chameleon_vqgan_weights.torch_name(path)
        if name.startswith(("decoder.", "post_quant_conv.")):
            value = np.asarray(var[...], np.float32)
            value = value + rng.normal(0, 0.02, value.shape).astype(np.float32)
            tensors[name] = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(vq, indent=1))
