"""The `ImageSource` interface, and the checks and helpers that every kind of source shares.

An `ImageSource` is a fixed, ordered set of images of one shape that reads any block
`[start, stop)` on demand and names each image, so that a match found by the memorization audit
can be traced back to its file (and slice). This module imports nothing of the other source
modules: they all build on it.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
import operator
import os
import stat
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

PathLike = str | os.PathLike

_EXPECTED_LAYOUT = "(N, H, W[, C]) or (N, D, H, W[, C])"


class ImageSource(abc.ABC):
  """A fixed, ordered set of images of one shape, read in blocks.

  A subclass sets `description` and calls `_set_layout` once it knows its size, shape and dtype
  (or overrides `__len__`, `shape` and `dtype`), and implements `_read_block`.
  """

  description: str  # Human-readable origin for messages, e.g. the path.

  def _set_layout(self, length: int, shape: Sequence[int], dtype: DTypeLike) -> None:
    """Fixes the number of images, the per-image shape and the dtype (made native)."""
    self._length = int(length)
    self._shape = tuple(int(s) for s in shape)
    self._dtype = native(dtype)

  def __len__(self) -> int:
    """The number of images."""
    return self._length

  @property
  def shape(self) -> tuple[int, ...]:
    """Per-image shape: (H, W), (H, W, C), (D, H, W) or (D, H, W, C)."""
    return self._shape

  @property
  def dtype(self) -> np.dtype:
    """A native numpy dtype that holds the stored pixels losslessly."""
    return self._dtype

  @abc.abstractmethod
  def _read_block(self, start: int, stop: int, dtype: np.dtype) -> np.ndarray:
    """Images [start, stop) (already range-checked) as a new array of `dtype`."""

  def read(self, start: int, stop: int, dtype: DTypeLike | None = np.float32) -> np.ndarray:
    """Returns images [start, stop) as a new C-contiguous (stop - start, *shape) array.

    Args:
      start: first image index, 0 <= start <= stop.
      stop: one past the last image index, stop <= len(self).
      dtype: the result's dtype; None gives `self.dtype` (the stored values, unconverted).

    Raises:
      IndexError: when [start, stop) is not inside [0, len(self)].
      ValueError: naming the file (and image id) when the data cannot be read.
    """
    start, stop = self._check_range(start, stop)
    dtype = self.dtype if dtype is None else np.dtype(dtype)
    block = self._read_block(start, stop, dtype)
    if block.dtype != dtype or not block.flags.c_contiguous:
      block = np.ascontiguousarray(block, dtype=dtype)
    return block

  def read_into(self, start: int, stop: int, out: np.ndarray) -> None:
    """Reads images [start, stop) into `out`, converting to its dtype, with no temporary copy
    where the source allows (arrays, .npy files). The search reads blocks straight into the
    aligned buffers that it hands to the devices this way.

    Raises:
      IndexError: as `read`.
      ValueError: when `out` does not have the shape (stop - start, *shape).
    """
    start, stop = self._check_range(start, stop)
    if tuple(out.shape) != (stop - start, *self.shape):
      raise ValueError(f"read_into({start}, {stop}) from {self.description} needs an output of "
                       f"shape {(stop - start, *self.shape)}, got {tuple(out.shape)}")
    self._read_block_into(start, stop, out)

  def _read_block_into(self, start: int, stop: int, out: np.ndarray) -> None:
    out[...] = self._read_block(start, stop, out.dtype)

  def image_id(self, index: int) -> str:
    """A stable name of image `index`, e.g. its file's relative path."""
    return str(self._check_index(index))

  def ids(self) -> list[str]:
    """The ids of all images, in order."""
    return [str(i) for i in range(len(self))]

  def neighbors(self, index: int) -> tuple[int | None, int | None]:
    """Indices of the previous and next slice of the same volume, else None."""
    self._check_index(index)
    return None, None

  def close(self) -> None:
    """Releases open files and cached volumes; the source stays usable (it reopens)."""

  def __enter__(self) -> ImageSource:
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()

  def __repr__(self) -> str:
    return (f"{type(self).__name__}({self.description!r}, n={len(self)}, shape={self.shape}, "
            f"dtype={self.dtype})")

  def _check_index(self, index: int) -> int:
    index = operator.index(index)
    if not 0 <= index < len(self):
      raise IndexError(
          f"image index {index} is out of range for {self.description}, which holds "
          f"{len(self)} images")
    return index

  def _check_range(self, start: int, stop: int) -> tuple[int, int]:
    start, stop = operator.index(start), operator.index(stop)
    if not 0 <= start <= stop <= len(self):
      raise IndexError(
          f"read({start}, {stop}) is out of range for {self.description}, which holds "
          f"{len(self)} images: need 0 <= start <= stop <= {len(self)}")
    return start, stop


def check_same_shape(a: ImageSource, b: ImageSource) -> None:
  """Raises ValueError when two sources' per-image shapes differ (e.g. synthetic vs training)."""
  if tuple(a.shape) != tuple(b.shape):
    raise ValueError(
        f"{a.description} has images of shape {tuple(a.shape)} but {b.description} has "
        f"images of shape {tuple(b.shape)}; both sets must have one shape (resize or crop one "
        "set" + (", or open both with grayscale=True if one is color and the other gray"
                 if differ_by_color(a.shape, b.shape) else "") + ")")


def differ_by_color(shape_a: Sequence[int], shape_b: Sequence[int]) -> bool:
  """Whether two image shapes differ only by a color axis, as gray (H, W) and RGB (H, W, 3)."""
  a, b = tuple(shape_a), tuple(shape_b)
  return (len(a) == len(b) + 1 and a[:-1] == b and a[-1] in (3, 4)) or (
      len(b) == len(a) + 1 and b[:-1] == a and b[-1] in (3, 4))


def not_a_regular_file(path: PathLike) -> str | None:
  """None when `path` is a regular file or a link to one, else what it is ("a FIFO", ...).

  Only the file's metadata is read (stat): opening a FIFO blocks until a writer opens it, so
  anything that lists image files asks this before opening one.
  """
  try:
    mode = os.stat(path).st_mode
  except FileNotFoundError:
    return "a broken link" if os.path.islink(path) else "missing"
  except OSError as e:
    return f"not readable ({e.strerror})"
  if stat.S_ISREG(mode):
    return None
  kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
           (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
           (stat.S_ISBLK, "a block device"))
  return next((kind for test, kind in kinds if test(mode)), "not a regular file")


def check_regular_file(path: PathLike) -> None:
  """Raises ValueError (FileNotFoundError when absent) unless `path` is a regular file.

  For a file that the user names: a FIFO or a device is refused before it is opened.
  """
  problem = not_a_regular_file(path)
  if problem == "missing":
    raise FileNotFoundError(f"{os.fspath(path)}: no such file")
  if problem is not None:
    raise ValueError(f"{os.fspath(path)} is {problem}, not a regular file; name an image file, "
                     "an array file or a folder")


def describe_skipped(skipped: Sequence[tuple[str, str]], limit: int = 10) -> str:
  """'a.png (a FIFO), b.png (a broken link)': the first `limit` (name, problem) pairs."""
  named = ", ".join(f"{name} ({problem})" for name, problem in skipped[:limit])
  return named + (f" and {len(skipped) - limit} more" if len(skipped) > limit else "")


def native(dtype: DTypeLike) -> np.dtype:
  """`dtype` in the machine's byte order."""
  return np.dtype(dtype).newbyteorder("=")


def check_images_layout(shape: tuple[int, ...], where: str) -> None:
  """Checks that an array of images is (N, H, W[, C]) or (N, D, H, W[, C])."""
  if not 3 <= len(shape) <= 5:
    raise ValueError(
        f"{where} holds an array of shape {shape}, but images must be stacked as "
        f"{_EXPECTED_LAYOUT}; a {len(shape)}D array is ambiguous"
        + (" (save a single image as x[None])" if len(shape) == 2 else ""))


def check_pixel_dtype(dtype: np.dtype, where: str) -> None:
  """Rejects dtypes that are not plain numbers (objects, records, sub-arrays)."""
  if dtype.hasobject:
    raise ValueError(
        f"{where} holds an object array, which cannot be read without pickle; save the images "
        "as a numeric array")
  if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biuf":
    raise ValueError(
        f"{where} holds pixels of dtype {dtype}, which is not a plain boolean, integer or float "
        "type; save the images as a numeric array")


def aligned_empty(shape: tuple[int, ...], dtype: DTypeLike, alignment: int = 64) -> np.ndarray:
  """An uninitialized C-contiguous array whose data starts on an `alignment`-byte boundary.

  JAX's CPU backend adopts such a buffer without copying it; numpy's own allocations are only
  16-byte aligned, so the search copies each block of them. An in-memory training set built in
  an aligned array (of the dtype the search transfers: uint8, uint16, int16 or float32) streams
  to a CPU device without any copy.
  """
  dtype = np.dtype(dtype)
  size = int(np.prod(shape)) * dtype.itemsize
  raw = np.empty(size + alignment, np.uint8)
  offset = (-raw.ctypes.data) % alignment
  return raw[offset:offset + size].view(dtype).reshape(shape)
