"""mmar.tokenizers."""
