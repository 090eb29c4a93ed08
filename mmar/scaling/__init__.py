"""Scaling-law sweeps: sweep.py plans an IsoFLOP grid of ordinary runs (`mmar sweep`,
mmar/jobs/sweep.py, runs it or prints it for a pod), fit.py fits power laws and L(N, D),
plot.py and report.py draw and write them. See docs/scaling.md."""
