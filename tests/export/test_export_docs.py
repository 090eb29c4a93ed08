"""Runs the commands and the Python block of docs/export.md on a random-weight run."""
import json
import shlex

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmar import cli  # noqa: E402
from tests.helpers import export_runs as helpers  # noqa: E402

DOC = helpers.ROOT / "docs/export.md"


def doc_block(marker: str, lang: str) -> str:
    text = DOC.read_text()
    return text.split(marker)[1].split(f"```{lang}")[1].split("```")[0]


@pytest.mark.e2e
@pytest.mark.slow
def test_docs_export_commands_and_python(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(helpers.ROOT / "configs")
    cfg = helpers.make_config()  # the test preset: QK-norm on -> Qwen3
    params = helpers.write_run(tmp_path / "runs/demo", cfg)
    helpers.save_llm(tmp_path / "runs/llm", qwen3=False)

    commands = [shlex.split(line) for line in
                doc_block("tests/export/test_export_docs.py runs this block", "bash").strip().splitlines()]
    assert [c[:2] for c in commands] == [["mmar", "export"]] * 3 + [["mmar", "import"]] * 2
    for command in commands:
        assert cli.main(command) == 0, command

    hf_dir = tmp_path / "runs/demo/hf"
    assert json.loads((hf_dir / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]
    assert (tmp_path / "runs/demo/hf_sharded/model.safetensors.index.json").is_file()
    assert (tmp_path / "runs/demo/native/model.safetensors").is_file()
    from mmar.export.orbax_reader import CheckpointReader
    back = CheckpointReader(tmp_path / "runs/reimported/decoder/checkpoints/0")
    np.testing.assert_array_equal(back.read("blocks.attn.q"), params["blocks"]["attn"]["q"])
    llm = CheckpointReader(tmp_path / "runs/from_llm/decoder/checkpoints/0")
    assert llm.shape("embed.embedding")[0] % 128 == 0

    code = doc_block("tests/export/test_export_docs.py runs this block too", "python")
    exec(compile(code, str(DOC), "exec"), {})
    from PIL import Image
    assert Image.open(tmp_path / "runs/demo/red_circle.png").size == (32, 32)
