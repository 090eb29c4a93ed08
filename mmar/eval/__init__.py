"""mmar.eval."""
