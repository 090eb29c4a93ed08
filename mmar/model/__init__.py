"""mmar.model: the decoder (transformer.py), its layers (layers.py) and FLOPs (flops.py)."""
from mmar.model.transformer import Decoder

__all__ = ["Decoder"]
