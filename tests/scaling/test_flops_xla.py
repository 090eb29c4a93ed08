"""flops.flops_per_token against XLA's own count of the compiled forward + backward pass.

What is compared: `cost_analysis()["flops"]` of `jax.jit(value_and_grad(decoder loss))` on a
[batch, seq] batch, against `flops_per_token(cfg, seq) * batch * seq`. XLA counts every
matmul as 2*m*n*k and also counts elementwise work (softmax, norms, SwiGLU, the loss) at
about one FLOP per element, and it computes the full (not causally halved) q.k^T and p.v.
The config is chosen so that the weight matmuls dominate (d_model 256, short rows), which is
the regime the 6N-style convention describes; there the two agree within 10% (seen: XLA
counts 2.7% and 3.5% more, its elementwise work).

One layer: the blocks run under `nnx.scan`, a while loop, and XLA's cost analysis counts a
loop body once whatever its trip count (seen: the same 1.42e9 FLOPs for 1, 2 and 3 layers),
so a deeper model would be undercounted by XLA, not by us. `flops_per_token` is linear in
`n_layers` by construction (tests/model/test_flops.py checks the per-layer terms by hand).
"""
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from mmar.model import flops
from mmar.model.transformer import Decoder
from mmar.train import loss as loss_lib
from tests.helpers.model_configs import tiny_cfg


def xla_training_flops(cfg, batch: int, seq: int) -> float:
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    rows = {"tokens": jnp.zeros((batch, seq), jnp.int32),
            "positions": jnp.broadcast_to(jnp.arange(seq), (batch, seq)),
            "segment_ids": jnp.ones((batch, seq), jnp.int32),
            "modality": jnp.zeros((batch, seq), jnp.int32),
            "loss_weights": jnp.ones((batch, seq), jnp.float32)}

    def loss(p, b):
        logits = nnx.merge(graphdef, p)(b["tokens"], b["positions"], b["segment_ids"])
        return loss_lib.decoder_loss(logits, b)[0]

    compiled = jax.jit(jax.value_and_grad(loss)).lower(params, rows).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis["flops"])


@pytest.mark.parametrize("shape", [dict(d_model=256, n_layers=1, n_heads=8, n_kv_heads=4,
                                        head_dim=32, mlp_dim=768),
                                   dict(d_model=192, n_layers=1, n_heads=6, n_kv_heads=6,
                                        head_dim=32, mlp_dim=512)])
def test_flops_per_token_matches_xla_cost_analysis(shape):
    cfg = tiny_cfg(vocab_size=384, **shape)
    batch, seq = 4, 64
    ours = flops.flops_per_token(cfg, seq) * batch * seq
    xla = xla_training_flops(cfg, batch, seq)
    print(f"ours {ours:.4g} xla {xla:.4g} ratio {xla / ours:.3f}")
    assert abs(xla / ours - 1) < 0.10


def test_non_embedding_params_and_mot_hook():
    cfg = tiny_cfg(vocab_size=384, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                   head_dim=16, mlp_dim=128)
    assert flops.param_count(cfg) - flops.non_embedding_param_count(cfg) == 2 * 384 * 64
    mot = tiny_cfg(**{**cfg.to_dict(), "mot": {"enabled": True}})
    # MoT copies every block weight per modality; the final norm (d_model) stays shared.
    blocks = flops.non_embedding_param_count(cfg) - 64
    assert flops.non_embedding_param_count(mot) == 2 * blocks + 64
    assert flops.flops_per_token(mot, 64) == flops.flops_per_token(cfg, 64)
