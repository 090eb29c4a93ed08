"""Checkpoint export and import (docs/export.md).

- `hf.py`: an mmar decoder checkpoint -> a transformers directory (Llama, or Qwen3 when
  QK-norm is on), streamed from Orbax into safetensors shards; or mmar's own layout.
- `assets.py`: the files around the weights: byte-level tokenizer.json, generation config,
  the image tokenizer (safetensors + JSON) and `ImageDecoder`, which turns generated code
  ids back into images.
- `import_hf.py`: a transformers Llama / Qwen3 checkpoint -> mmar parameters, with the
  vocabulary extended by mmar's special and image-code ids.
- `orbax_reader.py`, `safetensors_io.py`: the streaming halves (one tensor, or one layer of a
  stacked tensor, in memory at a time).
"""
