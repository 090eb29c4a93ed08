"""Code shared by several test directories, imported as `tests.helpers.<module>`.

pytest.ini puts the repository root on the import path (`pythonpath = .`), so these modules
import the same way from every test file, whichever directory pytest collects first.

- model_configs: small decoder configs derived from the `test` preset of configs/t2i_shapes.py.
- export_runs: random-weight run directories (decoder + image tokenizer checkpoints) for the
  export tests.
"""
