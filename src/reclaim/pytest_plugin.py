"""reclaim's pytest plugin (being built for issue 4)."""
