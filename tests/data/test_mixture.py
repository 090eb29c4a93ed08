"""Mixtures: proportions, determinism, disjoint per-process slices, exact resume with workers."""
import collections

import grain
import ml_collections
import numpy as np
import pytest

from mmar.data import mixture, packing, sequences
from mmar.vocab import Vocab

V = Vocab(256, 16)
CFG = ml_collections.ConfigDict(dict(
    seq_len=64, i2t_fraction=0.5, caption_dropout=0.0, loss_weight_text=1.0,
    loss_weight_image=1.0, pack_bins=4, oversize="split", max_bad_fraction=0.01,
    num_workers=0))


def _captions(tag, n):
    return mixture.DocumentCodeSource(
        {"kind": "caption", "segments": [{"text": f"{tag}{i}"}, {"image": 0}],
         "codes": np.full((1, 4), i % 16)} for i in range(n))


def _stories(n):
    return mixture.DocumentCodeSource(
        {"kind": "document", "segments": [{"text": f"s{i}"}, {"image": 0}, {"text": "then"},
                                          {"image": 1}],
         "codes": np.stack([np.full(4, i % 16), np.full(4, (i + 1) % 16)])} for i in range(n))


def _text(ex):
    return bytes(int(t) for t in ex["tokens"] if t < 256).decode()


def test_mixture_proportions_and_determinism():
    sources = [_captions("a", 50), _stories(30), _captions("d", 7)]
    weights = [0.5, 0.3, 0.2]
    ds = mixture.mixture(sources, weights, V, CFG, seed=1)
    first = [ds[i] for i in range(2000)]
    counts = collections.Counter(int(x["source"]) for x in first)
    for i, w in enumerate(weights):
        assert abs(counts[i] / 2000 - w) < 0.02, counts
    # Each source's documents are what that source holds (stories have two images).
    assert all((x["tokens"] == V.boi).sum() == (2 if x["source"] == 1 else 1) for x in first)
    again = mixture.mixture(sources, weights, V, CFG, seed=1)
    assert [_text(again[i]) for i in range(200)] == [_text(x) for x in first[:200]]
    other = mixture.mixture(sources, weights, V, CFG, seed=2)
    assert [_text(other[i]) for i in range(200)] != [_text(x) for x in first[:200]]


def test_two_processes_read_disjoint_data_that_covers_the_source():
    src = _captions("c", 101)
    seen = []
    for index in range(2):
        ds = mixture.mixture([src], [1.0], V, CFG, seed=0, process_index=index,
                             process_count=2)
        n = len(mixture.process_slice(grain.MapDataset.source(src), index, 2))
        seen.append({_text(ds[i]) for i in range(n)})  # one epoch of this process
        assert len(seen[-1]) == n
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {f"c{i}" for i in range(101)}


@pytest.mark.slow
def test_document_batches_resume_exactly_with_worker_processes():
    cfg = CFG.copy_and_resolve_references()
    cfg.num_workers = 2
    sources, weights = [_captions("a", 40), _stories(20)], [0.6, 0.4]
    it = mixture.document_batches(sources, weights, V, cfg, global_batch=4, seed=0,
                                  process_index=0, process_count=1)
    for _ in range(3):
        batch = next(it)
    assert batch["tokens"].shape == (4, 64)
    assert packing.efficiency(batch) > 0.6 and batch["segment_ids"].max() >= 3
    state = it.get_state()
    expected = [next(it) for _ in range(4)]
    it.close()
    again = mixture.document_batches(sources, weights, V, cfg, global_batch=4, seed=0,
                                     process_index=0, process_count=1)
    again.set_state(state)
    for a in expected:
        b = next(again)
        for k in sequences.FEATURES:
            np.testing.assert_array_equal(a[k], b[k])
    again.close()


_WORKER = r"""
import json, sys
import jax
jax.distributed.initialize("localhost:{port}", num_processes=2, process_id=int(sys.argv[1]))
import numpy as np
from tests.data.test_mixture import CFG, V, _captions, _text
from mmar.data import mixture
src = _captions("c", 101)
it = mixture.document_batches([src], [1.0], V, CFG, global_batch=2, seed=0)
n = len(mixture.process_slice(__import__("grain").MapDataset.source(src)))
ds = mixture.mixture([src], [1.0], V, CFG, seed=0)  # jax.process_index() / process_count()
print(json.dumps({{"index": jax.process_index(), "count": jax.process_count(),
                   "texts": [_text(ds[i]) for i in range(n)],
                   "batch": list(next(it)["tokens"].shape)}}))
"""


def test_two_real_processes_read_disjoint_data(tmp_path):
    """Two jax processes on localhost: jax.process_index() picks each one's slice."""
    import json
    import os
    import socket
    import subprocess
    import sys
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(port=port))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, str(script), str(i)], cwd=root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    res = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert [r["index"] for r in res] == [0, 1] and all(r["count"] == 2 for r in res)
    assert all(r["batch"] == [1, 64] for r in res)  # global batch 2 = 1 row per process
    a, b = (set(r["texts"]) for r in res)
    assert len(a) == 51 and len(b) == 50 and not a & b
    assert a | b == {f"c{i}" for i in range(101)}
