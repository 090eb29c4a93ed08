"""The command-line jobs: one module per `mmar` command, each a `run(cfg, workdir, log)` (or
the command's own `main(argv)`) that composes the library packages.

Only `mmar/cli.py` imports these modules (lazily: `mmar --help` must not load JAX); no
library module imports them (tests/test_layering.py). A job reads and writes a run
directory through `mmar.rundir`.
"""
