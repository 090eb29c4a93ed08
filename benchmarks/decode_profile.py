"""Where a sampler's time goes: the plain KV-cache sampler's compiled program, profiled op by
op and summed by the line of mmar code each op comes from.

    PYTHONPATH=. python benchmarks/decode_profile.py [--shape=25m] [--batch=8] [--codes=64]

Why this way: on a CPU the decoding step is a few hundred small ops (thin matmuls, the
cache update, RoPE, the draw), and which of them matter is not what one would guess from
FLOPs. JAX's profiler records each XLA:CPU op (thunk) as it runs; XLA's dump of the
optimised program says, for each op, which JAX primitive and which line of Python made it
(the `metadata` and `StackFrames` of the HLO text). Joining the two gives milliseconds per
generated token by source line, for any version of the code that has `Sampler.images`
(the same script profiles an older checkout: run it from that tree).

The model is `benchmarks/sample_speed.py`'s (random weights, shape by name), the sampler the
one `mmar sample` uses, temperature 1, no top-k / top-p, codes only. One warm-up call
(compilation), then `--repeats` calls under the profiler. Op times are summed over the
threads that ran them; control-flow ops (while, conditional, call) are left out, since their
bodies' ops are counted themselves. The table's "share" is of the summed op time; "wall"
below it is the calls' elapsed time, for comparison.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import pathlib
import re
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The HLO dump must be asked for before JAX starts.
DUMP = tempfile.mkdtemp(prefix="mmar-decode-profile-")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_dump_to={DUMP} --xla_dump_hlo_as_text"
                           " --xla_dump_hlo_module_re=.*_generate.*").strip()
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mmar import config as config_lib  # noqa: E402
from mmar.sample.plain import Sampler  # noqa: E402

CONTROL_FLOW = ("while", "conditional", "call")
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*? ([\w\-]+)\(")
METADATA = re.compile(r'op_name="([^"]*)"(?: [^}]*?stack_frame_id=(\d+))?')


def parse_hlo(text: str) -> dict:
    """Instruction name -> (opcode, JAX primitive, 'file:line function') of an optimised HLO
    module's text (the innermost frame inside this repository, else the innermost)."""
    sections = {"FileNames": {}, "FunctionNames": {}, "FileLocations": {}, "StackFrames": {}}
    current = None
    for line in text.splitlines():
        if line.strip() in sections:
            current = sections[line.strip()]
            continue
        if current is not None:
            m = re.match(r"^(\d+) (.*)$", line.strip())
            if m:
                current[int(m.group(1))] = m.group(2)
                continue
            current = None if line.strip() == "" else current
    files = {k: v.strip('"') for k, v in sections["FileNames"].items()}
    funcs = {k: v.strip('"') for k, v in sections["FunctionNames"].items()}

    def field(entry, name):
        m = re.search(rf"{name}=(\d+)", entry)
        return int(m.group(1)) if m else 0

    def location(loc_id):
        entry = sections["FileLocations"].get(loc_id, "")
        path = files.get(field(entry, "file_name_id"), "?")
        inside = str(ROOT) in path
        short = os.path.relpath(path, ROOT) if inside else os.path.basename(path)
        return (f"{short}:{field(entry, 'line')} {funcs.get(field(entry, 'function_name_id'), '?')}",
                inside)

    def source(frame_id):
        seen, first = set(), None
        while frame_id and frame_id not in seen:
            seen.add(frame_id)
            entry = sections["StackFrames"].get(frame_id, "")
            where, inside = location(field(entry, "file_location_id"))
            first = first or where
            if inside:
                return where
            frame_id = field(entry, "parent_frame_id")
        return first or "?"

    out = {}
    for line in text.splitlines():
        m = INSTRUCTION.match(line)
        if not m:
            continue
        meta = METADATA.search(line)
        primitive = meta.group(1).rsplit("/", 1)[-1] if meta else ""
        frame = int(meta.group(2)) if meta and meta.group(2) else 0
        out[m.group(1)] = (m.group(2), primitive, source(frame) if frame else "?")
    return out


def op_times(trace_dir: str, names: set) -> collections.Counter:
    """Microseconds per HLO instruction name, summed over a perfetto trace's events."""
    path = next(pathlib.Path(trace_dir).rglob("perfetto_trace.json.gz"))
    data = json.load(gzip.open(path))
    events = data["traceEvents"] if isinstance(data, dict) else data
    total = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in names:
            total[e["name"]] += e.get("dur", 0)
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs/t2i_shapes.py") + ":tiny_flat")
    ap.add_argument("--shape", default="25m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--codes", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args(argv)
    import sample_speed  # benchmarks/sample_speed.py: the same model shapes

    bench = argparse.Namespace(config=args.config, **{f: 0 for f in sample_speed.FIELDS})
    cfg, _, _, model_state, params = sample_speed.build(bench, args.shape)
    vocab = config_lib.make_vocab(cfg)
    sampler = Sampler(model_state, vocab, cfg.model.vocab_size, cfg.sample)
    rng = np.random.default_rng(0)
    captions = [list(rng.integers(97, 123, rng.integers(12, 40))) for _ in range(args.batch)]
    key = jax.random.key(0)
    sampler.images(params, captions, args.codes, key)          # compile
    modules = sorted(pathlib.Path(DUMP).glob("*_generate*after_optimizations.txt"))
    if not modules:
        raise SystemExit(f"no optimised `_generate` module was dumped to {DUMP}")
    ops = {}
    for m in modules:
        ops.update(parse_hlo(m.read_text()))
    timed = {n for n, (opcode, _, _) in ops.items() if opcode not in CONTROL_FLOW}
    with tempfile.TemporaryDirectory() as trace_dir:
        t0 = time.perf_counter()
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(args.repeats):
                sampler.images(params, captions, args.codes, key)
        wall = time.perf_counter() - t0
        per_op = op_times(trace_dir, timed)
    tokens = args.repeats * args.batch * args.codes
    by_source = collections.Counter()
    for name, us in per_op.items():
        _, primitive, where = ops[name]
        by_source[f"{where} [{primitive or ops[name][0]}]"] += us
    total = sum(by_source.values())
    count = sum(x.size for x in jax.tree.leaves(params))
    print(f"{args.shape} ({count / 1e6:.1f}M params), batch {args.batch}, {args.codes} codes, "
          f"{args.repeats} calls; load average {os.getloadavg()[0]:.2f}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| source line [primitive] | us per token | share |")
    print("| --- | ---: | ---: |")
    for where, us in by_source.most_common(args.top):
        print(f"| {where} | {us / tokens:,.1f} | {us / total:.1%} |")
    print(f"\nsummed op time {total / tokens:,.1f} us per token ({len(per_op)} ops); wall "
          f"{wall / tokens * 1e6:,.1f} us per token ({tokens / wall:,.0f} image tokens/s, "
          "profiler on)")


if __name__ == "__main__":
    main()
