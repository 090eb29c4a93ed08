"""Random-weight mmar runs on disk (no training): the decoder and image tokenizer checkpoints
that `mmar export` reads, written from a 1-device or a sharded mesh."""
from __future__ import annotations

import pathlib

import jax
import numpy as np

from mmar import config as config_lib
from mmar.model.transformer import Decoder
from mmar.parallel import mesh as mesh_lib
from mmar.tokenizers.image import autoencoder
from mmar.train import checkpoint as checkpoint_lib
from mmar.train import state as state_lib
from tests.helpers import text_tokenizers

ROOT = pathlib.Path(__file__).resolve().parents[2]


def make_config(**model):
    """The `test` preset with model overrides; init_std 0.1 spreads the logits so that greedy
    choices are far from ties."""
    cfg = config_lib.load(str(ROOT / "configs/t2i_shapes.py") + ":test")
    with cfg.unlocked():
        cfg.model.update(dict(init_std=0.1, **model))
    return config_lib.validate(cfg)


def one_device_mesh():
    return mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])


def random_params(make_module, seed=0):
    """Numpy params: the initialiser's, with every leaf (norm scales too) perturbed so that a
    wrong mapping of any tensor shows in the logits."""
    _, params = state_lib.create(make_module, one_device_mesh(), seed)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: np.asarray(x) + rng.normal(0, 0.05, x.shape).astype(x.dtype),
                        params)


def save(directory, make_module, params, cfg, mesh, step):
    """Saves numpy `params` placed on `mesh` with the model's logical shardings."""
    model_state, _ = state_lib.create_abstract(make_module, mesh)
    placed = jax.tree.map(jax.device_put, params, model_state.shardings)
    ckpt = checkpoint_lib.Checkpointer(directory, async_save=False)
    ckpt.save(step, params=placed, config=cfg, force=True)
    ckpt.close()


def decoder_module(cfg):
    return lambda rngs: Decoder(cfg.model, rngs=rngs)


def tokenizer_module(cfg):
    return lambda rngs: autoencoder.Autoencoder(cfg.image_tokenizer, rngs=rngs)


def write_run(workdir, cfg, mesh=None, seed=0):
    """`<workdir>/decoder/checkpoints/5` and `<workdir>/tokenizer/checkpoints/3` (and the
    trained text tokenizer a bpe / unigram config needs); returns the decoder params
    (numpy)."""
    workdir = pathlib.Path(workdir)
    text_tokenizers.install(workdir, cfg)
    mesh = mesh or one_device_mesh()
    params = random_params(decoder_module(cfg), seed)
    save(workdir / "decoder" / "checkpoints", decoder_module(cfg), params, cfg, mesh, 5)
    tok = random_params(tokenizer_module(cfg), seed + 1)
    save(workdir / "tokenizer" / "checkpoints", tokenizer_module(cfg), tok, cfg,
         one_device_mesh(), 3)
    return params


def mmar_logits(cfg, params, tokens):
    """mmar's forward on unpacked rows (positions 0..S-1, one segment)."""
    model = state_lib.create_abstract(decoder_module(cfg), one_device_mesh())[0].merge(params)
    b, s = tokens.shape
    positions = np.broadcast_to(np.arange(s, dtype=np.int32), (b, s))
    return np.asarray(model(tokens, positions, np.ones((b, s), np.int32)))


def save_llm(directory, qwen3: bool, tied: bool = False, text_vocab: int = 300):
    """A random transformers text LLM, every weight perturbed, saved as safetensors."""
    import torch
    import transformers
    kw = dict(vocab_size=text_vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
              tie_word_embeddings=tied, max_position_embeddings=128)
    config = transformers.Qwen3Config(**kw) if qwen3 else transformers.LlamaConfig(**kw)
    cls = transformers.Qwen3ForCausalLM if qwen3 else transformers.LlamaForCausalLM
    torch.manual_seed(0)
    model = cls(config).float()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(directory)
    return model
