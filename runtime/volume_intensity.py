"""Intensity policies for volumes, as a bundle's manifest declares them (``volume.intensity``).

Each one is the NumPy twin of a MONAI transform (the tests compare them):

- ``none``: voxels as stored (float32)
- ``minmax``: the volume's own range to 0-1 (``ScaleIntensity(minv=0, maxv=1)``)
- ``divide_max``: divided by the volume's maximum
- ``zscore``: ``(x - mean) / std`` over the volume (``NormalizeIntensity``)
- ``percentile``: the ``lower``..``upper`` percentiles to 0-1, clipped (``ScaleIntensityRangePercentiles``)
- ``hu_window``: CT Hounsfield units ``a_min``..``a_max`` to 0-1, clipped (``ScaleIntensityRange``)

A multi-channel volume's statistics (range, mean/std, percentiles, maximum) are taken over all its channels
together, as MONAI's transforms do by default (``channel_wise=False``); ``channel_wise=True`` takes them per
channel (:meth:`IntensityPolicy.channels`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from .errors import ModelFormatError

Policy = Literal["none", "minmax", "divide_max", "zscore", "percentile", "hu_window"]


@dataclass(frozen=True)
class IntensityPolicy:
    policy: Policy = "none"
    lower: float = 0.5  # percentile: the low and high percentiles
    upper: float = 99.5
    a_min: float = -1000.0  # hu_window: the window in Hounsfield units
    a_max: float = 1000.0
    channel_wise: bool = False  # statistics per channel (MONAI's channel_wise=True) or over all channels

    def __post_init__(self) -> None:
        if self.policy not in get_args(Policy):
            raise ModelFormatError(f"volume.intensity.policy must be one of {', '.join(get_args(Policy))}; "
                                   f"got {self.policy!r}")
        if not 0 <= self.lower < self.upper <= 100:
            raise ModelFormatError(f"volume.intensity needs 0 <= lower < upper <= 100; got {self.lower}, {self.upper}")
        if not self.a_min < self.a_max:
            raise ModelFormatError(f"volume.intensity needs a_min < a_max; got {self.a_min}, {self.a_max}")
        if not isinstance(self.channel_wise, bool):
            raise ModelFormatError(f"volume.intensity.channel_wise must be true or false; got {self.channel_wise!r}")

    def channels(self, data: np.ndarray) -> np.ndarray:
        """A channel-first (C, X, Y, Z) stack normalised per channel or over all of them (``channel_wise``)."""
        if self.channel_wise:
            return np.stack([self(c) for c in data])
        return self(data)

    def __call__(self, data: np.ndarray) -> np.ndarray:
        x = np.asarray(data, np.float32)
        if self.policy == "minmax":
            return _stretch(x, float(x.min()), float(x.max()))
        if self.policy == "divide_max":
            top = float(x.max())
            return x / top if top != 0 else x.copy()
        if self.policy == "zscore":
            std = float(x.std())
            return (x - x.mean()) / (std if std != 0 else 1.0)
        if self.policy == "percentile":
            lo, hi = np.percentile(x, (self.lower, self.upper))
            return np.clip(_stretch(x, float(lo), float(hi)), 0, 1)
        if self.policy == "hu_window":
            return np.clip(_stretch(x, self.a_min, self.a_max), 0, 1)
        return x.copy() if x is data else x


def _stretch(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi - lo == 0:
        return x - lo
    return (x - lo) / (hi - lo)
