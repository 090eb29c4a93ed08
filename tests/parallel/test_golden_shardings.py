"""Golden shardings: every parameter of the 1B config under each strategy on an 8-device
abstract mesh, against the checked-in table `golden_shardings_1b.json`.

A change to the rules or to a parameter's logical names shows up here as a readable diff.
After an intended change, regenerate with `MMAR_UPDATE_GOLDEN=1 make test` and review it.
"""
import json
import os
import pathlib

import jax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType

from mmar import config as config_lib
from mmar.model.transformer import Decoder
from mmar.parallel import mesh as mesh_lib
from mmar.parallel import rules

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = pathlib.Path(__file__).with_name("golden_shardings_1b.json")
# strategy -> mesh (data, fsdp, tensor) on 8 devices
MESHES = {"dp": (8, 1, 1), "fsdp": (2, 4, 1), "tp": (2, 1, 4), "fsdp_tp": (1, 4, 2)}


def _shardings(strategy: str) -> dict[str, str]:
    cfg = config_lib.validate(config_lib.load(str(ROOT / "configs/pretrain.py") + ":1b"))
    abstract = nnx.state(nnx.eval_shape(lambda: Decoder(cfg.model, rngs=nnx.Rngs(0))),
                         nnx.Param)
    mesh = AbstractMesh(MESHES[strategy], mesh_lib.AXES,
                        axis_types=(AxisType.Auto,) * len(mesh_lib.AXES))
    table = nnx.to_pure_dict(rules.param_shardings(abstract, mesh,
                                                   rules.for_strategy(strategy)))
    flat = jax.tree_util.tree_flatten_with_path(table)[0]
    return {"/".join(str(k.key) for k in path): str(tuple(s.spec)) for path, s in flat}


@pytest.fixture(scope="module")
def golden():
    if os.environ.get("MMAR_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps({s: _shardings(s) for s in MESHES}, indent=1) + "\n")
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("strategy", list(MESHES))
def test_parameter_shardings_match_golden(golden, strategy):
    assert _shardings(strategy) == golden[strategy]


def test_golden_table_says_what_each_strategy_means(golden):
    """Independent of the file's details: dp replicates everything, fsdp never uses
    `tensor`, tp never uses `fsdp`, and fsdp_tp uses both."""
    used = {s: " ".join(golden[s].values()) for s in MESHES}
    assert "fsdp" not in used["dp"] and "tensor" not in used["dp"]
    assert "fsdp" in used["fsdp"] and "tensor" not in used["fsdp"]
    assert "tensor" in used["tp"] and "fsdp" not in used["tp"]
    assert "tensor" in used["fsdp_tp"] and "fsdp" in used["fsdp_tp"]
