"""`data.image_order` end to end on the `test` preset: train, sample and eval a RAR and a
RandAR decoder (one tokenizer trained once for both), in-process to stay fast."""
import json
import shutil

import pytest

from mmar import config as config_lib
from mmar.jobs import eval as eval_job
from mmar.jobs import text_tokenizer_train, tokenizer_train
from mmar.jobs import train as train_job
from tests.helpers import overrides

FAST = {"train.steps": 4, "checkpoint.every_steps": 4, "eval.num_examples": 4,
        "eval.tasks": ("frechet",)}
ORDERS = {  # the overrides a user passes on the command line (docs/decoding.md)
    "rar": {"data.image_order": "rar"},
    "randar": {"data.image_order": "randar", "data.seq_len": 80,
               "sample.randar.tokens_per_step": 4},
}


@pytest.fixture(scope="module")
def tokenizer_run(test_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("orders")
    text_tokenizer_train.run(test_config, root / "base", log=lambda _: None)
    tokenizer_train.run(test_config, root / "base", log=lambda _: None)
    return root


def order_config(test_config, order: str):
    """The test preset with FAST and the order's overrides, validated."""
    return overrides.with_fields(test_config, {"model.vocab_size": 0, **FAST, **ORDERS[order]})


@pytest.mark.parametrize("order", list(ORDERS))
@pytest.mark.e2e
@pytest.mark.slow
def test_train_sample_eval(order, test_config, tokenizer_run):
    cfg = order_config(test_config, order)
    workdir = tokenizer_run / order
    for stage in ("text_tokenizer", "tokenizer"):
        shutil.copytree(tokenizer_run / "base" / stage, workdir / stage)
    logs = []
    result = train_job.run(cfg, workdir, log=logs.append)
    assert result.step == cfg.train.steps
    out = eval_job.run(cfg, workdir, log=logs.append)
    for key in ("t2i_accuracy", "i2t_accuracy", "loss_image", "loss_text"):
        assert key in out
    assert out["loss_image"] < 10 and out["num_examples"] == 4
    t2i = [json.loads(x) for x in (workdir / "samples" / "t2i_test.jsonl").read_text()
           .splitlines()]
    assert len(t2i) == 4 and all(r["settings"]["cfg_scale_image"] == 2.0 for r in t2i)
    saved = json.loads((workdir / "decoder" / "checkpoints" / str(cfg.train.steps) / "config"
                        / "metadata").read_text())
    assert saved["data"]["image_order"] == order
    if order == "randar":   # the decoder's options, nested as in the config
        assert any("forward passes" in line for line in logs)
        assert all(r["settings"]["randar"]["tokens_per_step"] == 4 for r in t2i)


def test_docs_commands_name_real_presets_and_fields():
    """Every `mmar` command in docs/decoding.md loads its preset and validates with its
    overrides (the runs themselves are the test above, on the same overrides)."""
    import ast
    import pathlib
    import shlex
    root = pathlib.Path(__file__).resolve().parents[1]
    lines = [line for line in (root / "docs/decoding.md").read_text().splitlines()
             if line.startswith("mmar ")]
    assert len(lines) >= 6
    for line in lines:
        args = shlex.split(line)
        spec = next(a for a in args if a.startswith("--config="))[len("--config="):]
        cfg = config_lib.load(str(root / spec))
        with cfg.unlocked():
            for arg in args:
                if arg.startswith("--config."):
                    field, value = arg[len("--config."):].split("=", 1)
                    try:
                        value = ast.literal_eval(value)
                    except (ValueError, SyntaxError):
                        pass
                    overrides.set_field(cfg, field, value)
        config_lib.validate(cfg)


@pytest.mark.e2e
@pytest.mark.slow
def test_decoding_benchmark_on_the_trained_runs(tokenizer_run):
    """benchmarks/decoding.py on the two runs trained above (their saved configs): every
    method of each order gives one judged image per caption and its forward passes; RandAR's
    fixed-m rows cost ceil(n / m) passes, the raster baseline n. No timing is asserted."""
    import importlib.util
    import math
    import pathlib
    runs = [tokenizer_run / order for order in ORDERS]
    if not all((r / "decoder").is_dir() for r in runs):
        pytest.skip("needs the runs of test_train_sample_eval (same module, run first)")
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks/decoding.py"
    spec = importlib.util.spec_from_file_location("decoding_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main([f"--runs={','.join(map(str, runs))}", "--num=4"])
    by = {(r["model"], r["method"]): r for r in rows}
    n = 16  # codes per image of the test preset (conv tokenizer, 32 px / 8)
    assert by[("rar", "plain")]["forward_passes_per_image"] == n
    assert by[("randar", "plain")]["forward_passes_per_image"] == n
    assert by[("randar", "randar 4/pass")]["forward_passes_per_image"] == math.ceil(n / 4)
    assert by[("randar", "randar 4/pass")]["passes_ratio"] == n / math.ceil(n / 4)
    for r in rows:
        assert r["images"] == 4 and 0 <= r["judge_accuracy"] <= 1 and r["images_per_s"] > 0


@pytest.mark.e2e
@pytest.mark.slow
def test_docs_inpainting_snippet_runs(tokenizer_run, test_config):
    """The Python block of docs/decoding.md, on the RandAR run trained above (its config and
    directory swapped in for the tiny_randar preset's): it asserts what it shows."""
    import pathlib
    workdir = tokenizer_run / "randar"
    if not (workdir / "decoder").is_dir():
        pytest.skip("needs the runs of test_train_sample_eval (same module, run first)")
    text = (pathlib.Path(__file__).resolve().parents[1] / "docs/decoding.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    swaps = {'config_lib.validate(config_lib.load("configs/t2i_shapes.py:tiny_randar"))':
             "RUN_CONFIG", '"runs/demo_randar"': repr(str(workdir))}
    for old, new in swaps.items():
        assert old in code, old
        code = code.replace(old, new)
    exec(compile(code, "docs/decoding.md", "exec"),
         {"RUN_CONFIG": order_config(test_config, "randar")})
