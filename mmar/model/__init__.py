"""mmar.model: the decoder (transformer.py), its layers (layers.py), the attention kernels
(attention.py, splash.py), Mixture-of-Transformers blocks (mot.py) and FLOPs (flops.py)."""
from mmar.model.transformer import Decoder

__all__ = ["Decoder"]
