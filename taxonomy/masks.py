"""The mask contract, in one place: every mask the toolkit writes or reads (`masks/`, shards, Pi-Seg
training and evaluation, exports) is single-band uint8, a pixel's value is its class index in the
taxonomy's order, and 255 marks unlabeled pixels.

255 is fixed rather than configurable because masks are uint8 end to end: a taxonomy therefore holds
at most 255 categories (ids 0-254). See docs/architecture.md, "Masks".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy only when a mask is checked: the taxonomy loader imports this module too
    import numpy as np

IGNORE_INDEX = 255  # the mask value of unlabeled pixels
MAX_CATEGORIES = IGNORE_INDEX  # class ids 0-254


def values_outside(mask: np.ndarray, classes: int) -> list[int]:
    """The values in `mask` that are neither a class index below `classes` nor IGNORE_INDEX, sorted;
    an empty list means the mask keeps the contract. Callers word the error for their own file."""
    import numpy as np

    return np.setdiff1d(np.unique(mask), [*range(classes), IGNORE_INDEX]).tolist()
