"""The image preprocessing that the data-set builders share, in plain numpy.

Akbar et al. (MLST 2025) prepare BraTS slices in MATLAB: each volume is divided by its own maximum
and scaled to 0-255, axial slices `volume(:, :, z)` are zero-padded from 240x240 to 256x256 (8
pixels on every side), and a slice is kept when more than 15% of its 256x256 pixels have a T1
value above 50 (of 255); the five channels are written as 8-bit PNGs. These functions reproduce
each step so that every builder (BraTS, MNI152, chest x-rays) prepares images the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# A slice is kept when more than this fraction of its pixels have a T1 value above 50 (of 255).
MIN_COVERAGE = 0.15
COVERAGE_LEVEL = 50.0


def scale_to_255(volume: np.ndarray, where: str = "volume") -> np.ndarray:
  """`volume` / its maximum * 255, in float64 as the paper's MATLAB computes it.

  Raises:
    ValueError: naming `where` when the volume holds NaN or infinite values or has no positive
      maximum (an empty or corrupt scan), which would divide by zero.
  """
  volume = np.asarray(volume, np.float64)
  if volume.size == 0:
    raise ValueError(f"{where} is empty")
  if not np.all(np.isfinite(volume)):
    raise ValueError(f"{where} holds NaN or infinite values")
  maximum = float(volume.max())
  if maximum <= 0:
    raise ValueError(f"{where} has no positive value (maximum {maximum}); the scan is empty")
  return volume / maximum * 255


def to_uint8(values: np.ndarray) -> np.ndarray:
  """0-255 values as uint8, rounded half up and saturated, as MATLAB's uint8() converts them."""
  return np.clip(np.floor(np.asarray(values, np.float64) + 0.5), 0, 255).astype(np.uint8)


def center_pad_or_crop(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
  """`array` zero-padded or cropped, centred, to `shape` on its leading axes.

  On each axis the padding (or the cut) is split evenly, the odd pixel going after: 240 -> 256
  pads 8 before and 8 after, as the paper's MATLAB does. Trailing axes beyond `shape` are kept.
  """
  shape = tuple(int(s) for s in shape)
  if len(shape) > array.ndim:
    raise ValueError(f"cannot fit an array of shape {array.shape} to {shape}")
  source, target = [], []
  for size, wanted in zip(array.shape, shape):
    if wanted >= size:
      before = (wanted - size) // 2
      source.append(slice(0, size))
      target.append(slice(before, before + size))
    else:
      before = (size - wanted) // 2
      source.append(slice(before, before + wanted))
      target.append(slice(0, wanted))
  out = np.zeros(shape + array.shape[len(shape):], array.dtype)
  out[tuple(target)] = array[tuple(source)]
  return out


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
  """Averages `factor` x `factor` blocks of the two leading axes (an exact area downsampling)."""
  height, width = image.shape[:2]
  if height % factor or width % factor:
    raise ValueError(f"an image of {height}x{width} pixels cannot be reduced by {factor}")
  blocks = image.reshape(height // factor, factor, width // factor, factor, *image.shape[2:])
  return blocks.mean(axis=(1, 3), dtype=np.float64)


def coverage(t1_255: np.ndarray) -> float:
  """The fraction of a slice's pixels whose T1 value (0-255, see `scale_to_255`) is above 50."""
  return float(np.count_nonzero(t1_255 > COVERAGE_LEVEL) / t1_255.size)


def keep_slice(t1_255: np.ndarray) -> bool:
  """The paper's rule: keep a slice when more than 15% of its pixels have T1 above 50 of 255."""
  return coverage(t1_255) > MIN_COVERAGE
