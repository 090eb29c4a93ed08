"""Image sampling speed: mmar's KV-cache sampler against Hugging Face transformers' `generate`
on the same weights, timed alternately in one process.

    PYTHONPATH=. python benchmarks/sample_speed.py

(the whole table of docs/performance.md: the demo's `tiny` shape and the 25.7M shape, batch
1 and 8, 64 and 256 codes per image, 5 interleaved repeats; `--shapes`, `--batches`,
`--codes`, `--repeats` narrow or widen it.)

Random weights (speed does not depend on them) are saved as an Orbax checkpoint and exported
with `mmar.export.hf.export` exactly as `mmar export` does; transformers loads that directory.
Both sides draw `codes` image codes after each left-padded caption prompt (`<bos> caption
<boi>`), temperature 1, no top-k / top-p, codes only (`suppress_tokens` for transformers,
the image-code constraint for mmar), float32, batch B.

Why interleaved: on a shared machine the speed of either side drifts by tens of percent
within minutes. Each cell warms both samplers up (compilation, first calls), then times
them alternately `--repeats` times (mmar first on even repeats, transformers first on odd
ones), and reports the median and the spread (min-max) of each, and the median of the
per-pair ratios, with the 1-minute load average (`os.getloadavg`) before and after the
cell. The threads each side may use are printed once: torch's intra-op threads, and XLA:CPU's
(its Eigen pool spans the cores this process may run on, unless XLA_FLAGS says otherwise).
`--check` also compares greedy draws (temperature 0) of both sides on the same prompts: the
same model should give (nearly) the same codes.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmar import config as config_lib  # noqa: E402
from mmar.model.transformer import Decoder  # noqa: E402
from mmar.parallel import mesh as mesh_lib  # noqa: E402
from mmar.sample.plain import Sampler  # noqa: E402
from mmar.train import checkpoint as checkpoint_lib  # noqa: E402
from mmar.train import state as state_lib  # noqa: E402

FIELDS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_dim")
# Model shapes by name: the config's own (`tiny` with the default config) and the 25.7M one.
SHAPES = {"tiny": {}, "25m": dict(d_model=512, n_layers=8, n_heads=8, n_kv_heads=4,
                                  head_dim=64, mlp_dim=1536)}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict, repeats: int) -> dict:
    """Seconds per call of each function, timed alternately (the order rotates per repeat),
    after one warm-up call each."""
    for fn in fns.values():
        fn()
    names, times = list(fns), {name: [] for name in fns}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(timed(fns[name]))
    return times


def thread_report() -> str:
    import torch
    cores = len(os.sched_getaffinity(0))
    return (f"threads: torch intra-op {torch.get_num_threads()}, inter-op "
            f"{torch.get_num_interop_threads()}; XLA:CPU Eigen pool over {cores} cores "
            f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}); {os.cpu_count()} CPUs")


def build(args, shape: str):
    cfg = config_lib.load(args.config)
    with cfg.unlocked():
        for field, value in SHAPES[shape].items():
            cfg.model[field] = value
        for field in FIELDS:
            if getattr(args, field):
                cfg.model[field] = getattr(args, field)
        cfg.sample.update(temperature_image=1.0, top_k_image=0, top_p_image=1.0,
                          cfg_scale_image=1.0)
        if cfg.vocab.text_tokenizer != "bytes":
            # random weights and random caption ids: a trained text tokenizer (the `test`
            # preset's BPE) changes nothing measured here, and there is none to export
            cfg.vocab.text_tokenizer, cfg.model.vocab_size = "bytes", 0
    cfg = config_lib.validate(cfg)
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    make = lambda r: Decoder(cfg.model, rngs=r)  # noqa: E731
    model_state, params = state_lib.create(make, mesh, seed=0)
    return cfg, mesh, make, model_state, params


def export_to_transformers(cfg, mesh, make, params, tmp: pathlib.Path):
    """The same weights through `mmar export`'s path, loaded by transformers (float32)."""
    import torch
    import transformers

    from mmar.export import hf
    abstract_state, _ = state_lib.create_abstract(make, mesh)
    placed = jax.tree.map(jax.device_put, params, abstract_state.shardings)
    ckpt = checkpoint_lib.Checkpointer(tmp / "decoder" / "checkpoints", async_save=False)
    ckpt.save(1, params=placed, config=cfg, force=True)
    ckpt.close()
    hf.export(tmp / "decoder" / "checkpoints" / "1", tmp / "hf", log=lambda *_: None)
    return transformers.AutoModelForCausalLM.from_pretrained(tmp / "hf",
                                                             dtype=torch.float32).eval()


def transformers_generate(model, vocab, vocab_rows, prompts, n, greedy=False):
    """transformers' `generate` of n codes after each prompt (left-padded), codes only."""
    import torch
    length = max(map(len, prompts))
    ids = torch.full((len(prompts), length), vocab.pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, length - len(p):] = torch.tensor(p)
        mask[i, length - len(p):] = 1
    lo, hi = vocab.image_offset, vocab.image_offset + vocab.num_image_codes
    suppress = [i for i in range(vocab_rows) if not lo <= i < hi]
    sampling = (dict(do_sample=False) if greedy else
                dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0))

    def gen():
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                 suppress_tokens=suppress, pad_token_id=vocab.pad, **sampling)
        assert out.shape[1] == length + n, out.shape
        return out[:, length:].numpy() - lo
    return gen


def cell_row(shape, params_count, batch, n, times, load) -> str:
    """One markdown row: tokens/s median [min-max] of each side, ratio, load."""
    def rate(sec):
        med = statistics.median(sec)
        return (f"{batch * n / med:,.0f} [{batch * n / max(sec):,.0f}-"
                f"{batch * n / min(sec):,.0f}]")
    mm, hf = times["mmar"], times["transformers"]
    pairs = sorted(h / m for m, h in zip(mm, hf))
    return (f"| {shape} ({params_count / 1e6:.1f}M) | {batch} | {n} | {rate(mm)} | {rate(hf)} | "
            f"**{statistics.median(hf) / statistics.median(mm):.2f}x** "
            f"[{pairs[0]:.2f}-{pairs[-1]:.2f}] | {load[0]:.2f} / {load[1]:.2f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs/t2i_shapes.py") + ":tiny_flat")
    ap.add_argument("--shapes", default="tiny,25m", help=f"comma list of {sorted(SHAPES)}")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--codes", default="64,256", help="codes per image")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--check", action="store_true", help="also compare greedy draws")
    for field in FIELDS:
        ap.add_argument(f"--{field}", type=int, default=0, help="overrides the shape's")
    args = ap.parse_args(argv)
    import torch
    import transformers
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), transformers "
          f"{transformers.__version__}, torch {torch.__version__}; {thread_report()}")
    rows = []
    for shape in args.shapes.split(","):
        cfg, mesh, make, model_state, params = build(args, shape)
        vocab = config_lib.make_vocab(cfg)
        count = sum(x.size for x in jax.tree.leaves(params))
        print(f"{shape}: {cfg.model.d_model}d x {cfg.model.n_layers} layers, "
              f"{count:,} params, vocab {cfg.model.vocab_size}")
        sampler = Sampler(model_state, vocab, cfg.model.vocab_size, cfg.sample)
        with tempfile.TemporaryDirectory() as tmp:
            model = export_to_transformers(cfg, mesh, make, params, pathlib.Path(tmp))
        rng = np.random.default_rng(0)
        for batch in map(int, args.batches.split(",")):
            captions = [list(rng.integers(97, 123, rng.integers(12, 40))) for _ in range(batch)]
            prompts = [[vocab.bos, *c, vocab.boi] for c in captions]
            for n in map(int, args.codes.split(",")):
                key = jax.random.key(0)
                fns = {"mmar": lambda: sampler.images(params, captions, n, key),
                       "transformers": transformers_generate(model, vocab,
                                                             cfg.model.vocab_size, prompts, n)}
                if args.check:
                    ours = sampler.images(params, captions, n, key, temperature_image=0.0)[0]
                    theirs = transformers_generate(model, vocab, cfg.model.vocab_size,
                                                   prompts, n, greedy=True)()
                    print(f"  greedy check batch {batch}, {n} codes: "
                          f"{np.mean(ours == theirs):.3f} of the codes equal, first code "
                          f"{np.mean(ours[:, 0] == theirs[:, 0]):.3f}")
                load0 = os.getloadavg()[0]
                times = interleaved(fns, args.repeats)
                rows.append(cell_row(shape, count, batch, n, times, (load0, os.getloadavg()[0])))
                print(rows[-1], flush=True)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}; {args.repeats} interleaved repeats; "
          "image tokens/s, median [min-max]; ratio = transformers' median time / mmar's "
          "[min-max of the per-repeat ratios]; 1-min load average before / after\n")
    print("| model | batch | codes | mmar KV cache | transformers `generate` | mmar / "
          "transformers | load |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
