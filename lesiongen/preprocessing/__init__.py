"""Preprocessing: crop, normalise, resample, save; lesion-centred patches."""
