r"""The training step's matmuls and attention, one at a time: XLA (what mmar runs) vs PyTorch.

    PYTHONPATH=. python benchmarks/matmul_peer.py [--preset=25m] [--batch=2] [--seq=1024]
        [--rounds=7]

Why: `train_mfu.py` compares whole steps; this splits the step into the parts both sides
run with a library kernel, on the same shapes and threads, so a gap can be pinned on a
kernel rather than on mmar's code. For each weight of the 25M-class model (attention
projection, MLP up and down, output head) it times the three products of a training step:
forward `x @ w`, input gradient `dy @ w^T` and weight gradient `x^T @ dy` (XLA picks its
own kernel: YNNPACK or Eigen on CPU; PyTorch calls oneDNN/MKL), and the attention forward +
backward (mmar's `attend_blockwise` vs PyTorch's flash `scaled_dot_product_attention`).

Prints one row per product (GFLOP/s each side, PyTorch's time / XLA's) and a kernel step
ratio: the per-step time of all these products (weighted by how often each runs per
step), PyTorch's over XLA's. If every other op of mmar's step cost what PyTorch's does,
the whole-step ratio of `train_mfu.py --peer` would equal it. Float32, timings
interleaved, minimum over `--rounds` (shared machines add noise, never remove it).
"""
from __future__ import annotations

import argparse
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.train_mfu import interleaved_seconds
from mmar import schema
from mmar.model import attention

# (d_model, n_layers, n_heads, head_dim, mlp_dim, vocab): train_mfu.py's presets, MHA.
PRESETS = {"tiny": (64, 2, 4, 16, 128, 512), "25m": (512, 6, 8, 64, 1536, 16384)}


def matmul_cases(name, m, k, n, rng):
    """(xla, torch) callables for the three products of x [m, k] @ w [k, n]."""
    import torch
    x, w, dy = (rng.standard_normal(s, dtype=np.float32) for s in ((m, k), (k, n), (m, n)))
    jx, jw, jdy = map(jnp.asarray, (x, w, dy))
    tx, tw, tdy = map(torch.from_numpy, (x, w, dy))
    products = {"forward x@w": (jax.jit(lambda a, b: a @ b), (jx, jw), lambda: tx @ tw),
                "input grad dy@w^T": (jax.jit(lambda a, b: a @ b.T), (jdy, jw), lambda: tdy @ tw.T),
                "weight grad x^T@dy": (jax.jit(lambda a, b: a.T @ b), (jx, jdy),
                                       lambda: tx.T @ tdy)}
    for product, (fn, args, peer) in products.items():
        yield (f"{name} {product}", 2 * m * k * n,
               lambda fn=fn, args=args: fn(*args).block_until_ready(), peer)


def attention_case(batch, seq, heads, head_dim, rng):
    """(xla, torch) callables for causal attention forward + backward."""
    import torch
    q, k, v, do = (rng.standard_normal((batch, seq, heads, head_dim), dtype=np.float32)
                   for _ in range(4))
    segments = jnp.ones((batch, seq), jnp.int32)
    impl = attention.implementation(schema.complete(
        {"attention": "blockwise", "attention_block": 256}, section="model"))
    attn = functools.partial(impl, visible=impl.packed(segments))
    grad = jax.jit(lambda q, k, v, do: jax.vjp(attn, q, k, v)[1](do))
    jq, jk, jv, jdo = map(jnp.asarray, (q, k, v, do))
    tq, tk, tv = (torch.from_numpy(a.transpose(0, 2, 1, 3).copy()).requires_grad_()
                  for a in (q, k, v))
    tdo = torch.from_numpy(do.transpose(0, 2, 1, 3).copy())

    def peer():
        torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True).backward(tdo)

    # Causal: half of the 4 * B * H * S^2 * D forward FLOPs, 2.5x that forward + backward.
    flop = int(2.5 * 2 * batch * heads * seq * seq * head_dim)
    return ("attention fwd+bwd (blockwise vs SDPA flash)", flop,
            lambda: jax.block_until_ready(grad(jq, jk, jv, jdo)), peer)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="25m", choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    d, n_layers, heads, head_dim, mlp, vocab = PRESETS[args.preset]
    tokens, rng = args.batch * args.seq, np.random.default_rng(0)
    # (name, m, k, n, times per step): q, k, v, o are four [d, d] projections per layer.
    weights = [("attention projection", tokens, d, heads * head_dim, 4 * n_layers),
               ("MLP gate/up", tokens, d, mlp, 2 * n_layers),
               ("MLP down", tokens, mlp, d, n_layers),
               ("output head", tokens, d, vocab, 1)]
    rows, totals = [], {"xla": 0.0, "torch": 0.0}
    for name, m, k, n, per_step in weights:
        for label, flop, xla, peer in matmul_cases(name, m, k, n, rng):
            rows.append((label, flop, xla, peer, per_step))
    label, flop, xla, peer = attention_case(args.batch, args.seq, heads, head_dim, rng)
    rows.append((label, flop, xla, peer, n_layers))
    result = {"preset": args.preset, "batch": args.batch, "seq": args.seq, "rows": []}
    for label, flop, xla, peer, per_step in rows:
        t = interleaved_seconds({"xla": xla, "torch": peer}, args.rounds, reduce=min)
        for side in totals:
            totals[side] += per_step * t[side]
        row = {"op": label, "flop": flop, "xla_gflops": round(flop / t["xla"] / 1e9, 1),
               "torch_gflops": round(flop / t["torch"] / 1e9, 1),
               "torch_time_over_xla": round(t["torch"] / t["xla"], 3)}
        result["rows"].append(row)
        print(f"{label:48s} XLA {row['xla_gflops']:7.1f} GFLOP/s  PyTorch "
              f"{row['torch_gflops']:7.1f}  PyTorch time / XLA time {row['torch_time_over_xla']:.2f}",
              flush=True)
    result["kernel_step_ratio"] = round(totals["torch"] / totals["xla"], 3)
    print(f"per step: XLA {totals['xla']:.3f} s, PyTorch {totals['torch']:.3f} s in these ops -> "
          f"mmar / transformers on these ops {result['kernel_step_ratio']:.2f}x")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
