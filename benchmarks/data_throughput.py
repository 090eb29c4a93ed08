r"""Input pipeline tokens/s beside the trainer's tokens/s consumption: ratio >= 1 or it starves.

    PYTHONPATH=. python benchmarks/data_throughput.py [--steps=200] [--workers=0]

Two settings:

- demo (`configs/t2i_shapes.py:tiny_flat`, the demo when the figures were taken): its
  pipeline (`decoder_batches`, one pair per row, and the same with `data.pack=True`) against a measured train step of the tiny
  decoder on this machine (jit, AdamW, the same batch).
- 1B per host: packed interleaved documents (text + 256-code images) at seq_len 4096 through
  the mixture pipeline, against what one host's accelerators consume at a stated MFU: a 1B
  step cannot run on a laptop CPU, so consumption is FLOPs-based (mmar/model/flops.py) and
  the assumption is printed. The pipeline figure is measured, per CPU process; the printed
  ratio uses the stated number of worker processes (Grain workers scale by process).

Images are random codes: tokenization is its own job (images are encoded once before
training), so this measures what the Grain pipeline itself costs per token.
"""
from __future__ import annotations

import argparse
import time

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx

from mmar import config as config_lib
from mmar.data import mixture, packing, pipeline, stories
from mmar.data.synthetic import ShapesSpec, make_examples
from mmar.model import flops
from mmar.model.transformer import Decoder
from mmar.train.loss import decoder_loss

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def pipeline_rate(it, steps: int):
    """(row-slot tokens/s, real-token share) over `steps` batches after one warm-up batch."""
    batch = next(it)
    t0, eff = time.perf_counter(), []
    for _ in range(steps):
        batch = next(it)
        eff.append(packing.efficiency(batch))
    dt = time.perf_counter() - t0
    return steps * batch["tokens"].size / dt, float(np.mean(eff))


def train_rate(model_cfg, batch, steps: int = 20) -> float:
    """Tokens/s of a jitted forward + backward + AdamW step on this machine."""
    model = Decoder(model_cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adamw(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        def loss(p):
            m = nnx.merge(graphdef, p)
            logits = m(batch["tokens"], batch["positions"], batch["segment_ids"])
            return decoder_loss(logits, batch)[0]
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    batch = {k: jax.numpy.asarray(v) for k, v in batch.items()}
    params, opt_state, v = step(params, opt_state, batch)
    v.block_until_ready()
    t0 = time.perf_counter()
    for _ in range(steps):
        params, opt_state, v = step(params, opt_state, batch)
    v.block_until_ready()
    return steps * batch["tokens"].size / (time.perf_counter() - t0)


def demo(steps: int, workers: int):
    cfg = config_lib.validate(config_lib.load(str(ROOT / "configs/t2i_shapes.py") + ":tiny_flat"))
    vocab = config_lib.make_vocab(cfg)
    spec = ShapesSpec.from_config(cfg.data)
    captions = [ex["caption"] for ex in make_examples(spec, "train", 2000)]
    rng = np.random.default_rng(0)
    source = pipeline.CaptionCodeSource(captions, rng.integers(0, vocab.num_image_codes,
                                                               (2000, 16)))
    data = cfg.data.copy_and_resolve_references()
    data.num_workers = workers
    b = cfg.train.batch_size
    it = pipeline.decoder_batches(source, vocab, data, global_batch=b, seed=0)
    rate, eff = pipeline_rate(it, steps)
    batch = next(it)
    data.pack = True
    packed_rate, packed_eff = pipeline_rate(
        pipeline.decoder_batches(source, vocab, data, global_batch=b, seed=0), steps)
    data.seq_len = 128
    _, eff128 = pipeline_rate(
        pipeline.decoder_batches(source, vocab, data, global_batch=b // 2, seed=0), steps)
    train = train_rate(cfg.model, batch)
    print(f"demo (tiny, batch {b} x seq {cfg.data.seq_len}, {workers} workers):")
    print(f"  pipeline, one pair per row : {rate:12,.0f} tokens/s  (real tokens {eff:.1%})")
    print(f"  pipeline, packed (seq 64)  : {packed_rate:12,.0f} tokens/s  "
          f"(real tokens {packed_eff:.1%}; seq 128: {eff128:.1%})")
    print(f"  trainer step (measured)    : {train:12,.0f} tokens/s")
    print(f"  ratio pipeline / trainer   : {rate / train:12.1f}  (packed: "
          f"{packed_rate / train:.1f})")


def one_b_model():
    """A Llama-style 1.2B decoder over bytes + an 8192-code image tokenizer (16x16 codes)."""
    return ml_collections.ConfigDict(dict(
        vocab_size=8576, d_model=2048, n_layers=16, n_heads=16, n_kv_heads=8, head_dim=128,
        mlp_dim=8192, rope_theta=10000.0, qk_norm=True, tie_embeddings=False, norm_eps=1e-5,
        dtype="bfloat16", param_dtype="float32", remat="full", init_std=0.02))


def one_b(steps: int, workers: int, *, seq_len=4096, host_batch=16, chips=4,
          peak=459e12, mfu=0.5, cpu_workers=32):
    from mmar.vocab import Vocab
    vocab = Vocab(256, 8192)
    spec = ShapesSpec()
    rng = np.random.default_rng(0)
    docs = []
    for story in stories.make_stories(spec, 300, min_images=1, max_images=6):
        docs.append({"kind": "document", "segments": story["segments"],
                     "codes": rng.integers(0, 8192, (len(story["images"]), 256))})
    caps = [{"kind": "caption", "segments": [{"text": ex["caption"]}, {"image": 0}],
             "codes": rng.integers(0, 8192, (1, 256))} for ex in make_examples(spec, "train", 300)]
    data = ml_collections.ConfigDict(dict(
        seq_len=seq_len, i2t_fraction=0.5, caption_dropout=0.1, loss_weight_text=1.0,
        loss_weight_image=1.0, pack_bins=host_batch, oversize="split", max_bad_fraction=0.01,
        num_workers=workers))
    it = mixture.document_batches(
        [mixture.DocumentCodeSource(docs), mixture.DocumentCodeSource(caps)], [0.5, 0.5],
        vocab, data, global_batch=host_batch, seed=0, process_index=0, process_count=1)
    rate, eff = pipeline_rate(it, max(steps // 20, 5))
    per_process = rate / max(workers, 1)
    model = one_b_model()
    fpt = flops.flops_per_token(model, seq_len)
    consume = chips * peak * mfu / fpt
    print(f"1B per host (batch {host_batch} x seq {seq_len}, packed stories + captions, "
          f"{workers} workers here):")
    print(f"  pipeline (measured)        : {rate:12,.0f} tokens/s  (real tokens {eff:.1%}; "
          f"{per_process:,.0f} per process)")
    print(f"  trainer (FLOPs-based)      : {consume:12,.0f} tokens/s  ({chips} chips x "
          f"{peak / 1e12:.0f} TFLOP/s x MFU {mfu}, {fpt / 1e9:.1f} GFLOP/token)")
    print(f"  ratio, 1 process           : {per_process / consume:12.2f}")
    print(f"  ratio, {cpu_workers} worker processes : {cpu_workers * per_process / consume:8.2f}"
          f"  (assumes linear scaling over Grain workers on a many-core host)")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--workers", type=int, default=0)
    a = p.parse_args()
    demo(a.steps, a.workers)
    one_b(a.steps, a.workers)


if __name__ == "__main__":
    main()
