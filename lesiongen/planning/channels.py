"""The input channels of every network, defined once: the planner sizes the networks from these layouts and the
models assemble their inputs with them, so the two can never disagree.

A layout is an ordered list of named parts with a channel count each; ``assemble`` concatenates arrays or tensors
part by part and checks every part's channel count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChannelLayout:
    parts: tuple[tuple[str, int], ...]  # (name, channels) in input order; parts with 0 channels are absent

    @property
    def total(self) -> int:
        return sum(n for _, n in self.parts)

    @property
    def names(self) -> list[str]:
        return [name for name, n in self.parts if n > 0]

    def offsets(self) -> dict[str, slice]:
        """Channel slice of each present part."""
        out, start = {}, 0
        for name, n in self.parts:
            if n > 0:
                out[name] = slice(start, start + n)
                start += n
        return out

    def assemble(self, values: Mapping[str, Any], concatenate) -> Any:
        """``concatenate([values[part] for part in order])`` after checking each part's channel count (axis 1).

        ``concatenate`` is ``torch.cat`` or ``numpy.concatenate`` (called with ``axis``/``dim`` 1 by the caller's
        lambda). Missing or unexpected parts are errors, so a model cannot silently feed its network a wrong input.
        """
        expected = {name: n for name, n in self.parts if n > 0}
        if set(values) != set(expected):
            raise ValueError(f"network input parts {sorted(values)} do not match the layout {self.names}")
        for name, n in expected.items():
            if values[name].shape[1] != n:
                raise ValueError(f"network input part '{name}' has {values[name].shape[1]} channels, the layout {n}")
        return concatenate([values[name] for name in self.names])


def segmentation_input(n_channels: int) -> ChannelLayout:
    return ChannelLayout((("images", n_channels),))


def diffmask_input(n_lesion_classes: int, has_tissue: bool) -> ChannelLayout:
    """The noisy mask (one channel per lesion class), the sphere control, the tissue map when there is one."""
    return ChannelLayout((("noisy", n_lesion_classes), ("control", 1), ("tissue", int(has_tissue))))


def unetmask_input(n_channels: int, has_tissue: bool) -> ChannelLayout:
    """The lesion-filled image, the tissue map when there is one, the sphere cue."""
    return ChannelLayout((("images", n_channels), ("tissue", int(has_tissue)), ("control", 1)))


GAN_NOISE_CHANNELS = 4  # ganmask's noise input: smooth random fields that make repeated draws differ


def ganmask_input(has_tissue: bool) -> ChannelLayout:
    """ganmask's generator: the noise fields, the sphere cue, the tissue map when there is one."""
    return ChannelLayout((("noise", GAN_NOISE_CHANNELS), ("control", 1), ("tissue", int(has_tissue))))


def ganmask_discriminator_input(n_lesion_classes: int, has_tissue: bool) -> ChannelLayout:
    """ganmask's discriminator: a mask (one channel per lesion class, real or generated) with its condition."""
    return ChannelLayout((("mask", n_lesion_classes), ("control", 1), ("tissue", int(has_tissue))))


def inpaint_input(n_channels: int, n_lesion_classes: int) -> ChannelLayout:
    """Noisy image, known image (edit region blanked), lesion mask per class, heal region (pseudo-healthy mode), the
    texture condition broadcast as channels (per class and image channel) and the "no condition" flag of CFG."""
    return ChannelLayout((("noisy", n_channels), ("known", n_channels), ("lesion", n_lesion_classes), ("heal", 1),
                          ("condition", n_channels * n_lesion_classes), ("unconditioned", 1)))
