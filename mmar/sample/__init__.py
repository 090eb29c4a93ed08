"""mmar.sample."""
