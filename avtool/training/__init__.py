"""Datasets, preprocessing and training loops."""
