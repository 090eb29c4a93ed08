"""mmar: one decoder that reads and writes interleaved text and images as discrete tokens."""
import os as _os

# TensorFlow is imported by TFDS and CLU's TensorBoard writer; keep its C++ logging quiet.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # mmar computes nothing in TensorFlow

__version__ = "0.1.0"
