"""One rule for every seed lesiongen derives: ``derive_seed(*parts)``.

A seed for a sub-task (a DDP rank, a synthetic case, a retry, a case ID) is drawn from numpy's ``SeedSequence`` of
the parent seed and the parts that name the sub-task, so different parts give statistically independent streams
and no two formulas can collide the way ``seed * prime + index`` schemes do.
"""

from __future__ import annotations

import hashlib

import numpy as np

SEED_BITS = 31  # seeds fit a signed 32-bit integer: torch, numpy and batchgenerators all accept them
DEFAULT_SEED = 12345  # the seed of every command that takes --seed, unless told otherwise


def _entropy(part: int | str) -> int:
    if isinstance(part, (bool, np.bool_)):
        raise TypeError("seed parts are integers or strings, not booleans")
    if isinstance(part, (int, np.integer)):
        value = int(part)
        # SeedSequence wants non-negative integers; keep negative seeds distinct from positive ones
        return 2 * value if value >= 0 else -2 * value - 1
    if isinstance(part, str):
        return int.from_bytes(hashlib.sha256(part.encode()).digest()[:8], "little")
    raise TypeError(f"seed parts are integers or strings, not {type(part).__name__}")


def derive_seed(*parts: int | str) -> int:
    """A seed in [0, 2**31) determined by ``parts`` (integers or strings), e.g. ``derive_seed(seed, "case", 3)``."""
    if not parts:
        raise ValueError("derive_seed needs at least one part")
    state = np.random.SeedSequence([_entropy(p) for p in parts]).generate_state(1, dtype=np.uint64)[0]
    return int(state % (1 << SEED_BITS))
