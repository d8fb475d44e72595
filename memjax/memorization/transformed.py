"""The transform-tolerant correlation: a copy is a copy, flipped, turned or shifted.

For a synthetic image a and a training image b, the largest Pearson correlation of T(a) with b
over a group of transforms T, computed exactly (float64), with the transform that reaches it:

* the symmetries of the image grid: every combination of flips along the spatial axes and, for
  square 2D images, the transpose (with the flips: the 8 symmetries of a square, rotations by 90
  degrees included);
* integer shifts of up to `max_shift` pixels along each spatial axis, the correlation taken over
  the region where the shifted image and the training image overlap (normalized
  cross-correlation, template matching's TM_CCOEFF_NORMED).

Every shift of one pair comes from one FFT product: with zero padding, the sums over the overlap
of a, a^2, b, b^2, ab and the overlap's size are cross-correlations, so the correlation at every
shift is formed from six arrays (five of which depend on one image only and are computed once).
The best value of each synthetic image is then recomputed directly over its overlap, so that the
reported value is the float64 correlation at the reported transform.

This is a brute-force search over every training image, symmetry and shift: exact, and affordable
for the images a report shows, the demo and sets of a few thousand images; a search pruned by
proven bounds for large sets is not built yet. Images are (N, *spatial) or (N, *spatial, C) with the
channels taken together (`channels_last`).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np

from memjax.data import sources as sources_lib
from memjax.memorization import streaming

_CHUNK_BYTES = 64 << 20  # complex FFT bytes of images held at once, per set


@dataclasses.dataclass(frozen=True)
class Symmetry:
  """A symmetry of the image grid: flips along spatial axes, then (square 2D) a transpose."""
  flips: tuple[int, ...]
  transpose: bool = False

  def apply(self, image: np.ndarray) -> np.ndarray:
    """The symmetry applied to one image (*spatial[, C])."""
    out = image
    for axis in self.flips:
      out = np.flip(out, axis=axis)
    if self.transpose:
      out = np.swapaxes(out, 0, 1)
    return out

  def invert(self, image: np.ndarray) -> np.ndarray:
    """The inverse symmetry applied to one image: invert(apply(x)) == x."""
    out = np.swapaxes(image, 0, 1) if self.transpose else image
    for axis in self.flips:
      out = np.flip(out, axis=axis)
    return out

  def describe(self) -> str:
    names = {0: "up-down", 1: "left-right", 2: "front-back"}
    if not self.flips and not self.transpose:
      return "as is"
    turns = {((1,), True): "turned 90° anticlockwise", ((0,), True): "turned 90° clockwise",
             ((0, 1), False): "turned 180°", ((), True): "mirrored about the main diagonal",
             ((0, 1), True): "mirrored about the anti-diagonal"}
    if (tuple(self.flips), self.transpose) in turns:
      return turns[(tuple(self.flips), self.transpose)]
    words = []
    if self.flips:
      words.append("flipped " + " and ".join(names.get(a, f"along axis {a}")
                                              for a in self.flips))
    if self.transpose:
      words.append("transposed")
    return ", then ".join(words)


def symmetries(spatial_shape: tuple[int, ...]) -> tuple[Symmetry, ...]:
  """The grid's symmetries: 8 for a square 2D image, 2^d flips otherwise."""
  axes = range(len(spatial_shape))
  flips = [tuple(a for a, on in zip(axes, mask) if on)
           for mask in itertools.product((False, True), repeat=len(spatial_shape))]
  group = [Symmetry(f) for f in flips]
  if len(spatial_shape) == 2 and spatial_shape[0] == spatial_shape[1]:
    group += [Symmetry(f, transpose=True) for f in flips]
  return tuple(group)


def default_max_shift(spatial_shape: tuple[int, ...]) -> int:
  """About an eighth of the smallest side: 8 px at 64x64, 32 px at 256x256."""
  return max(1, min(spatial_shape) // 8)


@dataclasses.dataclass(frozen=True)
class TransformedMatch:
  """Each synthetic image's best transform-tolerant match.

  values: (N,) float64 correlation of the transformed synthetic image with its training match
    over their overlap; NaN where none is defined (a constant image).
  indices: (N,) int64 training index; -1 where values is NaN.
  symmetries: (N,) the Symmetry applied to the synthetic image (None where undefined).
  shifts: (N, spatial dims) int64: the transformed synthetic pixel at x + shift lies on the
    training pixel at x.
  """
  values: np.ndarray
  indices: np.ndarray
  symmetries: tuple
  shifts: np.ndarray

  def describe(self, i: int) -> str:
    """The transform of match `i` in words, e.g. "flipped up-down, shifted by (3, -2) px"."""
    symmetry = self.symmetries[int(i)]
    if symmetry is None:
      return "no correlation"
    return describe(symmetry, self.shifts[int(i)])


def describe(symmetry: Symmetry, shift) -> str:
  """A transform of the synthetic image in words, e.g. "flipped up-down, shifted by (3, -2) px"."""
  shift = tuple(int(s) for s in shift)
  words = symmetry.describe()
  if any(shift):
    words = ("" if words == "as is" else words + ", ") + f"shifted by {shift} px"
  return words


def has_channels_last(shape: tuple[int, ...]) -> bool:
  """Whether images of `shape` hold channels on their last axis: 3 or more axes, the last of at
  most 5 (memjax's (H, W, C) and (D, H, W, C) images)."""
  return len(shape) >= 3 and shape[-1] <= 5


def into_synthetic_frame(train_image: np.ndarray, symmetry: Symmetry, shift) -> np.ndarray:
  """A training image moved into the frame of a synthetic image that matched it under
  (symmetry, shift): the result's pixels lie on the synthetic pixels they were compared with;
  float64, NaN where the training image does not reach (*spatial[, C] as given)."""
  image = np.asarray(train_image, np.float64)
  moved = np.full(image.shape, np.nan)
  target, origin = [], []
  for n, d in zip(image.shape, (int(d) for d in shift)):
    # T(a)[x + d] was compared with b[x]: b[x] lands at x + d of T(a)'s frame.
    target.append(slice(max(d, 0), n + min(d, 0)))
    origin.append(slice(max(-d, 0), n - max(d, 0)))
  moved[tuple(target)] = image[tuple(origin)]
  return np.ascontiguousarray(symmetry.invert(moved))


def _spatial(images: np.ndarray, channels_last: bool) -> np.ndarray:
  """(N, *spatial, C) float64, each image shifted and scaled (any finite input keeps its
  texture; a correlation does not change) and then centred on its mean."""
  if not channels_last:
    images = images[..., None]
  rows = streaming.shifted_rows_float64(images)
  rows -= rows.mean(axis=1, keepdims=True)
  return rows.reshape(images.shape)


def _padded_fft(images: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
  """rfftn over the spatial axes (1..d) of zero-padded images (N, *spatial, C)."""
  axes = tuple(range(1, 1 + len(size)))
  return np.fft.rfftn(images, s=size, axes=axes)


def _window(correlations: np.ndarray, max_shift: int, dims: int) -> np.ndarray:
  """Shifts -max_shift..max_shift of circular cross-correlations (N, *size): (N, *(2s+1,)*d)."""
  index = np.r_[-max_shift:max_shift + 1]
  out = correlations
  for axis in range(1, 1 + dims):
    out = np.take(out, index, axis=axis)
  return out


def _cross(fa: np.ndarray, fb: np.ndarray, size, max_shift: int) -> np.ndarray:
  """sum_x a[x + d] b[x] for every shift |d| <= max_shift, summed over channels."""
  dims = len(size)
  axes = tuple(range(1, 1 + dims))
  full = np.fft.irfftn(fa * np.conj(fb), s=size, axes=axes)
  return _window(full, max_shift, dims).sum(axis=-1)


def best_transformed_match(synthetic: Any, train: Any, *, max_shift: int | None = None,
                           channels_last: bool | None = None) -> TransformedMatch:
  """Each synthetic image's largest correlation with any training image under the group.

  `synthetic`, `train`: anything `sources.open_source` opens, of one shape. `channels_last`:
  whether the last axis holds channels (default: for 3 or more spatial-looking axes with a last
  axis of at most 5, as memjax's (H, W, C) and (D, H, W, C) images).
  """
  synthetic, train = _as_source(synthetic), _as_source(train)
  sources_lib.check_same_shape(synthetic, train)
  shape = tuple(synthetic.shape)
  if channels_last is None:
    channels_last = has_channels_last(shape)
  spatial = shape[:-1] if channels_last else shape
  max_shift = default_max_shift(spatial) if max_shift is None else int(max_shift)
  if not 0 <= max_shift < min(spatial):
    raise ValueError(f"max_shift must lie in [0, {min(spatial) - 1}] for images of "
                     f"{spatial}, got {max_shift}")
  dims = len(spatial)
  size = tuple(n + max_shift for n in spatial)  # no wrap-around for shifts up to max_shift
  group = symmetries(spatial)
  mask = np.ones((1,) + spatial + (1,))
  fmask = _padded_fft(mask, size)
  overlap = _cross(fmask, fmask, size, max_shift)[0]  # the overlap's pixels per channel
  channels = shape[-1] if channels_last else 1
  count = overlap * channels

  num_synthetic, num_train = len(synthetic), len(train)
  best = np.full(num_synthetic, -np.inf)
  best_index = np.full(num_synthetic, -1, np.int64)
  best_symmetry = np.zeros(num_synthetic, np.int64)
  best_shift = np.zeros((num_synthetic, dims), np.int64)
  fft_bytes = 16 * int(np.prod(size[:-1])) * (size[-1] // 2 + 1) * channels
  train_chunk = max(1, _CHUNK_BYTES // (2 * fft_bytes))
  query_chunk = max(1, _CHUNK_BYTES // (len(group) * fft_bytes))
  for query_start in range(0, num_synthetic, query_chunk):
    query_stop = min(query_start + query_chunk, num_synthetic)
    queries = _spatial(_read(synthetic, query_start, query_stop), channels_last)
    query_stats = []
    for symmetry in group:  # FFTs of T(a), and T(a)'s sum and variance over each overlap
      transformed = np.stack([symmetry.apply(q) for q in queries])
      fa = _padded_fft(transformed, size)
      sum_a = _cross(fa, fmask, size, max_shift)
      sum_a2 = _cross(_padded_fft(transformed ** 2, size), fmask, size, max_shift)
      query_stats.append((fa, sum_a, sum_a2 - sum_a ** 2 / count))
    for start in range(0, num_train, train_chunk):
      stop = min(start + train_chunk, num_train)
      references = _spatial(_read(train, start, stop), channels_last)
      fb = _padded_fft(references, size)
      sum_b = _cross(fmask, fb, size, max_shift)
      var_b = (_cross(fmask, _padded_fft(references ** 2, size), size, max_shift)
               - sum_b ** 2 / count)
      for s, (fa, sum_a, var_a) in enumerate(query_stats):
        for j in range(query_stop - query_start):
          i = query_start + j
          sum_ab = _cross(fa[j:j + 1], fb, size, max_shift)
          with np.errstate(invalid="ignore", divide="ignore"):
            r = (sum_ab - sum_a[j] * sum_b / count) / np.sqrt(var_a[j] * var_b)
          r = np.where(np.isfinite(r), r, -np.inf).reshape(stop - start, -1)
          flat = int(np.argmax(r))
          if r.flat[flat] > best[i]:
            train_row, position = divmod(flat, r.shape[1])
            best[i] = r.flat[flat]
            best_index[i] = start + train_row
            best_symmetry[i] = s
            best_shift[i] = np.array(np.unravel_index(position, (2 * max_shift + 1,) * dims)
                                     ) - max_shift
  values = np.full(num_synthetic, np.nan)
  found = best_index >= 0
  stored = lambda source, i: (_read(source, i, i + 1)[0] if channels_last
                              else _read(source, i, i + 1)[0][..., None])
  for i in np.flatnonzero(found):
    values[i] = overlap_correlation(group[best_symmetry[i]].apply(stored(synthetic, int(i))),
                                    stored(train, int(best_index[i])), best_shift[i])
  return TransformedMatch(values=values, indices=np.where(found, best_index, -1),
                          symmetries=tuple(group[s] if f else None
                                           for s, f in zip(best_symmetry, found)),
                          shifts=best_shift)


def _as_source(data: Any):
  """An image source: anything with read, shape and len as it is, else `sources.open_source`."""
  if all(hasattr(data, name) for name in ("read", "shape", "__len__")):
    return data
  return sources_lib.open_source(data)


def _read(source, start: int, stop: int) -> np.ndarray:
  """Images [start, stop) in their stored dtype where the source can say so."""
  try:
    return np.asarray(source.read(start, stop, dtype=None))
  except TypeError:  # a minimal source: read(start, stop) only
    return np.asarray(source.read(start, stop))


def overlap_correlation(a: np.ndarray, b: np.ndarray, shift) -> float:
  """The float64 Pearson correlation of a[x + shift] with b[x] over their overlap (*spatial, C).

  Any real dtype: pixels float32 cannot hold are shifted and scaled first (a correlation does
  not change), so any finite input keeps its texture. Identical overlaps score exactly 1.
  """
  a_slices, b_slices = [], []
  for n, d in zip(b.shape, shift):
    d = int(d)
    a_slices.append(slice(max(d, 0), n + min(d, 0)))
    b_slices.append(slice(max(-d, 0), n - max(d, 0)))
  x, y = np.ascontiguousarray(a[tuple(a_slices)]), np.ascontiguousarray(b[tuple(b_slices)])
  if np.array_equal(x, y):
    return 1.0 if np.ptp(x) > 0 else float("nan")
  rows = []
  for overlap in (x, y):
    if np.dtype(overlap.dtype) in streaming.NARROW_DTYPES:
      row = overlap.astype(np.float64).ravel()
    else:
      row = streaming.shifted_rows_float64(overlap[None])[0]
    rows.append(row - row.mean())
  denominator = np.sqrt(np.dot(rows[0], rows[0]) * np.dot(rows[1], rows[1]))
  if not denominator > 0:
    return float("nan")
  return float(np.clip(np.dot(rows[0], rows[1]) / denominator, -1.0, 1.0))
