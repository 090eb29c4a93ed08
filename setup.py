"""mmar: multimodal autoregressive pretraining in JAX.

Exact, tested versions live in requirements.txt (what `make install` uses); the ranges
below are what a downstream project that depends on mmar needs.
"""
from setuptools import find_packages, setup

setup(
    name="mmar",
    version="0.1.0",
    description="Multimodal discrete-token autoregressive pretraining in JAX (Flax NNX).",
    python_requires=">=3.11",
    packages=find_packages(include=["mmar", "mmar.*"]),
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "grain>=0.2.18",
        "tensorflow-datasets>=4.9.10",
        "array-record>=0.8",
        "ml-collections>=1.1",
        "clu>=0.0.12",
        "tensorflow-cpu>=2.21",
        "tensorboard>=2.21",
        "numpy>=2",
        "pillow",
        "scipy",
        "tokenizers>=0.21",   # text tokenizers: BPE / unigram, tokenizer.json files
    ],
    extras_require={"test": ["pytest"],
                    # loading exports in transformers (exact pins: requirements-export.txt)
                    "export": ["torch>=2.4", "transformers>=5.0", "safetensors>=0.4"]},
    entry_points={"console_scripts": ["mmar=mmar.cli:main"]},
)
