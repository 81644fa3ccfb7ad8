"""Downstream tuning on frozen (or black-box) features."""

from nml.tuning.nmtune import NMTuneHead, nmtune_regularizers

__all__ = ["NMTuneHead", "nmtune_regularizers"]
