"""Package data: bundled synonym dictionaries."""
