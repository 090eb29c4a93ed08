"""mmar.parallel."""
