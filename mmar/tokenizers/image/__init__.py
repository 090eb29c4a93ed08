"""mmar.tokenizers.image."""
