"""Which views of an orbit the quality probe's encoder reads (vf3d.models.quality_filter).

NumPy only: the synthesis stage that picks those views out for the probe (`ForegroundMasks`, a
CPU actor) starts without importing torch.
"""

from __future__ import annotations

import numpy as np


def evenly_spaced_views(num_available: int, num_wanted: int) -> np.ndarray:
    """Indices of `num_wanted` views spread evenly around an orbit of `num_available` views,
    starting at view 0: floor(i·V/n). With fewer views than wanted, views repeat.

    Returns:
        int64 [num_wanted].
    """
    return np.arange(num_wanted, dtype=np.int64) * num_available // num_wanted
