"""Orbax checkpoints: params, optimizer state, step, the Grain iterator and the config (JSON).

One CheckpointManager per run directory (`<workdir>/checkpoints`, a local path or `gs://`),
async saves, keeps the last N. Restoring takes abstract targets carrying shardings, so a
checkpoint is restored straight onto the current mesh (which may differ from the one that
wrote it, in shape and device count).

A save is atomic (Orbax writes a temporary directory and renames it when every process is
done), so a `kill -9` mid-save leaves the previous checkpoint as the newest one; leftover
temporary directories are removed at start. A checkpoint that is complete but unreadable
(a lost or truncated file) is skipped with a warning by `restore_newest_good`, which falls
back to the one before.
No pickle anywhere: arrays go through Orbax/TensorStore, the config and the iterator state
are JSON.
"""
from __future__ import annotations

import json

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


class Checkpointer:
    def __init__(self, directory, *, max_to_keep: int = 2, async_save: bool = True):
        directory = epath.Path(directory)
        self.directory = directory if "://" in str(directory) else directory.absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                               enable_async_checkpointing=async_save,
                                               cleanup_tmp_directories=True)
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
        """Restores into the given (possibly abstract) trees; returns a dict of items.

        A checkpoint that holds params only (written by `mmar import`) restores just those:
        the result then has no "opt_state" / "data", and the caller starts both afresh.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        saved = {p.name for p in (self.directory / str(step)).iterdir()}
        items = {"params": ocp.args.StandardRestore(_abstract(params, param_shardings))}
        if opt_state is not None and "opt_state" in saved:
            items["opt_state"] = ocp.args.StandardRestore(_abstract(opt_state, opt_shardings))
        if data_iter is not None and "data" in saved:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return {"step": step, **{k: restored[k] for k in items}}

    def restore_newest_good(self, *, log=print, **targets):
        """`restore` of the newest checkpoint that reads back, or None when there is none.

        Steps that fail to restore are reported and skipped, newest first; if every one
        fails, the error of the newest is raised (a run must not silently start over).
        """
        errors = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                result = self.restore(step, **targets)
            except Exception as e:  # Orbax/TensorStore raise many types for a bad file
                errors.append(e)
                log(f"WARNING: checkpoint step {step} in {self.directory} is unreadable "
                    f"({type(e).__name__}: {str(e)[:200]}); trying the one before")
                continue
            if errors:
                log(f"WARNING: restored step {step}; newer checkpoints were unreadable")
            return result
        if errors:
            raise RuntimeError(f"no checkpoint in {self.directory} could be restored") \
                from errors[0]
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
