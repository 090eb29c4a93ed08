"""`mmar eval`: one `report.json` that judges a run on samples, not on loss alone.

Keys: tokenizer_reconstruction_accuracy (judge on autoencoder reconstructions of held-out
images), codebook_usage, t2i_accuracy / i2t_accuracy (held-out scenes),
t2i_accuracy_unseen_combos (colour-shape pairs never seen in training), loss_text /
loss_image / accuracy_text / accuracy_image (held-out next-token metrics, both directions),
loss (the same NLL over both modalities' tokens),
train_seconds (tokenizer + decoder), and the checkpoint steps they came from.

Beside them: perplexity_text / perplexity_image (exp of the losses), tokenizer_psnr and
codebook_perplexity (tokenizer metrics, mmar/tokenizers/image), geneval_<category> and
geneval_unseen_<category> (mmar/eval/geneval.py); with `eval.tasks` naming them,
next_image_accuracy (interleaved stories), digits_accuracy beside digits_classifier_accuracy
(mmar/eval/digits.py), frechet_builtin (generated vs real held-out images, built-in
features) and, with `eval.inception_weights`, fid_inception (mmar/eval/frechet.py).
"""
from __future__ import annotations

import pathlib

import jax
import numpy as np

from mmar import config as config_lib
from mmar import rundir
from mmar.data import orders, sequences, synthetic
from mmar.eval import digits, frechet, geneval, judge
from mmar.jobs import sample as sample_job
from mmar.jobs.sample import Models
from mmar.tokenizers.image import losses, quantizers
from mmar.train import loss as loss_lib


def reconstruction_accuracy(cfg, models: Models, split: str = "test") -> dict:
    spec = synthetic.ShapesSpec.from_config(cfg.data)
    tokenizer, recs = models.tokenizer, models.records(split)
    codes = tokenizer.encode(np.stack([r["image"] for r in recs]))
    recon = tokenizer.decode(codes)
    correct = [judge.judge_image(img, r["caption"], spec) for img, r in zip(recon, recs)]
    used = len(np.unique(codes)) / tokenizer.num_codes
    real = np.stack([r["image"] for r in recs]).astype(np.float32) / 127.5 - 1.0
    mse = np.mean((recon.astype(np.float32) / 127.5 - 1.0 - real) ** 2)
    usage = quantizers.codebook_usage(np.asarray(codes), tokenizer.num_codes)
    return {"tokenizer_reconstruction_accuracy": float(np.mean(correct)),
            "codebook_usage": float(used),
            "tokenizer_psnr": float(losses.psnr_from_mse(mse)),
            "codebook_perplexity": float(usage["perplexity"])}


def heldout_loss(cfg, models: Models, split: str = "test") -> dict:
    """Per-modality NLL and accuracy on held-out pairs, each seen in both directions."""
    recs = models.records(split)
    codes = models.tokenizer.encode(np.stack([r["image"] for r in recs]))
    text = models.text
    rows = [sequences.pair_example(text.encode(r["caption"]), models.vocab.image_body(c),
                                   models.vocab, cfg.data.seq_len, image_first=first)
            for r, c in zip(recs, codes) for first in (False, True)]
    # Other image orders are scored in raster order (RandAR: P c pairs in raster order).
    order = config_lib.image_order(cfg)
    rows = [orders.raster_row(row, models.vocab, order, cfg.data.seq_len) for row in rows]
    batch = {k: np.stack([row[k] for row in rows]) for k in rows[0]}

    @jax.jit
    def metrics(params, batch):
        logits = models.model_state.merge(params)(batch["tokens"], batch["positions"],
                                                  batch["segment_ids"], batch["modality"],
                                                  batch.get("targets"))
        return loss_lib.decoder_loss(logits, batch)[1]

    m = jax.device_get(metrics(models.params, batch))
    out = {k: float(m[k]) for k in ("loss_text", "loss_image", "accuracy_text",
                                    "accuracy_image")}
    out["loss"] = float(m["nll"])  # both modalities, weighted by their scored tokens
    out.update(perplexity_text=float(np.exp(out["loss_text"])),
               perplexity_image=float(np.exp(out["loss_image"])))
    return out


def sample_metrics(cfg, models: Models, samples: dict) -> dict:
    """The metrics beside the judge accuracies: GenEval categories, stories, digits, FD."""
    out = geneval.summarize([r["categories"] for r in samples["t2i_test"]])
    out.update(geneval.summarize([r["categories"] for r in samples["t2i_unseen"]],
                                 "geneval_unseen_"))
    if "stories_test" in samples:
        out["next_image_accuracy"] = float(np.mean(
            [r["correct"] for r in samples["stories_test"]]))
    if "digits_test" in samples:
        recs = samples["digits_test"]
        out["digits_accuracy"] = float(np.mean([r["correct"] for r in recs]))
        out["digits_classifier_accuracy"] = digits.classifier(cfg.data.image_size).accuracy
    if "frechet" in cfg.eval.tasks:
        real = np.stack([r["image"] for r in models.records("test")])
        fake = models.images["t2i_test"]
        out["frechet_builtin"] = frechet.distance(fake, real)
        if cfg.eval.inception_weights:
            features = frechet.InceptionFeatures(cfg.eval.inception_weights)
            out["fid_inception"] = frechet.distance(fake, real, features)
    return out


def run(cfg, workdir, log=print) -> dict:
    workdir = pathlib.Path(workdir)
    models = Models(rundir.load(cfg, workdir))
    report = reconstruction_accuracy(cfg, models)
    log(f"[eval] tokenizer reconstruction accuracy "
        f"{report['tokenizer_reconstruction_accuracy']:.3f}, codebook usage "
        f"{report['codebook_usage']:.3f}")
    report.update(heldout_loss(cfg, models))
    samples = sample_job.run(cfg, workdir, log=log, models=models)
    report["t2i_accuracy"] = float(np.mean([r["correct"] for r in samples["t2i_test"]]))
    report["t2i_accuracy_unseen_combos"] = float(np.mean(
        [r["correct"] for r in samples["t2i_unseen"]]))
    report["i2t_accuracy"] = float(np.mean([r["correct"] for r in samples["i2t_test"]]))
    report.update(sample_metrics(cfg, models, samples))
    report["train_seconds"] = rundir.train_seconds(workdir)
    report["num_examples"] = len(samples["t2i_test"])
    report["decoder_step"] = int(models.step)
    report["tokenizer_step"] = int(models.tokenizer.step)
    rundir.write_json(workdir / rundir.REPORT, report)
    log("[eval] " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in report.items()))
    return report
