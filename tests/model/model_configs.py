"""The small decoder config that the model tests share (override any field by keyword)."""
import ml_collections


def tiny_cfg(**overrides):
    cfg = dict(vocab_size=48, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
               mlp_dim=24, rope_theta=10000.0, qk_norm=False, tie_embeddings=False,
               norm_eps=1e-5, dtype="float32", param_dtype="float32", remat="none",
               init_std=0.2)
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)
