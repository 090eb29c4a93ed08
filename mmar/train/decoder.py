"""The decoder job: encode the training images with the trained tokenizer, then train.

Writes `<workdir>/decoder/` (checkpoints, metrics.jsonl, TensorBoard events, summary.json).
"""
from __future__ import annotations

from etils import epath

from mmar import config as config_lib
from mmar.data import pipeline, pretokenize, sources, tokens
from mmar.model import flops
from mmar.model.transformer import Decoder
from mmar.parallel import mesh as mesh_lib
from mmar.tokenizers.image import train as tokenizer_train
from mmar.train import loss as loss_lib
from mmar.train import metrics as metrics_lib
from mmar.train import step as step_lib
from mmar.train import trainer

SUBDIR = "decoder"
ROW_AXES = ("batch", "length")
BATCH_AXES = {k: ROW_AXES for k in ("tokens", "positions", "segment_ids", "modality",
                                    "loss_weights")}


def decoder_task(cfg) -> step_lib.Task:
    model_cfg, seq_len = cfg.model, cfg.data.seq_len
    batch_axes = dict(BATCH_AXES)
    if model_cfg.get("num_targets", 0):  # RAR rows carry targets (mmar/data/orders.py)
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
    )


def train_batches(cfg, workdir, vocab, log=print):
    """The decoder's batches: from token shards (`data.pretokenized`, checked against this
    run's tokenizer) or encoded in memory at start by the trained tokenizer."""
    kw = dict(global_batch=cfg.train.batch_size, seed=cfg.seed)
    pair_kw = dict(kw, total_steps=cfg.train.steps)  # RAR's anneal schedule (orders.py)
    if cfg.data.get("pretokenized"):  # `mmar pretokenize` shards (mmar/data/pretokenize.py)
        shards = pretokenize.open_for_training(cfg, workdir)
        log("[data] token shards: " + ", ".join(f"{n} ({len(s)} documents)"
                                                for n, s in shards.items()))
        if cfg.data.get("mixture"):
            return sources.mixture_batches(cfg.data, None, vocab, documents=shards, log=log,
                                           **kw)
        return pipeline.decoder_batches(tokens.CaptionView(shards["shapes"]), vocab,
                                        cfg.data, **pair_kw)
    tokenizer = tokenizer_train.ImageTokenizer(cfg, workdir)
    if cfg.data.get("mixture"):  # several sources, packed (mmar/data/sources.py)
        return sources.mixture_batches(cfg.data, tokenizer.encode, vocab, log=log, **kw)
    captions, codes = tokenizer_train.encode_source(
        tokenizer, pipeline.shapes_split(cfg.data, "train"), log=log)
    source = pipeline.CaptionCodeSource(captions, codes)
    return pipeline.decoder_batches(source, vocab, cfg.data, **pair_kw)


def run(cfg, workdir, log=print) -> trainer.Result:
    workdir = epath.Path(workdir)
    vocab = config_lib.make_vocab(cfg)
    batches = train_batches(cfg, workdir, vocab, log=log)
    mesh, rule_table = mesh_lib.from_config(cfg.mesh)
    result = trainer.train(decoder_task(cfg), cfg=cfg.train, mesh=mesh, rule_table=rule_table,
                           data_iter=batches, workdir=workdir / SUBDIR, config=cfg,
                           seed=cfg.seed, checkpoint_every=cfg.checkpoint.every_steps,
                           max_to_keep=cfg.checkpoint.max_to_keep,
                           peak_flops=metrics_lib.measure_peak_flops(), log=log)
    trainer.write_summary(workdir / SUBDIR / "summary.json", result, log=log)
    return result
