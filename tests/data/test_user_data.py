"""A user's folder of images + JSONL: the docs/data.md walkthrough, bad records, read-back."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from mmar.data import stories, user_example
from mmar.data.builders import folder
from mmar.data.packing import BadDataError
from mmar.data.synthetic import ShapesSpec

ROOT = pathlib.Path(__file__).resolve().parents[2]


def doc_commands():
    text = (ROOT / "docs/data.md").read_text()
    block = text.split("tests/data/test_user_data.py runs this block")[1].split("```bash")[1]
    return [line.split() for line in block.split("```")[0].strip().splitlines()]


@pytest.mark.e2e
def test_walkthrough_commands_run(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    outs = []
    for cmd in doc_commands():
        assert cmd[:2] == ["python", "-m"]
        proc = subprocess.run([sys.executable, *cmd[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs.append(proc.stdout + proc.stderr)
    log = outs[-1]
    for where in ("captions.jsonl:5", "captions.jsonl:6", "captions.jsonl:7",
                  "captions.jsonl:8", "stories.jsonl:5", "stories.jsonl:6"):
        assert f"[data] skipped {where}: " in log
    assert "16 of 22 records kept" in log and "16 records in runs/data" in log
    assert "captions.jsonl:1 caption" in log
    # The same folder without the flag stops with one error and writes nothing new.
    proc = subprocess.run([sys.executable, "-m", "mmar.data.prepare", "folder",
                           "--folder=my_data", "--data_dir=other"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "error: my_data: 6 of 22 records bad, more than max_bad_fraction=0.01" in proc.stderr
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").rglob("*.array_record*"))


@pytest.mark.faults
def test_each_kind_of_bad_record_is_skipped_and_counted(tmp_path):
    root = user_example.write(tmp_path / "my_data")
    logs = []
    report = folder.scan(folder.FolderSpec(str(root), max_bad_fraction=0.5), log=logs.append)
    assert dict(report.bad) == {k: 1 for k in user_example.BAD_KINDS}
    assert len(report.records) == 12 + 4 and report.lines == 22
    assert len([m for m in logs if m.startswith("[data] skipped ")]) == 6
    with pytest.raises(BadDataError, match="6 of 22 records bad"):
        folder.scan(folder.FolderSpec(str(root), max_bad_fraction=0.2), log=lambda m: None)
    # A fraction just above the bad share lets it through.
    folder.scan(folder.FolderSpec(str(root), max_bad_fraction=6 / 22 + 1e-9), log=lambda m: None)


def test_documents_round_trip_through_array_record(tmp_path):
    root = user_example.write(tmp_path / "my_data")
    spec = folder.FolderSpec(str(root), image_size=64, max_bad_fraction=0.5)
    builder = folder.prepare(spec, data_dir=str(tmp_path / "tfds"), log=lambda m: None)
    src = folder.FolderSource(builder.data_dir)
    assert len(src) == 16
    story_recs = [src[i] for i in range(len(src)) if src[i]["kind"] == "document"]
    want = list(stories.make_stories(ShapesSpec(image_size=64, seed=1), 4, seed=1))
    assert len(story_recs) == 4
    for rec, story in zip(story_recs, want):
        assert rec["segments"] == story["segments"] and rec["id"].startswith("stories.jsonl:")
        for got, ref in zip(rec["images"], story["images"]):
            np.testing.assert_array_equal(got, ref)  # 64px PNGs, no resize: lossless
    # Resized to 32: the same folder under other settings is a new data set.
    small = folder.prepare(folder.FolderSpec(str(root), image_size=32, max_bad_fraction=0.5),
                           data_dir=str(tmp_path / "tfds"), log=lambda m: None)
    assert small.data_dir != builder.data_dir
    assert folder.FolderSource(small.data_dir)[0]["images"][0].shape == (32, 32, 3)
    rec = json.loads(json.dumps(src[0]["segments"]))
    assert rec[0]["text"] and rec[1] == {"image": 0}
