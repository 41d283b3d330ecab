"""The synthetic-lesion strategies, in one table: which mask generator (if any) makes a strategy's masks and
whether the inpainter paints them in. Segmentation training, the nnU-Net export and the comparisons read it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.seeding import DEFAULT_SEED


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
    Strategy("ganmask", "ganmask", True, "conditional-GAN masks (sphere cue, tissue, noise), painted by the inpainter"),
    Strategy("copy_paste", None, False, "real training lesions carved out and pasted into healthy scans"),
)}
SYNTHETIC = tuple(name for name in STRATEGIES if name != "none")
WHOLE_SCAN = tuple(name for name, s in STRATEGIES.items() if s.mask_generator)  # generator + inpainter strategies


def strategy(name: str, allowed: tuple[str, ...] = tuple(STRATEGIES)) -> Strategy:
    if name not in allowed:
        raise LesiongenError(f"unknown synthetic strategy '{name}'; choose one of {', '.join(allowed)}")
    return STRATEGIES[name]


_SEG_VARIANT = re.compile(r"^seg_(?P<strategy>[a-z_]+?)(?:_r(?P<ratio>[0-9.]+))?(?:_s(?P<seed>\d+))?$")


@dataclass(frozen=True)
class SegVariant:
    """A segmentation model's place in a comparison: strategy, synthetic ratio and training seed (None: default)."""

    strategy: str
    ratio: float = 1.0
    seed: int | None = None

    @classmethod
    def of(cls, strategy: str, ratio: float = 1.0, seed: int | None = None) -> "SegVariant":
        """The variant of a seg run: the default seed and, for real data only, any ratio are left out of its name."""
        return cls(strategy, 1.0 if strategy == "none" else float(ratio), None if seed == DEFAULT_SEED else seed)

    @property
    def name(self) -> str:
        """The results folder's trainer part: ``seg_diffmask``, ``seg_diffmask_r0.5``, ``seg_none_s2``."""
        ratio = f"_r{self.ratio:g}" if self.strategy != "none" and self.ratio != 1.0 else ""
        seed = f"_s{self.seed}" if self.seed is not None else ""
        return f"seg_{self.strategy}{ratio}{seed}"

    @property
    def label(self) -> str:
        """The strategy as a table shows it (``diffmask``, ``diffmask r0.5``)."""
        return self.strategy + (f" r{self.ratio:g}" if self.strategy != "none" and self.ratio != 1.0 else "")

    @classmethod
    def parse(cls, name: str) -> "SegVariant | None":
        """The variant of a folder's trainer part, or None when it is not a seg folder of a known strategy."""
        match = _SEG_VARIANT.match(name)
        if not match or match["strategy"] not in STRATEGIES:
            return None
        return cls(match["strategy"], float(match["ratio"] or 1.0), int(match["seed"]) if match["seed"] else None)
