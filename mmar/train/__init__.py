"""mmar.train."""
