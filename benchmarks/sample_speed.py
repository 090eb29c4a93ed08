"""Image sampling speed: mmar's KV-cache sampler vs the same model without a cache vs
Hugging Face transformers' `generate` on the exported weights (same CPU, same batch).

    PYTHONPATH=. python benchmarks/sample_speed.py                       # demo `tiny` shape
    PYTHONPATH=. python benchmarks/sample_speed.py --d_model=512 --n_layers=8 --codes=256

Random weights (speed does not depend on them), saved as an Orbax checkpoint and exported
with `mmar.export.hf.export` exactly as `mmar export` does; transformers loads that
directory. Every sampler draws `--codes` image codes per caption prompt (temperature 1, no
top-k, codes only), batch `--batch`. Prints image tokens/s, images/s and the ratios; each
figure is the best of `--repeats` timed runs after one warm-up (compilation excluded).
`--cfg=S` also times mmar with classifier-free guidance (twice the rows in one batch).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmar import config as config_lib  # noqa: E402
from mmar.model.transformer import Decoder  # noqa: E402
from mmar.parallel import mesh as mesh_lib  # noqa: E402
from mmar.sample.core import left_pad, sample_logits  # noqa: E402
from mmar.sample.plain import Sampler  # noqa: E402
from mmar.train import checkpoint as checkpoint_lib  # noqa: E402
from mmar.train import state as state_lib  # noqa: E402


def best_time(fn, repeats):
    fn()  # warm-up: compilation / first-call costs
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def no_cache_sampler(model_state, vocab, rows, steps):
    """The same model and sampling, but every step reruns the full forward over the static
    [B, prompt + steps] buffer (no KV cache) and reads the logits at the current slot."""
    allowed = jnp.asarray((np.arange(rows) >= vocab.image_offset)
                          & (np.arange(rows) < vocab.image_offset + vocab.num_image_codes))

    @jax.jit
    def run(params, tokens, positions, segments, key):
        b, p = tokens.shape
        buf = jnp.concatenate([tokens, jnp.full((b, steps), vocab.pad, jnp.int32)], 1)
        pos = jnp.concatenate([positions, positions[:, -1:] + 1 + jnp.arange(steps)[None]], 1)
        seg = jnp.concatenate([segments, jnp.ones((b, steps), jnp.int32)], 1)
        ones = jnp.ones((b,))

        def body(buf, xs):
            t, k = xs
            logits = model_state.merge(params)(buf, pos, seg)
            last = jax.lax.dynamic_index_in_dim(logits, p - 1 + t, 1, keepdims=False)
            tok = sample_logits(last, jnp.broadcast_to(allowed, last.shape), k, ones,
                                jnp.zeros((b,), jnp.int32), ones)
            return jax.lax.dynamic_update_index_in_dim(buf, tok, p + t, 1), tok

        _, out = jax.lax.scan(body, buf, (jnp.arange(steps), jax.random.split(key, steps)))
        return out.T

    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs/t2i_shapes.py") + ":tiny")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--codes", type=int, default=0, help="codes per image (0 = the config's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("--no_transformers", action="store_true")
    for field in ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_dim"):
        ap.add_argument(f"--{field}", type=int, default=0)
    args = ap.parse_args(argv)

    cfg = config_lib.load(args.config)
    with cfg.unlocked():
        for field in ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_dim"):
            if getattr(args, field):
                cfg.model[field] = getattr(args, field)
        cfg.sample.update(temperature_image=1.0, top_k_image=0, cfg_scale_image=1.0)
    cfg = config_lib.validate(cfg)
    vocab = config_lib.make_vocab(cfg)
    n = args.codes or (cfg.data.image_size // cfg.image_tokenizer.downsample) ** 2
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    make = lambda r: Decoder(cfg.model, rngs=r)  # noqa: E731
    model_state, params = state_lib.create(make, mesh, seed=0)
    rng = np.random.default_rng(0)
    captions = [list(rng.integers(97, 123, rng.integers(12, 40))) for _ in range(args.batch)]
    prompts = [[vocab.bos, *c, vocab.boi] for c in captions]
    print(f"model {cfg.model.d_model}d x {cfg.model.n_layers} layers "
          f"({sum(x.size for x in jax.tree.leaves(params)):,} params), batch {args.batch}, "
          f"{n} codes per image, prompts {min(map(len, prompts))}-{max(map(len, prompts))} "
          f"tokens, {jax.devices()[0].platform}")
    results = {}

    sampler = Sampler(model_state, vocab, cfg.model.vocab_size, cfg.sample)
    key = jax.random.key(0)
    results["mmar KV cache"] = best_time(
        lambda: sampler.images(params, captions, n, key), args.repeats)
    if args.cfg != 1.0:
        results[f"mmar KV cache, CFG {args.cfg:g}"] = best_time(
            lambda: sampler.images(params, captions, n, key, cfg_scale_image=args.cfg),
            args.repeats)
    run = no_cache_sampler(model_state, vocab, cfg.model.vocab_size, n)
    tokens, positions, segments = left_pad(prompts, vocab.pad)
    results["mmar no cache"] = best_time(
        lambda: np.asarray(run(params, tokens, positions, segments, key)), args.repeats)

    if not args.no_transformers:
        results["transformers generate"] = transformers_time(cfg, params, vocab, prompts, n,
                                                             mesh, make, args.repeats)
    base = results["mmar KV cache"]
    print("\n| sampler | image tokens/s | images/s | KV-cache mmar is faster by |")
    print("| --- | --- | --- | --- |")
    for name, sec in results.items():
        print(f"| {name} | {args.batch * n / sec:,.0f} | {args.batch / sec:,.1f} | "
              f"{sec / base:.2f}x |")


def transformers_time(cfg, params, vocab, prompts, n, mesh, make, repeats):
    import torch
    import transformers

    from mmar.export import hf
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        abstract_state, _ = state_lib.create_abstract(make, mesh)
        placed = jax.tree.map(jax.device_put, params, abstract_state.shardings)
        ckpt = checkpoint_lib.Checkpointer(tmp / "decoder" / "checkpoints", async_save=False)
        ckpt.save(1, params=placed, config=cfg, force=True)
        ckpt.close()
        hf.export(tmp / "decoder" / "checkpoints" / "1", tmp / "hf", log=lambda *_: None)
        model = transformers.AutoModelForCausalLM.from_pretrained(tmp / "hf",
                                                                  dtype=torch.float32).eval()
    length = max(map(len, prompts))
    ids = torch.full((len(prompts), length), vocab.pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, length - len(p):] = torch.tensor(p)
        mask[i, length - len(p):] = 1
    suppress = [i for i in range(cfg.model.vocab_size)
                if not vocab.image_offset <= i < vocab.image_offset + vocab.num_image_codes]

    def gen():
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                 do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 suppress_tokens=suppress, pad_token_id=vocab.pad)
        assert out.shape[1] == length + n
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    return best_time(gen, repeats)


if __name__ == "__main__":
    main()
