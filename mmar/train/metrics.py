"""Metric writers (CLU: TensorBoard event files + a JSONL log) and the progress line."""
from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from clu import metric_writers
from etils import epath


class JsonlWriter(metric_writers.MetricWriter):
    """One JSON object per write: {"step": n, "name": value, ...}, appended and flushed.

    Object stores (`gs://`) cannot append: there the file is rewritten whole on each write
    (a run's metrics are a few hundred kB), keeping what an earlier, resumed run wrote.
    """

    def __init__(self, path, *, append: bool | None = None):
        self.path = epath.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._remote = "://" in str(path) if append is None else not append
        if self._remote:
            self._text = self.path.read_text() if self.path.exists() else ""
        else:
            self._file = open(self.path, "a", encoding="utf-8")

    def write_scalars(self, step, scalars):
        row = {"step": int(step), **{k: float(np.asarray(v)) for k, v in scalars.items()}}
        line = json.dumps(row) + "\n"
        if self._remote:
            self._text += line
            self.path.write_text(self._text)
        else:
            self._file.write(line)
            self._file.flush()

    def write_summaries(self, step, values, metadata=None):
        pass

    def write_images(self, step, images):
        pass

    def write_videos(self, step, videos):
        pass

    def write_audios(self, step, audios, *, sample_rate):
        pass

    def write_texts(self, step, texts):
        pass

    def write_histograms(self, step, arrays, num_buckets=None):
        pass

    def write_pointcloud(self, step, point_clouds, *, point_colors=None, configs=None):
        pass

    def write_hparams(self, hparams):
        pass

    def flush(self):
        if not self._remote:
            self._file.flush()

    def close(self):
        if not self._remote:
            self._file.close()


def make_writer(logdir, *, is_main: bool = True) -> metric_writers.MetricWriter:
    """TensorBoard + JSONL (`metrics.jsonl`) in `logdir`, on the main process only."""
    if not is_main:
        return metric_writers.MultiWriter([])
    tb = metric_writers.create_default_writer(str(logdir), asynchronous=False)
    return metric_writers.MultiWriter([tb, JsonlWriter(epath.Path(logdir) / "metrics.jsonl")])


class Progress:
    """A one-line progress report: step, loss, step/s, tokens/s, MFU, ETA."""

    def __init__(self, total_steps: int, start_step: int = 0, name: str = "train"):
        self.total, self.name = total_steps, name
        self._last_t, self._last_s = time.perf_counter(), start_step

    def line(self, step: int, scalars: dict, *, tokens_per_step: int = 0,
             flops_per_step: float = 0.0, peak_flops: float = 0.0) -> str:
        now = time.perf_counter()
        dt, ds = now - self._last_t, step - self._last_s
        self._last_t, self._last_s = now, step
        rate = ds / dt if dt > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        parts = [f"[{self.name}] step {step}/{self.total}"]
        parts += [f"{k} {float(v):.4f}" for k, v in scalars.items() if k in _SHOWN]
        parts.append(f"{rate:.2f} step/s")
        if tokens_per_step:
            parts.append(f"{rate * tokens_per_step:,.0f} tok/s")
        if flops_per_step and peak_flops:
            parts.append(f"MFU {100 * rate * flops_per_step / peak_flops:.1f}%")
        parts.append(f"ETA {eta:.0f}s")
        return " | ".join(parts)


_SHOWN = ("loss", "loss_text", "loss_image", "accuracy_text", "accuracy_image", "recon_loss",
          "psnr")


def measure_peak_flops(n: int = 1024, dtype="float32", repeats: int = 5) -> float:
    """FLOP/s of a large jitted matmul on the default device, measured now.

    MFU on a CPU is reported against this, so the figure is a ratio that survives a noisy or
    throttled machine (docs/design_notes.md, "MFU on CPU").
    """
    a = jnp.ones((n, n), dtype)
    mm = jax.jit(lambda x: x @ x)
    mm(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(repeats):
        mm(a).block_until_ready()
    return repeats * 2 * n ** 3 / (time.perf_counter() - t0)
