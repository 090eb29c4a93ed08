"""The decoder as a task of the one trainer (mmar/train/step.py `Task`): its module, loss,
batch layout and FLOPs.

`mmar train` trains it (mmar/jobs/train.py); `mmar train --dry-run` compiles its step
(dry_run.py); a run directory's decoder checkpoint is loaded as it (mmar/rundir.py).
With `model.lora.rank` > 0 the task trains the LoRA adapters only (`trainable`, see
mmar/model/lora.py): the base weights are frozen and the optimizer holds no state for them.
"""
from __future__ import annotations

from mmar.model import flops
from mmar.model import lora
from mmar.model.transformer import Decoder
from mmar.train import loss as loss_lib
from mmar.train import step as step_lib

ROW_AXES = ("batch", "length")
BATCH_AXES = {k: ROW_AXES for k in ("tokens", "positions", "segment_ids", "modality",
                                    "loss_weights")}


def decoder_task(cfg) -> step_lib.Task:
    model_cfg, seq_len = cfg.model, cfg.data.seq_len
    batch_axes = dict(BATCH_AXES)
    if model_cfg.num_targets:  # RAR rows carry targets (mmar/data/orders.py)
        batch_axes["targets"] = ROW_AXES

    def loss_fn(model, batch):
        logits = model(batch["tokens"], batch["positions"], batch["segment_ids"],
                       batch["modality"], batch.get("targets"))
        return loss_lib.decoder_loss(logits, batch, z_loss=cfg.train.z_loss)

    return step_lib.Task(
        name="decoder",
        make_module=lambda rngs: Decoder(model_cfg, rngs=rngs),
        loss_fn=loss_fn,
        batch_axes=batch_axes,
        tokens_per_example=seq_len,
        flops_per_example=seq_len * flops.flops_per_token(model_cfg, seq_len),
        batch_weight=loss_lib.scored_weight,
        trainable=lora.LoRAParam if model_cfg.lora.rank else None,
    )
