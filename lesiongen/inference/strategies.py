"""The synthetic-lesion strategies, in one table: which mask generator (if any) makes a strategy's masks and
whether the inpainter paints them in. Segmentation training, the nnU-Net export and the comparisons read it."""

from __future__ import annotations

from dataclasses import dataclass

from lesiongen.utilities.errors import LesiongenError


@dataclass(frozen=True)
class Strategy:
    name: str
    mask_generator: str | None  # model kind of the mask generator; None: the strategy needs none
    inpainted: bool  # lesions painted by the inpainter (else pasted from real training lesions)
    description: str


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("none", None, False, "real training cases only"),
    Strategy("sphere", "spheremask", True, "ellipsoids from the sphere priors, painted by the inpainter"),
    Strategy("unetmask", "unetmask", True, "tissue-conditioned UNet masks, painted by the inpainter"),
    Strategy("diffmask", "diffmask", True, "sphere-conditioned diffusion masks, painted by the inpainter"),
    Strategy("copy_paste", None, False, "real training lesions carved out and pasted into healthy scans"),
)}
SYNTHETIC = tuple(name for name in STRATEGIES if name != "none")
WHOLE_SCAN = tuple(name for name, s in STRATEGIES.items() if s.mask_generator)  # generator + inpainter strategies


def strategy(name: str, allowed: tuple[str, ...] = tuple(STRATEGIES)) -> Strategy:
    if name not in allowed:
        raise LesiongenError(f"unknown synthetic strategy '{name}'; choose one of {', '.join(allowed)}")
    return STRATEGIES[name]
