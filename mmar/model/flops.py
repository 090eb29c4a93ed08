"""Parameter count and FLOPs per token of the decoder, from its config alone.

Used for MFU in the trainer and benchmarks, and for compute budgets in scaling sweeps, so it
must not need a built model. A matmul of an [n, k] by a [k, m] matrix counts 2 * n * k * m
FLOPs (a multiply and an add); the backward pass costs twice the forward, so training costs
3x the forward. Norms, RoPE, softmax and activations are not counted (the usual convention:
they are a few percent and do not run on the matrix units).

LoRA (`model.lora.rank` > 0, model/lora.py) adds its adapters to the parameter count, and
its training FLOPs count what a LoRA step computes: the frozen weights' matmuls twice (the
forward and the gradient of their inputs; no weight gradient), attention and the adapters
three times.
"""
from __future__ import annotations


def _block_matmul_params(cfg) -> int:
    """Weights of one block that a token multiplies by: q, k, v, o and the three MLP mats."""
    d, hd = cfg.d_model, cfg.head_dim
    attn = d * hd * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
    return attn + 3 * d * cfg.mlp_dim


def block_copies(cfg) -> int:
    """Copies of every block weight: `model.mot.num_modalities` with Mixture-of-Transformers
    (`model.mot.enabled`), else 1. Parameters scale by it; FLOPs per token do not (a token is
    multiplied by its own modality's copy only). Embedding, final norm and head are shared."""
    return cfg.mot.num_modalities if cfg.mot.enabled else 1


def _lora_shapes(cfg) -> list[tuple[int, int]]:
    """(fan in, fan out) of every projection of one block that has LoRA adapters."""
    d, hd, m = cfg.d_model, cfg.head_dim, cfg.mlp_dim
    io = {"q": (d, cfg.n_heads * hd), "k": (d, cfg.n_kv_heads * hd),
          "v": (d, cfg.n_kv_heads * hd), "o": (cfg.n_heads * hd, d), "gate": (d, m),
          "up": (d, m), "down": (m, d)}
    return [io[t] for t in io if cfg.lora.rank and t in cfg.lora.targets]


def lora_param_count(cfg) -> int:
    """Parameters of the LoRA adapters (`model.lora`; 0 when rank is 0): rank x (in + out)
    per targeted projection and layer."""
    return cfg.n_layers * cfg.lora.rank * sum(i + o for i, o in _lora_shapes(cfg))


def non_embedding_param_count(cfg) -> int:
    """Parameters without the token embedding and the output head (Kaplan et al.'s N): the
    blocks and the final norm. Scaling fits use it because at small widths the embedding
    and head tables are most of the model while costing almost no FLOPs per parameter."""
    d = cfg.d_model
    # QK-norm: one RMSNorm scale [head_dim] each for q and k, or Chameleon's per-head
    # LayerNorms (a weight and a bias per query head and per kv head; layers.HeadLayerNorm)
    qk = (2 * cfg.head_dim if cfg.qk_norm_kind == "rms" else
          2 * (cfg.n_heads + cfg.n_kv_heads) * cfg.head_dim) if cfg.qk_norm else 0
    # swin-norm puts its two norms where pre-norm has them: the same count
    norms = 2 * d + qk
    blocks = cfg.n_layers * (_block_matmul_params(cfg) + norms) * block_copies(cfg)
    return blocks + d


def param_count(cfg) -> int:
    """Exact number of parameters of `Decoder(cfg)`, embeddings (and the head) included."""
    d = cfg.d_model
    scales = max(len(cfg.scale_layout) - 3, 0)      # next-scale: one embedding per scale
    embed = (cfg.vocab_size + cfg.num_targets + scales) * d  # + RAR's target table
    head = 0 if cfg.tie_embeddings else d * cfg.vocab_size
    return embed + non_embedding_param_count(cfg) + head + lora_param_count(cfg)


def forward_flops_per_token(cfg, seq_len: int) -> float:
    """Forward FLOPs per token at sequence length `seq_len`.

    Matmuls: 2 * (block matmul weights + the output head d_model x vocab; the embedding
    lookup is a gather, not a matmul, and the head counts whether or not it is tied).
    Attention: q.k^T and probs.v are each 2 * seq_len * head_dim FLOPs per head per token
    over the whole row, 4 * L * S * H * D in all, halved because a causal query sees on
    average half the row: 2 * L * S * H * D (the MaxText / PaLM convention).
    MoT (`model.mot.enabled`): the same as dense, each token pays for one copy (`block_copies`).
    Next-scale decoders (model/next_scale.py) add their input mix, a [S, S] x [S, d_model]
    product per row: 2 * S * d_model per token.
    """
    matmul = cfg.n_layers * _block_matmul_params(cfg) + cfg.d_model * cfg.vocab_size
    return float(2 * matmul + _row_mixing_flops(cfg, seq_len))


def _row_mixing_flops(cfg, seq_len: int) -> int:
    """Forward FLOPs per token that grow with the row: causal attention, 2 * L * S * H * D,
    and a next-scale decoder's input mix, 2 * S * d_model (`forward_flops_per_token`)."""
    attention = 2 * cfg.n_layers * seq_len * cfg.n_heads * cfg.head_dim
    return attention + (2 * seq_len * cfg.d_model if len(cfg.scale_layout) else 0)


def flops_per_token(cfg, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward):
    6 * (block matmul weights + d_model * vocab) + 6 * L * S * H * D (causal attention,
    12 * L * S * H * D / 2). With LoRA: 4 * (those weights) + 6 * L * S * H * D
    + 6 * (adapter weights): the frozen weights get no gradient of their own."""
    if not cfg.lora.rank:
        return 3 * forward_flops_per_token(cfg, seq_len)
    frozen = 2 * (cfg.n_layers * _block_matmul_params(cfg) + cfg.d_model * cfg.vocab_size)
    return float(2 * frozen + 3 * _row_mixing_flops(cfg, seq_len)
                 + 3 * 2 * lora_param_count(cfg))
