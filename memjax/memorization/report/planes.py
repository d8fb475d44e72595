"""What of an image a page draws, and the PNG bytes it draws: display planes, thumbnails, grids.

An image may be a 2-D slice, a multi-channel slice (channels of medical images are modalities such
as T1 and T2, not colours) or a volume; a page shows one grey plane of it and says which. Planes
are encoded at their own resolution (scaled up in the browser without smoothing) so that a reader
sees the pixels that were compared.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Sequence

import numpy as np
from PIL import Image

# A 3-D image shape whose last axis is at most this long is (H, W, C); a longer one is (D, H, W).
MAX_CHANNELS = 8
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
THUMBNAIL_SIDE = 64


def _layout(shape: Sequence[int]) -> tuple[bool, int]:
  """(whether the image is a volume, its number of channels or 0 without a channel axis)."""
  shape = tuple(int(s) for s in shape)
  if len(shape) == 2:
    return False, 0
  if len(shape) == 3:
    return (False, shape[-1]) if shape[-1] <= MAX_CHANNELS else (True, 0)
  if len(shape) == 4:
    return True, shape[-1]
  raise ValueError(
      f"Cannot display images of shape {shape}: expected (H, W), (H, W, C), (D, H, W) or "
      "(D, H, W, C).")


def display_note(shape: Sequence[int]) -> str:
  """Says which 2-D part of an image of this shape the figures show ("" for a plain 2-D image)."""
  is_volume, channels = _layout(shape)
  parts = []
  if is_volume:
    depth = int(shape[0])
    parts.append(f"middle slice along axis 0 (index {depth // 2} of {depth})")
  if channels > 1:
    parts.append(f"channel 0 of {channels}")
  return ", ".join(parts)


def display_plane(image: np.ndarray) -> np.ndarray:
  """The 2-D grey view of one image: the middle slice of a volume, the first channel."""
  image = np.asarray(image, dtype=np.float32)
  is_volume, channels = _layout(image.shape)
  plane = image[image.shape[0] // 2] if is_volume else image
  return plane[..., 0] if channels else plane


def finite_range(values: np.ndarray) -> tuple[float, float]:
  """(low, high) for min-max display scaling; a flat image gets a range that shows it mid-grey."""
  finite = values[np.isfinite(values)]
  if finite.size == 0:
    return 0.0, 1.0
  low, high = float(finite.min()), float(finite.max())
  if high <= low:
    return low - 1.0, low + 1.0
  return low, high


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson correlation of two flattened images in float64; NaN when either has zero variance."""
  x = x.astype(np.float64) - x.mean(dtype=np.float64)
  y = y.astype(np.float64) - y.mean(dtype=np.float64)
  norm = np.sqrt(np.dot(x, x) * np.dot(y, y))
  return float(np.dot(x, y) / norm) if norm > 0 else float("nan")


def read_one(source: Any, i: int) -> np.ndarray:
  """Image `i` of an image source, as float32."""
  return np.asarray(source.read(int(i), int(i) + 1), dtype=np.float32)[0]


def _grey_bytes(plane: np.ndarray) -> np.ndarray:
  """A plane min-max scaled to 8-bit grey (a constant plane is mid grey)."""
  low, high = finite_range(np.asarray(plane, np.float64))
  scaled = (np.nan_to_num(np.asarray(plane, np.float64), nan=low) - low) / (high - low)
  return np.rint(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def plane_png(plane: np.ndarray, max_side: int | None = None) -> bytes:
  """A 2-D plane as an 8-bit grey PNG, min-max scaled; shrunk to `max_side` pixels if larger."""
  image = Image.fromarray(_grey_bytes(plane))
  if max_side is not None and max(image.size) > max_side:
    image.thumbnail((max_side, max_side), Image.BILINEAR)
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()


def grid_png(source: Any, count: int) -> bytes:
  """The first `count` images of `source` as one grey grid, each min-max scaled."""
  count = min(count, len(source))
  planes = [_grey_bytes(display_plane(read_one(source, i))) for i in range(count)]
  h, w = planes[0].shape
  cols = int(np.ceil(np.sqrt(count)))
  rows = int(np.ceil(count / cols))
  gap = 2
  grid = np.full((rows * (h + gap) + gap, cols * (w + gap) + gap), 255, np.uint8)
  for n, plane in enumerate(planes):
    r, c = divmod(n, cols)
    grid[gap + r * (h + gap):gap + r * (h + gap) + h,
         gap + c * (w + gap):gap + c * (w + gap) + w] = plane
  buffer = io.BytesIO()
  Image.fromarray(grid).save(buffer, format="PNG")
  return buffer.getvalue()


def embed_png(png_bytes: bytes) -> str:
  """Returns a `data:image/png;base64,...` URI, so that an HTML page needs no other file."""
  if not bytes(png_bytes[:8]) == PNG_SIGNATURE:
    raise ValueError(
        f"embed_png expects PNG bytes (e.g. from figure_to_png_bytes); got data starting with "
        f"{bytes(png_bytes[:8])!r}.")
  return "data:image/png;base64," + base64.b64encode(png_bytes).decode("ascii")
