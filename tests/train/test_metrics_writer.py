"""The JSONL metric log keeps every row across resumed runs, in both write modes (append for
local disks, whole-file rewrite for object stores such as gs://, which cannot append)."""
import json

import pytest

from mmar.train.metrics import JsonlWriter


@pytest.mark.parametrize("append", [True, False])
def test_rows_survive_a_resumed_run(tmp_path, append):
    path = tmp_path / "metrics.jsonl"
    first = JsonlWriter(path, append=append)
    first.write_scalars(1, {"loss": 2.5})
    first.write_scalars(2, {"loss": 2.25})
    first.close()
    resumed = JsonlWriter(path, append=append)
    resumed.write_scalars(3, {"loss": 2.0})
    resumed.flush()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.25},
                    {"step": 3, "loss": 2.0}]
