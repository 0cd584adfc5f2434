"""Datasets, the image cache, prepare-data and image helpers."""
