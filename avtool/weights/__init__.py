"""Registry of model files, download, verification, local layout, tiny checkpoints."""
