"""verl plugin entry point (filled in by the verl integration)."""
