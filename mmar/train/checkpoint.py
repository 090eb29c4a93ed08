"""Orbax checkpoints: params, optimizer state, step, the Grain iterator and the config (JSON).

One CheckpointManager per run directory (`<workdir>/checkpoints`, a local path or `gs://`),
async saves, keeps the last N. Restoring takes abstract targets carrying shardings, so a
checkpoint is restored straight onto the current mesh (which may differ from the one that
wrote it, in shape and device count).

A save is atomic (Orbax writes a temporary directory and renames it when every process is
done), so a `kill -9` mid-save leaves the previous checkpoint as the newest one; leftover
temporary directories are removed at start. A checkpoint that is complete but unreadable
(a lost or truncated file) is moved aside with a warning by `restore_newest_good`, which falls
back to the one before.
A LoRA run (mmar/model/lora.py) may start from a checkpoint without its adapters (an
imported or pretrained base model): `restore(fresh=...)` restores the rest and keeps the
given adapters.
No pickle anywhere: arrays go through Orbax/TensorStore, the config and the iterator state
are JSON.
"""
from __future__ import annotations

import json

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util
from jax.experimental import multihost_utils

from mmar.errors import CheckpointError


def _first_line(error: Exception, limit: int = 200) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else "")[:limit]


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

    def saved_param_paths(self, step: int) -> frozenset:
        """The flat paths (key tuples) of the params saved at `step` (metadata only)."""
        tree = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "params")
        return frozenset(traverse_util.flatten_dict(getattr(tree, "tree", tree)))

    def restore(self, step: int | None = None, *, params, param_shardings, opt_state=None,
                opt_shardings=None, data_iter=None, fresh: frozenset = frozenset()):
        """Restores into the given (possibly abstract) trees; returns a dict of items.

        A checkpoint that holds params only (written by `mmar import`) restores just those:
        the result then has no "opt_state" / "data", and the caller starts both afresh.
        `fresh`: flat param paths the checkpoint may lack (a LoRA run's adapters). When it
        lacks some of them, their values are the given `params`' (concrete), the rest is
        restored, and the checkpoint counts as params-only (its optimizer state and data
        order belong to a model without them); "fresh" in the result lists what was kept.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        saved = {p.name for p in (self.directory / str(step)).iterdir()}
        kept = {}
        if fresh:
            flat = traverse_util.flatten_dict(params)
            missing = frozenset(flat) - self.saved_param_paths(step)
            if missing and missing <= fresh:
                kept = {k: flat[k] for k in missing}
                flat_shardings = traverse_util.flatten_dict(param_shardings)
                params, param_shardings = (traverse_util.unflatten_dict(
                    {k: v for k, v in tree.items() if k not in missing})
                    for tree in (flat, flat_shardings))
                saved -= {"opt_state", "data"}
        items = {"params": ocp.args.StandardRestore(_abstract(params, param_shardings))}
        if opt_state is not None and "opt_state" in saved:
            items["opt_state"] = ocp.args.StandardRestore(_abstract(opt_state, opt_shardings))
        if data_iter is not None and "data" in saved:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        out = {"step": step, **{k: restored[k] for k in items}}
        if kept:
            out["params"] = traverse_util.unflatten_dict(
                {**traverse_util.flatten_dict(out["params"]), **kept})
            out["fresh"] = sorted("/".join(map(str, k)) for k in kept)
        return out

    def restore_newest_good(self, *, log=print, move_aside: bool = True, **targets):
        """`restore` of the newest checkpoint that reads back, or None when there is none.

        Steps that fail to restore are reported, moved aside to `<directory>.unreadable/`
        (kept for a person to look at, never deleted) and skipped, newest first: the run then
        goes on from the one before and can save its own checkpoint at the same step again.
        Jobs that only read (sample, eval, export) pass `move_aside=False`: they skip.
        If every one fails, nothing is moved and `CheckpointError` says so in one line (a run
        must not silently start over).
        """
        errors = []
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            try:
                result = self.restore(step, **targets)
            except Exception as e:  # Orbax/TensorStore raise many types for a bad file
                errors.append((step, e))
                log(f"WARNING: checkpoint step {step} in {self.directory} is unreadable "
                    f"({type(e).__name__}: {_first_line(e)}); trying the one before")
                continue
            if errors and move_aside:
                self._move_aside([s for s, _ in errors], log)
                log(f"WARNING: restored step {step}; newer checkpoints were unreadable")
            return result
        if errors:
            step, e = errors[0]
            raise CheckpointError(
                f"none of the {len(steps)} checkpoints in {self.directory} (steps "
                f"{', '.join(map(str, steps))}) can be restored; the newest failed with "
                f"{type(e).__name__}: {_first_line(e)}. Restore the files, or move the "
                f"directory aside to start this run over") from e
        return None

    def _move_aside(self, steps, log) -> None:
        """Unreadable step directories -> `<directory>.unreadable/<step>` (process 0 moves,
        every process then waits for it and re-reads the step list)."""
        aside = self.directory.parent / (self.directory.name + ".unreadable")
        if jax.process_index() == 0:
            aside.mkdir(parents=True, exist_ok=True)
            for step in steps:
                target = aside / str(step)
                n = 1
                while target.exists():  # an earlier failure at the same step: keep both
                    target, n = aside / f"{step}.{n}", n + 1
                (self.directory / str(step)).rename(target)
                log(f"WARNING: moved unreadable checkpoint step {step} to {target}")
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("mmar_checkpoint_move_aside")
        self.manager.reload()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
