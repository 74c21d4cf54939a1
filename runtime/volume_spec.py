"""The manifest's ``volume`` section: how a volume becomes the 3-D network's input and how it is run.

```json
"volume": {"layout": "ncdhw", "inference": "sliding_window",
           "window": {"roi_size": [64, 64, 64], "overlap": 0.25, "mode": "gaussian", "sigma_scale": 0.125,
                      "sw_batch_size": 2, "padding_mode": "constant", "cval": 0.0},
           "intensity": {"policy": "zscore"}, "size": null}
```

``inference="sliding_window"`` tiles the volume with ``window`` (MONAI's ``sliding_window_inference``);
``"resize"`` stretches the whole volume to ``size`` (a fixed-size model) and the probabilities back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from .errors import ModelFormatError
from .volume_intensity import IntensityPolicy
from .volume_window import WindowSpec

VolumeLayout = Literal["ncdhw", "ndhwc"]
Inference = Literal["sliding_window", "resize"]


@dataclass(frozen=True)
class VolumeSpec:
    layout: VolumeLayout = "ncdhw"
    inference: Inference = "sliding_window"
    window: WindowSpec | None = None
    size: tuple[int, int, int] | None = None  # resize: the model's fixed D, H, W
    intensity: IntensityPolicy = IntensityPolicy()

    def __post_init__(self) -> None:
        if self.layout not in get_args(VolumeLayout):
            raise ModelFormatError(f"volume.layout must be ncdhw or ndhwc; got {self.layout!r}")
        if self.inference not in get_args(Inference):
            raise ModelFormatError(f"volume.inference must be sliding_window or resize; got {self.inference!r}")
        if self.inference == "sliding_window" and self.window is None:
            raise ModelFormatError("volume.inference sliding_window needs volume.window (roi_size, overlap...)")
        if self.inference == "resize" and (self.size is None or len(self.size) != 3 or min(self.size) < 1):
            raise ModelFormatError(f"volume.inference resize needs volume.size [D, H, W]; got {self.size}")

    @property
    def model_size(self) -> tuple[int, int, int]:
        """The spatial size one network call sees."""
        return self.window.roi_size if self.inference == "sliding_window" else self.size  # type: ignore[return-value]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VolumeSpec:
        try:
            fields = dict(data)
            if fields.get("window") is not None:
                window = dict(fields["window"])
                window["roi_size"] = tuple(int(v) for v in window["roi_size"])
                fields["window"] = WindowSpec(**window)
            if fields.get("size") is not None:
                fields["size"] = tuple(int(v) for v in fields["size"])
            fields["intensity"] = IntensityPolicy(**fields.get("intensity", {}))
            return cls(**fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"manifest volume section is malformed ({type(exc).__name__}: {exc})") from None

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)
