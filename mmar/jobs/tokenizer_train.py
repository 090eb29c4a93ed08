"""`mmar tokenizer-train`: train the image tokenizer -> WORKDIR/tokenizer/ (checkpoints,
metrics.jsonl, TensorBoard events, summary.json), then check it on held-out images
(check.json; `image_tokenizer.check`, mmar/tokenizers/image/check.py): a tokenizer whose
codes lose what the images hold stops the job, so no decoder trains on it. The task itself (model, loss, optimizer
groups) is mmar/tokenizers/image/train.py; later jobs load the result with mmar/rundir.py.
"""
from __future__ import annotations

from etils import epath

from mmar import rundir
from mmar.data import pipeline
from mmar.parallel import mesh as mesh_lib
from mmar.tokenizers.image import check as check_lib
from mmar.tokenizers.image.train import tokenizer_task
from mmar.train import trainer

CHECK_FILE = "check.json"   # WORKDIR/tokenizer/check.json: what the check measured


def run(cfg, workdir, log=print) -> trainer.Result:
    workdir = epath.Path(workdir) / rundir.TOKENIZER
    source = pipeline.ImageArraySource(pipeline.shapes_split(cfg.data, "train"), log=log)
    train_cfg = cfg.image_tokenizer.train
    batches = pipeline.image_batches(source, global_batch=train_cfg.batch_size,
                                     seed=cfg.seed, num_workers=cfg.data.num_workers)
    mesh, rule_table = mesh_lib.from_config(cfg.mesh)
    result = trainer.train(tokenizer_task(cfg), cfg=train_cfg, mesh=mesh,
                           rule_table=rule_table,
                           data_iter=batches, workdir=workdir, config=cfg, seed=cfg.seed,
                           checkpoint_every=train_cfg.steps, log=log)
    trainer.write_summary(workdir / rundir.SUMMARY, result, log=log)
    # Not handed to the decoder before it is measured (mmar/tokenizers/image/check.py).
    if cfg.image_tokenizer.check.mode != "off":
        tokenizer = rundir.load_tokenizer(cfg, workdir.parent)
        check_lib.enforce(tokenizer, cfg, log=log, path=workdir / CHECK_FILE)
    return result
