"""RGB frames as numpy arrays, and their hand-over to PyAV."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["RgbArray"]

#: An ``(H, W, 3)`` ``uint8`` RGB image.
RgbArray = npt.NDArray[np.uint8]
