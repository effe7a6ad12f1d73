"""Image -> tensor preprocessing shared by training data and the server's image codec.

Keeping one function guarantees the server feeds the model exactly what it
was trained on.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["image_to_tensor", "resize_center_crop"]


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bilinear), then center-crop a ``size`` x ``size`` square."""
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    if (new_w, new_h) != (size, size):
        image = image.crop((left, top, left + size, top + size))
    return image


def image_to_tensor(
    image: Image.Image, size: int, mean: Sequence[float], std: Sequence[float], channels: int = 3
) -> torch.Tensor:
    """A normalised ``[channels, size, size]`` float32 tensor from a PIL image."""
    image = image.convert("RGB" if channels == 3 else "L")
    image = resize_center_crop(image, size)
    array = np.asarray(image, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    array = (array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
