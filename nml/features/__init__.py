"""Frozen features: extraction, the on-disk cache, and a DataModule that tunes on it."""
