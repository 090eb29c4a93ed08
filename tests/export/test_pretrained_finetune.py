"""A released unified model through every job, as docs/pretrained.md tells a user to run it:
`mmar import` (with the converted VQ-GAN's decoder for Chameleon), then with
`--config=configs/run.py:RUN_DIR`: `mmar pretokenize`, `mmar train` (LoRA, or a full
fine-tune), `mmar sample`, `mmar eval`, and `mmar export`, whose output transformers loads
with the fine-tuned run's logits. Tiny random transformers models (tests/helpers/
unified_models.py) and the `test` preset's data, a few steps: what is checked is that the
jobs take the imported model's code paths, not quality."""
import json
import os
import shlex
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from mmar import config as config_lib  # noqa: E402
from mmar import rundir, schema  # noqa: E402
from mmar.export import hf  # noqa: E402
from mmar.export import orbax_reader  # noqa: E402
from mmar.jobs import eval as eval_job  # noqa: E402
from mmar.jobs import export as export_job  # noqa: E402
from mmar.jobs import pretokenize as pretokenize_job  # noqa: E402
from mmar.jobs import sample as sample_job  # noqa: E402
from mmar.jobs import train as train_job  # noqa: E402
from mmar.model import lora  # noqa: E402
from tests.helpers import export_runs as helpers  # noqa: E402
from tests.helpers import overrides  # noqa: E402
from tests.helpers import unified_models as models  # noqa: E402

DOC = helpers.ROOT / "docs/pretrained.md"
# What makes the doc's commands take seconds on tiny models (appended to each config command:
# the last value of a flag wins).
SMALL = {"data.num_train": 16, "data.num_test": 2, "data.num_unseen": 2, "data.seq_len": 64,
         "data.pretokenized": True, "train.steps": 4, "train.batch_size": 8,
         "train.lr": 3e-3, "train.warmup_steps": 0, "train.log_every": 1,
         "checkpoint.every_steps": 4, "eval.num_examples": 2}
# chameleon_lora runs the commands of docs/pretrained.md as written (with SMALL); emu3_full
# runs the same jobs in-process as a full fine-tune.
CASES = {"chameleon_lora": ("chameleon", 16), "emu3_full": ("emu3", 0)}


def doc_commands() -> list[list[str]]:
    block = DOC.read_text().split("tests/export/test_pretrained_finetune.py runs this block")[1]
    return [shlex.split(line) for line in block.split("```bash")[1].split("```")[0]
            .strip().splitlines()]


def _params(step_dir):
    reader = orbax_reader.CheckpointReader(step_dir)
    return {n: reader.read(n) for n in reader.names}


def _run_doc_commands(root):
    """The doc's block in `root` (its relative paths), each a `python -m mmar` process."""
    (root / "configs").symlink_to(helpers.ROOT / "configs")
    models.save_unified(root / "Anole-7b-hf", "chameleon")
    models.save_converted_vqgan(root / "runs/anole_vqgan", root / "Anole-7b-hf")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}   # one device
    env["PYTHONPATH"] = str(helpers.ROOT)
    logs = []
    commands = doc_commands()
    assert [c[1] for c in commands] == ["import", "pretokenize", "train", "sample", "eval",
                                        "export"]
    for command in commands:
        if command[1] == "import":   # the tiny models' data: the `test` preset's
            command = [a.replace("t2i_shapes.py:tiny", "t2i_shapes.py:test") for a in command]
        elif command[1] != "export":
            command = command + [f"--config.{k}={v}" for k, v in SMALL.items()]
        out = subprocess.run([sys.executable, "-m", "mmar", *command[1:]], cwd=root, env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, (command, out.stdout[-2000:], out.stderr[-3000:])
        logs += out.stdout.splitlines()
    return root / "runs/anole", root / "runs/anole_finetuned", logs


def _run_jobs(root, kind, rank):
    """The same jobs in-process: import, pretokenize, train, sample, eval, export."""
    models.save_unified(root / "hf", kind)
    argv = [str(root / "hf"), "--out", str(root / "run"),
            f"--config={helpers.ROOT / 'configs/t2i_shapes.py'}:test"]
    assert export_job.main("import", argv) == 0
    run = root / "run"
    cfg = overrides.with_fields(
        config_lib.load(f"{helpers.ROOT / 'configs/run.py'}:{run}"),
        {**SMALL, "model.lora.rank": rank})
    logs = []
    for job in (pretokenize_job, train_job, sample_job, eval_job):
        job.run(cfg, run, log=logs.append)
    hf.export(run, root / "out", log=logs.append)
    return run, root / "out", logs


@pytest.fixture(scope="module", params=list(CASES))
def finetuned(request, tmp_path_factory):
    """(kind, lora rank, run dir, its config, export dir, logs) after every job."""
    kind, rank = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    run, out, logs = (_run_doc_commands(root) if kind == "chameleon" else
                      _run_jobs(root, kind, rank))
    cfg = config_lib.validate(config_lib.load(f"{helpers.ROOT / 'configs/run.py'}:{run}"))
    return kind, rank, run, cfg, out, logs


@pytest.mark.e2e
@pytest.mark.slow
def test_training_starts_from_the_import_and_trains_what_it_should(finetuned):
    kind, rank, run, cfg, _, logs = finetuned
    assert cfg.model.hf_class == kind and cfg.image_tokenizer.pretrained
    start, end = _params(run / "decoder/checkpoints/0"), _params(run / "decoder/checkpoints/4")
    assert any("initialised" in m and "step 0" in m for m in logs)
    losses = [json.loads(x)["loss"] for x in (run / "decoder/metrics.jsonl").read_text()
              .splitlines()]
    assert len(losses) == 4 and np.isfinite(losses).all()
    adapters = [n for n in end if n.endswith((lora.A_SUFFIX, lora.B_SUFFIX))]
    assert bool(adapters) == bool(rank)
    for name, value in start.items():   # LoRA: the base frozen; full: every weight moves
        moved = not np.array_equal(end[name], value)
        assert moved != bool(rank), name
    # The training rows write images in the checkpoint's layout (Emu3: size and rows).
    vocab = config_lib.make_vocab(cfg)
    batch = next(iter(train_job.train_batches(cfg, run, vocab, log=lambda _: None)))
    row = np.asarray(batch["tokens"])[0].tolist()
    start = row.index(vocab.boi)
    codes, grid = vocab.parse_image_body(row[start + 1:row.index(vocab.eoi, start)])
    side = cfg.data.image_size // cfg.image_tokenizer.downsample
    assert codes.size == side * side and grid == ((side, side) if kind == "emu3" else None)
    # The trainer wrote the effective config back: configs/run.py gives the fine-tune's.
    assert cfg.model.lora.rank == rank and cfg.train.steps == SMALL["train.steps"]
    assert json.loads((run / schema.RUN_CONFIG).read_text())["data"]["pretokenized"]


@pytest.mark.e2e
@pytest.mark.slow
def test_sample_and_eval_use_the_imported_image_tokenizer(finetuned):
    kind, _, run, cfg, _, logs = finetuned
    if kind == "emu3":
        assert any("interleaved stories: skipped" in m for m in logs)
    for name in ("t2i_test", "i2t_test", "t2i_unseen"):   # what the sample job wrote
        assert len((run / f"samples/{name}.jsonl").read_text().splitlines()) == 2, name
    report = json.loads((run / rundir.REPORT).read_text())
    assert report["decoder_step"] == 4 and np.isfinite(report["loss_image"])
    m = sample_job.Models(rundir.load(cfg, run))
    codes, _ = m.image_sampler.images(m.params, [m.text.encode("a red circle")], m.num_codes,
                                      jax.random.key(0))
    grid = cfg.data.image_size // cfg.image_tokenizer.downsample
    codes = np.asarray(codes)
    assert codes.shape == (1, grid * grid) and ((0 <= codes) & (codes < models.CODES)).all()
    pixels = m.tokenizer.decode(codes)   # the imported tokenizer's decoder
    assert pixels.shape == (1, cfg.data.image_size, cfg.data.image_size, 3)


@pytest.mark.e2e
@pytest.mark.slow
def test_export_loads_in_transformers_with_the_finetuned_logits(finetuned):
    kind, rank, run, cfg, out, _ = finetuned
    cls = {"chameleon": transformers.ChameleonForConditionalGeneration,
           "emu3": transformers.Emu3ForConditionalGeneration}[kind]
    model = cls.from_pretrained(out, dtype=torch.float32).eval()
    loaded = rundir.load(cfg, run)
    params = traverse_util.unflatten_dict(
        {k: np.asarray(v) for k, v in traverse_util.flatten_dict(
            jax.device_get(loaded.params)).items()})
    tokens = np.random.default_rng(4).integers(0, models.VOCAB, (2, 24)).astype(np.int32)
    tokens[:, 4:20] = models.IMAGE_AT + np.arange(16)
    want = helpers.mmar_logits(cfg, params, tokens)
    text_model = model.model if kind == "chameleon" else model.model.text_model
    with torch.no_grad():
        hidden = text_model(input_ids=torch.tensor(tokens, dtype=torch.long)).last_hidden_state
        got = model.lm_head(hidden).numpy()
    assert np.abs(got - want).max() < 1e-4
    assert json.loads((out / "mmar_config.json").read_text())["model"]["lora"]["rank"] == 0
