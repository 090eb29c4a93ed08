"""mmar.data."""
