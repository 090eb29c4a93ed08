r"""Training-step speed and MFU of mmar's decoder, beside a peer on the same machine and shapes.

    PYTHONPATH=. python benchmarks/train_mfu.py [--preset=25m] [--batch=4] [--seq=1024]
        [--steps=5] [--peer] [--attention=xla] [--unroll_layers]

Measures, in one process and run:
- the peak: FLOP/s of a large jitted matmul in the model's compute dtype, measured now (on
  a GPU/TPU pass `--peak_tflops` with the vendor figure instead);
- mmar: the jitted train step (forward, backward, AdamW, the trainer's own step function)
  after a warm-up; median seconds per step over `--steps`; tokens/s, achieved FLOP/s from
  `mmar/model/flops.py`, MFU = achieved / peak;
- with `--peer`: Hugging Face transformers' `LlamaForCausalLM` with the same shapes
  (d_model, layers, heads, KV heads, MLP width, vocabulary, untied head, no QK-norm on
  either side) training in PyTorch on the CPU (forward, cross-entropy, backward,
  AdamW), median seconds per step; and the ratio mmar tokens/s / peer tokens/s. The two
  sides' steps are interleaved, so a busy machine slows both alike.

Both sides use float32 on CPU (PyTorch's CPU bfloat16 matmuls are not its fast path), the
same threads, and random token ids. Prints one JSON line at the end for docs/performance.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmar import schema
from mmar.model import flops
from mmar.model.transformer import Decoder
from mmar.parallel import mesh as mesh_lib
from mmar.train import loss as loss_lib
from mmar.train import optim, state
from mmar.train import step as step_lib
from mmar.train.decoder import BATCH_AXES

# (d_model, n_layers, n_heads, n_kv_heads, head_dim, mlp_dim, vocab_size)
PRESETS = {
    "tiny": (64, 2, 4, 2, 16, 128, 512),
    "25m": (512, 6, 8, 8, 64, 1536, 16384),
    "1b": (2048, 20, 16, 8, 128, 5632, 15744),
}


def model_config(preset: str, dtype: str, attention: str, attention_block: int = 512,
                 scan_layers: bool = True) -> ml_collections.ConfigDict:
    d, layers, heads, kv, hd, mlp, vocab = PRESETS[preset]
    return schema.complete(dict(
        vocab_size=vocab, d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=kv,
        head_dim=hd, mlp_dim=mlp, rope_theta=10000.0, qk_norm=False, tie_embeddings=False,
        norm_eps=1e-5, dtype=dtype, param_dtype="float32", remat="none", init_std=0.02,
        attention=attention, attention_block=attention_block, scan_layers=scan_layers),
        section="model")


def batch_arrays(batch: int, seq: int, vocab: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (batch, seq), dtype=np.int32)
    ones = np.ones((batch, seq), np.int32)
    return {"tokens": tokens, "positions": np.tile(np.arange(seq, dtype=np.int32), (batch, 1)),
            "segment_ids": ones, "modality": np.zeros_like(ones),
            "loss_weights": ones.astype(np.float32)}


def median_seconds(fn, steps: int) -> float:
    fn()                                      # compile / warm up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def mmar_step(cfg, batch: dict):
    """A callable that runs one mmar train step (jitted; the first call compiles)."""
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])

    def loss_fn(model, b):
        logits = model(b["tokens"], b["positions"], b["segment_ids"], b["modality"])
        return loss_lib.decoder_loss(logits, b)

    task = step_lib.Task("bench", lambda rngs: Decoder(cfg, rngs=rngs), loss_fn, BATCH_AXES)
    model_state, params = state.create(task.make_module, mesh, seed=0)
    tx = optim.make_optimizer(schema.complete(dict(
        lr=1e-4, warmup_steps=0, steps=1000, schedule="constant", weight_decay=0.1,
        grad_clip=0.0), section="train"))
    opt_state, opt_shardings = step_lib.init_optimizer(tx, params, mesh)
    train_step = step_lib.make_train_step(task, model_state, tx, mesh, model_state.shardings,
                                          opt_shardings)
    arrays = step_lib.global_batch(batch, step_lib.batch_shardings(task, mesh))
    holder = {"p": params, "o": opt_state}

    def run():
        holder["p"], holder["o"], metrics = train_step(holder["p"], holder["o"], arrays)
        jax.block_until_ready(metrics["loss"])

    return run


def peer_step(cfg, batch: dict):
    """transformers' Llama, same shapes, one PyTorch training step on the CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
        max_position_embeddings=batch["tokens"].shape[1], rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta, tie_word_embeddings=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(hf_cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    tokens = torch.from_numpy(batch["tokens"].astype(np.int64))

    def run():
        out = model(input_ids=tokens, labels=tokens)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run


def interleaved_seconds(fns: dict, steps: int, reduce=statistics.median) -> dict:
    """Seconds per call of each fn (`reduce` of its times: the median, or min), calls
    interleaved (a, b, a, b, ...) after one warm-up call each, so both sides see the same
    machine load on a shared machine."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: reduce(t) for name, t in times.items()}


def matmul_peak(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    a = jnp.ones((n, n), dtype)
    mm = jax.jit(lambda x: x @ x)
    return 2 * n ** 3 / median_seconds(lambda: mm(a).block_until_ready(), repeats)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="25m", choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--attention", default="xla")
    p.add_argument("--attention_block", type=int, default=512,
                   help="queries per block of `blockwise` (256 was fastest on a 2-core CPU)")
    p.add_argument("--unroll_layers", action="store_true",
                   help="model.scan_layers=False: unroll the layer scan")
    p.add_argument("--peer", action="store_true", help="also time transformers' Llama")
    p.add_argument("--peak_tflops", type=float, default=0.0,
                   help="vendor peak per device (GPU/TPU); 0 = measure a matmul now")
    args = p.parse_args(argv)

    cfg = model_config(args.preset, args.dtype, args.attention, args.attention_block,
                       scan_layers=not args.unroll_layers)
    batch = batch_arrays(args.batch, args.seq, cfg.vocab_size)
    tokens = args.batch * args.seq
    per_token = flops.flops_per_token(cfg, args.seq)
    peak = args.peak_tflops * 1e12 or matmul_peak(args.dtype)
    fns = {"mmar": mmar_step(cfg, batch)}
    if args.peer:
        fns["peer"] = peer_step(cfg, batch)
    measured = interleaved_seconds(fns, args.steps)
    seconds = measured["mmar"]
    result = {
        "device": jax.devices()[0].device_kind, "preset": args.preset,
        "parameters": flops.param_count(cfg), "batch": args.batch, "seq": args.seq,
        "dtype": args.dtype, "attention": args.attention, "scan_layers": cfg.scan_layers,
        "step_seconds": round(seconds, 4), "tokens_per_s": round(tokens / seconds, 1),
        "achieved_tflops": round(per_token * tokens / seconds / 1e12, 4),
        "peak_tflops": round(peak / 1e12, 4),
        "mfu": round(per_token * tokens / seconds / peak, 4),
    }
    print(f"mmar: {result['parameters']:,} params, batch {args.batch} x {args.seq}: "
          f"{seconds * 1e3:.0f} ms/step, {result['tokens_per_s']:,.0f} tokens/s, "
          f"MFU {100 * result['mfu']:.1f}% of a {result['peak_tflops']:.3f} TFLOP/s peak")
    if args.peer:
        peer = measured["peer"]
        result["peer_tokens_per_s"] = round(tokens / peer, 1)
        result["ratio_vs_transformers"] = round(peer / seconds, 3)
        print(f"transformers (PyTorch CPU): {peer * 1e3:.0f} ms/step, "
              f"{tokens / peer:,.0f} tokens/s -> mmar / transformers = "
              f"{result['ratio_vs_transformers']:.2f}x")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
