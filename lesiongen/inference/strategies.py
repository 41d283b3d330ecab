"""The synthetic-lesion strategies, in one table: which mask generator (if any) makes a strategy's masks and
whether the inpainter paints them in. Segmentation training, the nnU-Net export and the comparisons read it."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from lesiongen.planning.plans import SEG_3D, SEGMENTATION_STAGES
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
    # copy_paste's lesion shapes and places with the inpainter's appearance: separates what masks and what the
    # inpainter contribute to a strategy's benefit
    Strategy("realmask", None, True, "real training lesion masks, drawn as copy_paste draws them, painted by the "
             "inpainter"),
)}
SYNTHETIC = tuple(name for name in STRATEGIES if name != "none")
DEFAULT_STRATEGIES = ("none", "copy_paste", "sphere", "diffmask")  # what lesiongen_benefit compares by default
WHOLE_SCAN = tuple(name for name, s in STRATEGIES.items() if s.mask_generator)  # generator + inpainter strategies


def strategy(name: str, allowed: tuple[str, ...] = tuple(STRATEGIES)) -> Strategy:
    if name not in allowed:
        raise LesiongenError(f"unknown synthetic strategy '{name}'; choose one of {', '.join(allowed)}")
    return STRATEGIES[name]


_SEG_VARIANT = re.compile(r"^seg_(?P<strategy>[a-z_]+?)(?:_r(?P<ratio>[0-9.]+))?(?:_s(?P<seed>\d+))?"
                          r"(?:_(?P<configuration>" + "|".join(c for c in SEGMENTATION_STAGES if c != SEG_3D) + r"))?$")


@dataclass(frozen=True)
class SegVariant:
    """A segmentation model's place in a comparison: strategy, synthetic ratio, training seed (None: default) and
    segmentation configuration (3d, or 2d for anisotropic data)."""

    strategy: str
    ratio: float = 1.0
    seed: int | None = None
    configuration: str = SEG_3D

    @classmethod
    def of(cls, strategy: str, ratio: float = 1.0, seed: int | None = None,
           configuration: str = SEG_3D) -> "SegVariant":
        """The variant of a seg run: the default seed and, for real data only, any ratio are left out of its name."""
        return cls(strategy, 1.0 if strategy == "none" else float(ratio), None if seed == DEFAULT_SEED else seed,
                   configuration)

    @property
    def name(self) -> str:
        """The results folder's trainer part: ``seg_diffmask``, ``seg_diffmask_r0.5``, ``seg_none_s2``, and for the
        2d configuration ``seg_none_2d`` (3d, the default, is left out, so 3d folders keep their names)."""
        ratio = f"_r{self.ratio:g}" if self.strategy != "none" and self.ratio != 1.0 else ""
        seed = f"_s{self.seed}" if self.seed is not None else ""
        configuration = f"_{self.configuration}" if self.configuration != SEG_3D else ""
        return f"seg_{self.strategy}{ratio}{seed}{configuration}"

    @property
    def label(self) -> str:
        """The strategy as a table shows it (``diffmask``, ``diffmask r0.5``, ``none 2d``)."""
        return self.strategy + (f" r{self.ratio:g}" if self.strategy != "none" and self.ratio != 1.0 else "") + \
            (f" {self.configuration}" if self.configuration != SEG_3D else "")

    @classmethod
    def parse(cls, name: str) -> "SegVariant | None":
        """The variant of a folder's trainer part, or None when it is not a seg folder of a known strategy."""
        match = _SEG_VARIANT.match(name)
        if not match or match["strategy"] not in STRATEGIES:
            return None
        return cls(match["strategy"], float(match["ratio"] or 1.0), int(match["seed"]) if match["seed"] else None,
                   match["configuration"] or SEG_3D)


def seg_variant_name(synthetic: str, configuration: str | None = None) -> str:
    """The seg model folder's trainer part for a command's ``--synthetic`` (STRATEGY[_rRATIO][_sSEED]) and ``-c``."""
    variant = SegVariant.parse(f"seg_{synthetic}")
    if variant is None:
        raise LesiongenError(f"--synthetic {synthetic}: not a seg variant (STRATEGY, STRATEGY_rRATIO, "
                             f"STRATEGY_sSEED; strategies {', '.join(STRATEGIES)})")
    return dataclasses.replace(variant, configuration=configuration or variant.configuration).name
