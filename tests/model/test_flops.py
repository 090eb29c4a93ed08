"""mmar.model.flops: exact parameter counts and the FLOPs-per-token convention."""
import jax
import numpy as np
import pytest
from flax import nnx

from mmar.model import Decoder
from mmar.model import flops
from tests.helpers.model_configs import tiny_cfg


def cfg_of(**overrides):
    return tiny_cfg(**{"n_layers": 3, "init_std": 0.02, **overrides})


@pytest.mark.parametrize("qk_norm,tie", [(False, False), (True, True)])
def test_param_count_matches_the_model(qk_norm, tie):
    cfg = cfg_of(qk_norm=qk_norm, tie_embeddings=tie)
    model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))  # shapes only, no compute
    sizes = [np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
    assert flops.param_count(cfg) == sum(sizes)


def test_flops_per_token_by_hand():
    cfg = cfg_of(d_model=64, n_layers=2, n_heads=8, n_kv_heads=2, head_dim=16, mlp_dim=128,
                 vocab_size=256, tie_embeddings=True)
    q_o = 2 * 64 * 8 * 16           # q and o: d_model x heads x head_dim each
    k_v = 2 * 64 * 2 * 16           # k and v: d_model x kv_heads x head_dim each
    mlp = 3 * 64 * 128
    head = 64 * 256                 # tied or not, the output projection is a matmul
    matmul_params = 2 * (q_o + k_v + mlp) + head
    attention = 6 * 2 * 512 * 8 * 16  # 12 * L * S * H * D, halved for causal
    assert flops.flops_per_token(cfg, 512) == 6 * matmul_params + attention
    assert flops.forward_flops_per_token(cfg, 512) == (6 * matmul_params + attention) / 3
