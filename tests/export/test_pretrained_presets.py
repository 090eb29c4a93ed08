"""configs/pretrained.py holds what `mmar import` makes of the released Emu3-8B and
Chameleon-7B (transformers' config defaults are the released configs), and the dry-run
table of docs/pretrained.md is what its commands print."""
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

transformers = pytest.importorskip("transformers")

from mmar import config as config_lib  # noqa: E402
from mmar.export import import_hf, unified  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / "docs/pretrained.md"
RELEASED = {"emu3_8b": transformers.Emu3Config, "chameleon_7b": transformers.ChameleonConfig}
GiB = 2 ** 30


@pytest.mark.parametrize("preset", list(RELEASED))
def test_presets_are_what_the_import_makes(preset):
    hf_cfg = json.loads(RELEASED[preset]().to_json_string())
    cfg = config_lib.validate(config_lib.load(f"{ROOT / 'configs/pretrained.py'}:{preset}"))
    want = import_hf.model_section(hf_cfg, "config.json")
    got = {k: cfg.model[k] for k in want}
    assert got == want
    assert cfg.model.vocab_size == unified.text_config(hf_cfg)["vocab_size"]
    fields, resolution = unified.image_tokenizer_fields(hf_cfg, "config.json")
    vq = fields.pop("vq")
    assert {k: cfg.image_tokenizer[k] for k in fields} == fields
    assert {k: cfg.image_tokenizer.vq[k] for k in vq} == vq
    assert resolution in (None, cfg.data.image_size)


def _dry_run_block():
    text = DOC.read_text()
    block = text.split("tests/export/test_pretrained_presets.py runs this block")[1]
    return [shlex.split(line) for line in
            block.split("```bash")[1].split("```")[0].strip().splitlines()]


def _table_peaks() -> dict:
    """{(preset, devices, rank, grad_accum): peak GiB} from the doc's dry-run table."""
    rows = re.findall(r"^\| `(\w+)` \| (\d+) x [^|]* \| (full|LoRA \d+) \| (\d+) \|"
                      r"[^|]*\|[^|]*\| ([\d.]+) GiB \|", DOC.read_text(), re.M)
    return {(p, int(n), 0 if kind == "full" else int(kind.split()[1]), int(ga)): float(peak)
            for p, n, kind, ga, peak in rows}


@pytest.mark.e2e
@pytest.mark.slow
def test_dry_run_commands_print_the_table(tmp_path):
    peaks = _table_peaks()
    commands = _dry_run_block()
    assert len(commands) >= 2 and len(peaks) >= len(commands)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    for i, command in enumerate(commands):
        assert command[:2] == ["mmar", "train"] and "--dry-run" in command
        out = subprocess.run([sys.executable, "-m", "mmar", *command[1:],
                              f"--workdir={tmp_path / str(i)}"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        flags = dict(a[2:].split("=", 1) for a in command if a.startswith("--") and "=" in a)
        key = (flags["config"].split(":")[1], int(flags["dry_run_devices"]),
               int(flags.get("config.model.lora.rank", 0)),
               int(flags.get("config.train.grad_accum", 1)))
        figures = json.loads((tmp_path / str(i) / "dry_run.json").read_text())
        assert figures["peak_bytes"] / GiB == pytest.approx(peaks[key], abs=0.02), key
