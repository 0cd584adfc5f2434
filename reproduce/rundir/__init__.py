"""The run directory: its files, checkpoints and lease."""
