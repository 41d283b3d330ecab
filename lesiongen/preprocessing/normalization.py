"""Intensity normalisation per channel, following the plans."""

from __future__ import annotations

import numpy as np

from lesiongen.planning.plans import CT, NO_NORM, RESCALE_0_1, ZSCORE, ChannelNormalization


def normalize(images: np.ndarray, schemes: list[ChannelNormalization], brain: np.ndarray) -> np.ndarray:
    """Normalise a (c, z, y, x) float32 array in place and return it.

    With ``use_brain_mask`` the statistics come from the brain only and everything outside is set to 0 (nnU-Net
    does the same with its nonzero mask), so background never leaks into the statistics or the network input.
    """
    for scheme in schemes:
        channel = images[scheme.channel]
        if scheme.scheme == ZSCORE:
            region = channel[brain] if scheme.use_brain_mask and brain.any() else channel
            mean, std = float(region.mean()), float(region.std())
            channel -= mean
            channel /= max(std, 1e-8)
            if scheme.use_brain_mask:
                channel[~brain] = 0
        elif scheme.scheme == CT:
            np.clip(channel, scheme.clip_lower, scheme.clip_upper, out=channel)
            channel -= scheme.mean
            channel /= max(scheme.std, 1e-8)
        elif scheme.scheme == RESCALE_0_1:
            low, high = float(channel.min()), float(channel.max())
            channel -= low
            channel /= max(high - low, 1e-8)
        elif scheme.scheme != NO_NORM:
            raise ValueError(f"unknown normalisation scheme {scheme.scheme!r}")
    return images
