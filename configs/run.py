r"""The config of an existing run directory: `--config=configs/run.py:RUN_DIR`.

`mmar import` writes RUN_DIR/config.json, the whole config of the imported model (its model,
vocabulary and image tokenizer sections from the checkpoint, the other sections from the
import's `--config`). Training, sampling, evaluating or exporting that run then takes its
config from there, and `--config.SECTION.FIELD=VALUE` changes what the fine-tune needs:

    mmar import HF_DIR --out runs/anole --config=configs/t2i_shapes.py:test
    mmar train --config=configs/run.py:runs/anole --workdir=runs/anole \
        --config.model.lora.rank=16 --config.train.steps=200

The file is JSON (read, never executed) and completed by mmar/schema.py: fields it lacks
take their defaults, unknown ones are refused by name.
"""
import json

from etils import epath

from mmar import schema


def get_config(arg: str = ""):
    if not arg:
        raise ValueError("configs/run.py needs a run directory: --config=configs/run.py:RUN_DIR")
    path = epath.Path(arg)   # a local path or gs://
    path = path / schema.RUN_CONFIG if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; `mmar import HF_DIR --out RUN_DIR` writes "
                                f"RUN_DIR/{schema.RUN_CONFIG}")
    try:
        tree = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    return schema.complete(tree).unlock()
