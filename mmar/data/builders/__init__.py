"""mmar.data.builders."""
