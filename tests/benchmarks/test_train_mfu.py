"""benchmarks/train_mfu.py (with its PyTorch peer), benchmarks/mot_step.py and
benchmarks/matmul_peer.py run on tiny configs. Nothing measured is asserted, not even that a
rate is positive (a rounded rate of a tiny op on a loaded machine reads 0.0): only what the
benchmark computes from shapes (parameters, FLOPs) and which rows and keys it reports."""
import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("train_mfu", ROOT / "benchmarks/train_mfu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documented_args(script: str) -> list[str]:
    """The flags of docs/performance.md's command for `script` (brackets: optional flags)."""
    doc = (ROOT / "docs/performance.md").read_text()
    line = next(l for l in doc.splitlines() if f"python benchmarks/{script}" in l)
    return [a.strip("[]") for a in line.split(f"benchmarks/{script}")[1].split()]


@pytest.mark.slow
def test_train_mfu_reports_mmar_and_peer():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    result = _bench().main(documented_args("train_mfu.py") +
                           ["--preset=tiny", "--batch=2", "--seq=32", "--steps=1"])
    assert result["parameters"] == 139_584 and result["attention"] == "blockwise"
    assert result["scan_layers"] is False      # the documented --unroll_layers
    assert {"tokens_per_s", "mfu", "peak_tflops", "peer_tokens_per_s",
            "ratio_vs_transformers"} <= set(result)


@pytest.mark.slow
def test_mot_step_reports_ratios_for_each_grouped_matmul():
    spec = importlib.util.spec_from_file_location("mot_step", ROOT / "benchmarks/mot_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(documented_args("mot_step.py") +
                         ["--preset=tiny", "--batch=2", "--seq=64", "--steps=1", "--tile=16",
                          "--matmuls=tiled,ragged"])
    assert set(result["step_ratio_vs_dense"]) == {"dense", "mot-tiled", "mot-ragged"}
    assert result["step_ratio_vs_dense"]["dense"] == 1.0      # dense over itself
    assert set(result["matmul_grad_ratio_vs_dense"]) == {"dense", "mot-tiled", "mot-ragged"}


def test_matmul_peer_times_every_product_of_the_step():
    """The documented command, shrunk by later flags to the tiny shapes."""
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("matmul_peer", ROOT / "benchmarks/matmul_peer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(documented_args("matmul_peer.py") +
                         ["--preset=tiny", "--batch=1", "--seq=64", "--rounds=1"])
    ops = [row["op"] for row in result["rows"]]
    assert len(ops) == 13 and ops[-1].startswith("attention")   # 4 weights x 3 products
    assert sum("weight grad" in op for op in ops) == 4
    # The FLOPs each row is timed against, from the tiny preset's shapes (64 tokens,
    # d_model 64, 4 heads x 16, MLP 128, vocabulary 512): 2 m k n per product.
    d, mlp, vocab, tokens = 64, 128, 512, 64
    per_weight = [2 * tokens * d * d, 2 * tokens * d * mlp, 2 * tokens * mlp * d,
                  2 * tokens * d * vocab]
    assert [row["flop"] for row in result["rows"][:12]] == [f for f in per_weight
                                                            for _ in range(3)]
    assert result["rows"][12]["flop"] == int(2.5 * 2 * 1 * 4 * 64 * 64 * 16)
    assert "kernel_step_ratio" in result
