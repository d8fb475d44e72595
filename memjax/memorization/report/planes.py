"""What of an image a page draws, and the PNG bytes it draws: display planes, thumbnails, grids.

An image may be a 2-D slice, a multi-channel slice (channels of medical images are modalities such
as T1 and T2, not colours) or a volume; a page shows one grey plane of it and says which. Planes
are encoded at their own resolution (scaled up in the browser without smoothing) so that a reader
sees the pixels that were compared, up to DISPLAY_SIDE pixels a side: a larger plane (an 8000 x
8000 scan) is drawn from every k-th pixel, so that a page holds no full-resolution copy of it.

Images are read in their stored dtype and every value a page computes (a plane's grey levels, a
correlation) is computed in float64 over chunks, scaled first: images near 1e200 draw and
correlate as any others, and no full-resolution float64 copy is made.
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
DISPLAY_SIDE = 1024  # the longest side a page draws; a larger plane is drawn from every k-th pixel
_CHUNK = 1 << 20  # values per float64 chunk of a full-resolution image


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


def display_plane(image: np.ndarray, max_side: int | None = DISPLAY_SIDE) -> np.ndarray:
  """The 2-D grey view of one image in float64: the middle slice of a volume, the first channel;
  every k-th pixel of a plane longer than `max_side` (k = ceil(side / max_side))."""
  image = np.asarray(image)
  is_volume, channels = _layout(image.shape)
  plane = image[image.shape[0] // 2] if is_volume else image
  plane = plane[..., 0] if channels else plane
  if max_side and max(plane.shape) > max_side:
    step = -(-max(plane.shape) // max_side)
    plane = plane[::step, ::step]
  return np.asarray(plane, np.float64)


def _chunks(values: np.ndarray):
  """`values` flattened, in float64 chunks of at most _CHUNK values."""
  flat = np.asarray(values).reshape(-1)
  for start in range(0, flat.size, _CHUNK):
    yield flat[start:start + _CHUNK].astype(np.float64)


def finite_range(values: np.ndarray) -> tuple[float, float]:
  """(low, high) for min-max display scaling; a flat image gets a range that shows it mid-grey."""
  low, high = np.inf, -np.inf
  for chunk in _chunks(values):
    finite = chunk[np.isfinite(chunk)]
    if finite.size:
      low, high = min(low, float(finite.min())), max(high, float(finite.max()))
  if low > high:
    return 0.0, 1.0
  if high <= low:
    return low - 1.0, low + 1.0
  return low, high


def _scale_and_mean(values: np.ndarray) -> tuple[float, float]:
  """(the largest |value|, the mean of values / it), chunk by chunk; (0, 0) for all zeros."""
  scale = 0.0
  for chunk in _chunks(values):
    scale = max(scale, float(np.max(np.abs(chunk), initial=0.0)))
  if scale == 0.0 or not np.isfinite(scale):
    return scale, 0.0
  total = sum(float(np.sum(chunk / scale)) for chunk in _chunks(values))
  return scale, total / max(np.asarray(values).size, 1)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson correlation of two flattened images in float64; NaN when either has zero variance
  (or a value that is not finite). Each image is divided by its largest |value| before it is
  centred, chunk by chunk: no overflow near 1e200, no full float64 copy of an 8000 x 8000 image."""
  x, y = np.asarray(x).reshape(-1), np.asarray(y).reshape(-1)
  (x_scale, x_mean), (y_scale, y_mean) = _scale_and_mean(x), _scale_and_mean(y)
  if not (x_scale > 0 and y_scale > 0 and np.isfinite(x_scale) and np.isfinite(y_scale)):
    return float("nan")
  xx = yy = xy = 0.0
  for a, b in zip(_chunks(x), _chunks(y)):
    a = a / x_scale - x_mean
    b = b / y_scale - y_mean
    xx, yy, xy = xx + float(a @ a), yy + float(b @ b), xy + float(a @ b)
  return xy / np.sqrt(xx * yy) if xx > 0 and yy > 0 else float("nan")


def read_one(source: Any, i: int) -> np.ndarray:
  """Image `i` of an image source, in its stored dtype (no float copy of a large image); a
  minimal source without a `dtype` (read(start, stop) only) as it reads."""
  if getattr(source, "dtype", None) is not None:
    return source.read(int(i), int(i) + 1, dtype=None)[0]
  return np.asarray(source.read(int(i), int(i) + 1))[0]


def sample_pixels(x: np.ndarray, y: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
  """At most `count` pixels of two images of one size, at the same places (a fixed draw), in
  float64."""
  x, y = np.asarray(x).reshape(-1), np.asarray(y).reshape(-1)
  if x.size > count:
    keep = np.sort(np.random.default_rng(0).choice(x.size, count, replace=False))
    x, y = x[keep], y[keep]
  return x.astype(np.float64), y.astype(np.float64)


def grey_levels(plane: np.ndarray) -> np.ndarray:
  """A plane min-max scaled to 8-bit grey (a constant plane is mid grey; NaN is black)."""
  plane = np.asarray(plane, np.float64)
  low, high = finite_range(plane)
  size = max(abs(low), abs(high))  # scaled into [-1, 1] first: no overflow near 1e308
  with np.errstate(over="ignore", invalid="ignore"):
    scaled = (np.nan_to_num(plane / size, nan=low / size) - low / size) / (high / size - low / size)
  return np.rint(np.clip(np.nan_to_num(scaled), 0.0, 1.0) * 255).astype(np.uint8)



def plane_png(plane: np.ndarray, max_side: int | None = None) -> bytes:
  """A 2-D plane as an 8-bit grey PNG, min-max scaled; shrunk to `max_side` pixels if larger."""
  image = Image.fromarray(grey_levels(plane))
  if max_side is not None and max(image.size) > max_side:
    image.thumbnail((max_side, max_side), Image.BILINEAR)
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()


def grid_png(source: Any, count: int) -> bytes:
  """The first `count` images of `source` as one grey grid, each min-max scaled."""
  count = min(count, len(source))
  planes = [grey_levels(display_plane(read_one(source, i))) for i in range(count)]
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
