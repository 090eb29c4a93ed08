"""Orbax checkpoints: params, optimizer state, step, the Grain iterator and the config (JSON).

One CheckpointManager per run directory (`<workdir>/checkpoints`), async saves, keeps the
last N. Restoring takes abstract targets carrying shardings, so a checkpoint is restored
straight onto the current mesh (which may differ from the one that wrote it).
No pickle anywhere: arrays go through Orbax/TensorStore, the config and the iterator state
are JSON.
"""
from __future__ import annotations

import json
import pathlib

import grain
import jax
import orbax.checkpoint as ocp


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


class Checkpointer:
    def __init__(self, directory, *, max_to_keep: int = 2, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, *, params, opt_state=None, data_iter=None, config=None,
             force: bool = False) -> None:
        items = {"params": ocp.args.StandardSave(params)}
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(opt_state)
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        if config is not None:
            items["config"] = ocp.args.JsonSave(json.loads(config.to_json_best_effort()))
        self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, step: int | None = None, *, params, param_shardings, opt_state=None,
                opt_shardings=None, data_iter=None):
        """Restores into the given (possibly abstract) trees; returns a dict of items."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        items = {"params": ocp.args.StandardRestore(_abstract(params, param_shardings))}
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardRestore(_abstract(opt_state, opt_shardings))
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return {"step": step, **{k: restored[k] for k in items}}

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
