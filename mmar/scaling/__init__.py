"""Scaling-law sweeps: sweep.py plans an IsoFLOP grid of ordinary runs, runner.py runs it
(`mmar sweep`) or prints it for a pod, fit.py fits power laws and L(N, D), plot.py and
report.py draw and write them. See docs/scaling.md."""
