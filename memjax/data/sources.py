"""Image sources: folders, .npy/.npz files, NIfTI volumes and arrays behind one interface.

The memorization audit correlates every synthetic image with every training image, so it
streams both sets in blocks. An `ImageSource` is a fixed, ordered set of images of one shape
that reads any block `[start, stop)` on demand and names each image, so a match can be traced
back to its file (and slice). `open_source` turns what a user passes (a folder, a file, an
array) into a source.

Sources never hold a whole training set in memory: `.npy` and stored `.npz` arrays are read by
positioned reads (no memory map, whose pages would count in the process RSS), compressed `.npz`
members are streamed, image files are decoded one block at a time, and NIfTI slices keep only
the most recently loaded volume. A source may be read from one background thread (the search
prefetches the next block) while other threads ask for ids and neighbours.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
import concurrent.futures
import dataclasses
import operator
import os
import pathlib
import re
import struct
import threading
from typing import Any
import zipfile
import zlib

import numpy as np
from numpy.typing import DTypeLike

PathLike = str | os.PathLike

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
ARRAY_EXTENSIONS = (".npy", ".npz")
SUPPORTED_EXTENSIONS = IMAGE_EXTENSIONS + NIFTI_EXTENSIONS + ARRAY_EXTENSIONS

# Bounds the temporary buffer of a read that converts dtypes or streams from a zip.
_CHUNK_BYTES = 1 << 25
_STREAM_CHUNK_BYTES = 1 << 20
# From this many files on, headers are probed on a thread pool (images: from 2 on).
_PARALLEL_MIN_FILES = 16
_EXPECTED_LAYOUT = "(N, H, W[, C]) or (N, D, H, W[, C])"


# ----------------------------------------------------------------------------------------------
# The interface.


class ImageSource(abc.ABC):
  """A fixed, ordered set of images of one shape, read in blocks."""

  description: str  # Human-readable origin for messages, e.g. the path.

  @abc.abstractmethod
  def __len__(self) -> int:
    """The number of images."""

  @property
  @abc.abstractmethod
  def shape(self) -> tuple[int, ...]:
    """Per-image shape: (H, W), (H, W, C), (D, H, W) or (D, H, W, C)."""

  @property
  @abc.abstractmethod
  def dtype(self) -> np.dtype:
    """A native numpy dtype that holds the stored pixels losslessly."""

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
                 if _differ_by_color(a.shape, b.shape) else "") + ")")


def _differ_by_color(shape_a: Sequence[int], shape_b: Sequence[int]) -> bool:
  """Whether two image shapes differ only by a color axis, as gray (H, W) and RGB (H, W, 3)."""
  a, b = tuple(shape_a), tuple(shape_b)
  return (len(a) == len(b) + 1 and a[:-1] == b and a[-1] in (3, 4)) or (
      len(b) == len(a) + 1 and b[:-1] == a and b[-1] in (3, 4))


def _native(dtype: DTypeLike) -> np.dtype:
  """`dtype` in the machine's byte order."""
  return np.dtype(dtype).newbyteorder("=")


def _check_images_layout(shape: tuple[int, ...], where: str) -> None:
  """Checks that an array of images is (N, H, W[, C]) or (N, D, H, W[, C])."""
  if not 3 <= len(shape) <= 5:
    raise ValueError(
        f"{where} holds an array of shape {shape}, but images must be stacked as "
        f"{_EXPECTED_LAYOUT}; a {len(shape)}D array is ambiguous"
        + (" (save a single image as x[None])" if len(shape) == 2 else ""))


def _check_pixel_dtype(dtype: np.dtype, where: str) -> None:
  """Rejects dtypes that are not plain numbers (objects, records, sub-arrays)."""
  if dtype.hasobject:
    raise ValueError(
        f"{where} holds an object array, which cannot be read without pickle; save the images "
        "as a numeric array")
  if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biuf":
    raise ValueError(
        f"{where} holds pixels of dtype {dtype}, which is not a plain boolean, integer or float "
        "type; save the images as a numeric array")


# ----------------------------------------------------------------------------------------------
# In-memory arrays.


class ArraySource(ImageSource):
  """Images in an in-memory array (N, *shape); ids are the indices."""

  def __init__(self, array: Any, description: str = "array"):
    array = np.asarray(array)
    self.description = description
    _check_images_layout(array.shape, description)
    _check_pixel_dtype(array.dtype, description)
    self._array = array

  def __len__(self) -> int:
    return self._array.shape[0]

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self._array.shape[1:])

  @property
  def dtype(self) -> np.dtype:
    return _native(self._array.dtype)

  def _read_block(self, start: int, stop: int, dtype: np.dtype) -> np.ndarray:
    return np.array(self._array[start:stop], dtype=dtype, order="C", copy=True)

  def _read_block_into(self, start: int, stop: int, out: np.ndarray) -> None:
    np.copyto(out, self._array[start:stop], casting="unsafe")

  def view(self, start: int, stop: int) -> np.ndarray:
    """Images [start, stop) as a view of the array, without a copy (callers must not write)."""
    start, stop = self._check_range(start, stop)
    return self._array[start:stop]


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


class IndexedSource(ImageSource):
  """The images of another source at the given indices, in that order (a subset or a reordering).

  Reads gather runs of consecutive indices, so a sorted subset reads in few calls.
  """

  def __init__(self, source: ImageSource, indices: Any):
    indices = np.asarray(indices, np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= len(source)):
      raise IndexError(f"indices out of range for {source.description}, which holds "
                       f"{len(source)} images")
    self._source = source
    self._indices = indices
    self.description = f"{source.description} ({indices.size} of {len(source)} images)"

  def __len__(self) -> int:
    return int(self._indices.size)

  @property
  def shape(self) -> tuple[int, ...]:
    return self._source.shape

  @property
  def dtype(self) -> np.dtype:
    return self._source.dtype

  def _read_block(self, start: int, stop: int, dtype: np.dtype) -> np.ndarray:
    out = np.empty((stop - start, *self.shape), dtype)
    self._read_block_into(start, stop, out)
    return out

  def _read_block_into(self, start: int, stop: int, out: np.ndarray) -> None:
    wanted = self._indices[start:stop]
    run_start = 0
    while run_start < wanted.size:
      run_stop = run_start + 1
      while run_stop < wanted.size and wanted[run_stop] == wanted[run_stop - 1] + 1:
        run_stop += 1
      self._source.read_into(int(wanted[run_start]), int(wanted[run_stop - 1]) + 1,
                             out[run_start:run_stop])
      run_start = run_stop

  def image_id(self, index: int) -> str:
    return self._source.image_id(int(self._indices[self._check_index(index)]))

  def ids(self) -> list[str]:
    return [self._source.image_id(int(i)) for i in self._indices]


# ----------------------------------------------------------------------------------------------
# .npy files and .npz members, read without loading them whole.


@dataclasses.dataclass(frozen=True)
class _StoredArray:
  """Where an array's raw bytes lie: a .npy file or a member of an .npz file."""
  path: str
  member: str | None  # The .npz member name; None for a .npy file.
  shape: tuple[int, ...]  # The whole array's shape, (N, *image shape).
  dtype: np.dtype  # As stored; may be big-endian.
  offset: int  # Of the data: in the file, or in the decompressed member when compressed.
  compressed: bool

  @property
  def where(self) -> str:
    return self.path if self.member is None else f"{self.path} (array {self.member!r})"

  @property
  def row_bytes(self) -> int:
    return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize


def _parse_npy_header(f: Any, where: str) -> tuple[tuple[int, ...], np.dtype, int]:
  """Reads a .npy header from `f`'s position; returns shape, dtype and the header's size."""
  begin = f.tell()
  try:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
      # 3.0 differs from 2.0 only in allowing utf-8 field names, which pixels never have.
      shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
    else:
      raise ValueError(f"unsupported .npy format version {version}")
  except (ValueError, OSError, EOFError, SyntaxError, struct.error, zlib.error,
          zipfile.BadZipFile) as e:
    raise ValueError(f"{where} is not a valid .npy array (corrupt or truncated header: {e})"
                    ) from e
  if fortran_order and len(shape) > 1:
    raise ValueError(
        f"{where} is stored in Fortran order, which cannot be read in blocks of images; re-save "
        "it with np.save(path, np.ascontiguousarray(images))")
  dtype = np.dtype(dtype)
  _check_pixel_dtype(dtype, where)
  _check_images_layout(tuple(shape), where)
  return tuple(int(s) for s in shape), dtype, f.tell() - begin


def _check_data_size(stored: _StoredArray, available: int) -> None:
  """Raises when fewer data bytes are stored than the header promises (a truncated file)."""
  needed = stored.shape[0] * stored.row_bytes
  if available < needed:
    raise ValueError(
        f"{stored.where} is truncated: its header promises {stored.shape[0]} images of shape "
        f"{stored.shape[1:]} ({needed} bytes of {stored.dtype}) but only {max(available, 0)} "
        "bytes follow; re-create the file")


def _open_npy(path: str) -> _StoredArray:
  with open(path, "rb") as f:
    shape, dtype, header_size = _parse_npy_header(f, path)
  stored = _StoredArray(path, None, shape, dtype, header_size, compressed=False)
  _check_data_size(stored, os.path.getsize(path) - header_size)
  return stored


def _npz_keys(infos: Iterable[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
  """The arrays of an .npz file by key (member name without '.npy'), as np.load names them."""
  return {info.filename[:-len(".npy")]: info for info in infos
          if info.filename.endswith(".npy") and not info.is_dir()}


def _open_npz(path: str, key: str | None) -> _StoredArray:
  """Locates one array of an .npz file: `key`, else 'images', else the only array."""
  try:
    archive = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
    raise ValueError(f"{path} is not a valid .npz file (corrupt or truncated zip: {e})") from e
  with archive:
    arrays = _npz_keys(archive.infolist())
    if key is None:
      if "images" in arrays:
        key = "images"
      elif len(arrays) == 1:
        key = next(iter(arrays))
      elif not arrays:
        raise ValueError(f"{path} holds no arrays")
      else:
        raise ValueError(
            f"{path} holds several arrays {sorted(arrays)} and none is named 'images'; choose "
            f"one with '{path}:KEY' (or key=KEY), e.g. '{path}:{sorted(arrays)[0]}'")
    elif key not in arrays:
      raise ValueError(f"{path} has no array {key!r}; its arrays are {sorted(arrays)}")
    info = arrays[key]
    where = f"{path} (array {key!r})"
    if info.flag_bits & 0x1:
      raise ValueError(f"{where} is encrypted; save the images without a password")
    if info.compress_type == zipfile.ZIP_STORED:
      return _open_stored_member(path, info, where)
    try:
      with archive.open(info) as stream:
        shape, dtype, header_size = _parse_npy_header(stream, where)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError) as e:
      raise ValueError(f"{where} cannot be decompressed ({e}); re-create the file") from e
  stored = _StoredArray(path, info.filename, shape, dtype, header_size, compressed=True)
  _check_data_size(stored, info.file_size - header_size)
  return stored


def _open_stored_member(path: str, info: zipfile.ZipInfo, where: str) -> _StoredArray:
  """Locates an uncompressed .npz member's data inside the zip, from its local file header."""
  with open(path, "rb") as f:
    f.seek(info.header_offset)
    local_header = f.read(30)
    if len(local_header) != 30 or local_header[:4] != b"PK\x03\x04":
      raise ValueError(f"{where} is not a valid .npz member (bad local zip header); "
                       "re-create the file")
    name_length, extra_length = struct.unpack("<HH", local_header[26:30])
    member_offset = info.header_offset + 30 + name_length + extra_length
    f.seek(member_offset)
    shape, dtype, header_size = _parse_npy_header(f, where)
  stored = _StoredArray(path, info.filename, shape, dtype, member_offset + header_size,
                        compressed=False)
  _check_data_size(
      stored,
      min(info.file_size - header_size, os.path.getsize(path) - stored.offset))
  return stored


def _open_stored_array(path: str, key: str | None = None) -> _StoredArray:
  if path.lower().endswith(".npz"):
    return _open_npz(path, key)
  return _open_npy(path)


class _PositionedReader:
  """Reads rows of an uncompressed array by positioned reads; stateless, so thread-safe."""

  def __init__(self, stored: _StoredArray):
    self._stored = stored

  def readinto(self, start: int, stop: int, buffer: memoryview) -> None:
    stored = self._stored
    position = stored.offset + start * stored.row_bytes
    done = 0
    try:
      # A file object per call: no shared position, and nothing mapped into the process.
      with open(stored.path, "rb", buffering=0) as f:
        f.seek(position)
        while done < len(buffer):
          count = f.readinto(buffer[done:])
          if not count:
            break
          done += count
    except OSError as e:
      raise ValueError(f"{stored.where}: reading images {start}..{stop - 1} failed ({e})") from e
    if done < len(buffer):
      raise ValueError(
          f"{stored.where} is truncated: images {start}..{stop - 1} end past the end of the "
          "file; re-create the file")

  def close(self) -> None:
    pass


class _StreamReader:
  """Reads rows of a compressed .npz member by streaming forward; re-opens to go back."""

  def __init__(self, stored: _StoredArray):
    self._stored = stored
    self._lock = threading.Lock()
    self._archive: zipfile.ZipFile | None = None
    self._stream: Any = None
    self._position = 0  # In the decompressed member.

  def readinto(self, start: int, stop: int, buffer: memoryview) -> None:
    stored = self._stored
    target = stored.offset + start * stored.row_bytes
    with self._lock:
      try:
        if self._stream is None or self._position > target:
          self._reopen()
        self._skip(target - self._position)
        done = 0
        while done < len(buffer):
          data = self._stream.read(min(len(buffer) - done, _STREAM_CHUNK_BYTES))
          if not data:
            raise EOFError("the member ends early")
          buffer[done:done + len(data)] = data
          done += len(data)
          self._position += len(data)
      except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError) as e:
        self._close_locked()
        raise ValueError(
            f"{stored.where}: images {start}..{stop - 1} cannot be decompressed ({e}); the file "
            "is corrupt or truncated, re-create it") from e

  def _reopen(self) -> None:
    if self._stream is not None:
      self._stream.close()
      self._stream = None
    if self._archive is None:
      self._archive = zipfile.ZipFile(self._stored.path)
    self._stream = self._archive.open(self._stored.member)
    self._position = 0

  def _skip(self, count: int) -> None:
    while count > 0:
      data = self._stream.read(min(count, _STREAM_CHUNK_BYTES))
      if not data:
        raise EOFError("the member ends early")
      count -= len(data)
      self._position += len(data)

  def _close_locked(self) -> None:
    if self._stream is not None:
      self._stream.close()
    if self._archive is not None:
      self._archive.close()
    self._stream = self._archive = None
    self._position = 0

  def close(self) -> None:
    with self._lock:
      self._close_locked()


def _make_reader(stored: _StoredArray) -> _PositionedReader | _StreamReader:
  return _StreamReader(stored) if stored.compressed else _PositionedReader(stored)


def _bytes_of(array: np.ndarray) -> memoryview:
  """A writable byte view of a C-contiguous array."""
  return memoryview(array.reshape(-1).view(np.uint8))


def _read_rows(reader: _PositionedReader | _StreamReader, stored: _StoredArray, start: int,
               stop: int, out: np.ndarray) -> None:
  """Reads rows [start, stop) of `stored` into `out`, converting in bounded chunks."""
  if stop <= start or stored.row_bytes == 0:
    return
  if out.dtype == stored.dtype and out.flags.c_contiguous:
    reader.readinto(start, stop, _bytes_of(out))
    return
  step = max(1, _CHUNK_BYTES // stored.row_bytes)
  buffer = np.empty((min(step, stop - start), *stored.shape[1:]), stored.dtype)
  for chunk_start in range(start, stop, step):
    chunk_stop = min(stop, chunk_start + step)
    chunk = buffer[:chunk_stop - chunk_start]
    reader.readinto(chunk_start, chunk_stop, _bytes_of(chunk))
    out[chunk_start - start:chunk_stop - start] = chunk


class NumpyFileSource(ImageSource):
  """Images in a .npy file or one array of an .npz file, read in blocks, never whole.

  The array is (N, H, W[, C]) or (N, D, H, W[, C]). An .npz array is `key` if given, else the
  one named 'images', else the only one. Uncompressed data (.npy, np.savez) is read by
  positioned reads; compressed members (np.savez_compressed) are streamed forward, so reading
  blocks in order is fast and a backwards read re-opens the member. Ids are the indices.
  """

  def __init__(self, path: PathLike, key: str | None = None):
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: no such file")
    if not path.lower().endswith(ARRAY_EXTENSIONS):
      raise ValueError(f"{path} is not a .npy or .npz file")
    if key is not None and not path.lower().endswith(".npz"):
      raise ValueError(f"{path} is a .npy file, which holds one array: key={key!r} needs a .npz")
    self._stored = _open_stored_array(path, key)
    self._reader = _make_reader(self._stored)
    if self._stored.member is None:
      self.description = path
    else:
      self.description = f"{path}:{self._stored.member[:-len('.npy')]}"

  def __len__(self) -> int:
    return self._stored.shape[0]

  @property
  def shape(self) -> tuple[int, ...]:
    return self._stored.shape[1:]

  @property
  def dtype(self) -> np.dtype:
    return _native(self._stored.dtype)

  def _read_block(self, start: int, stop: int, dtype: np.dtype) -> np.ndarray:
    out = np.empty((stop - start, *self.shape), dtype)
    _read_rows(self._reader, self._stored, start, stop, out)
    return out

  def _read_block_into(self, start: int, stop: int, out: np.ndarray) -> None:
    if out.flags.c_contiguous:
      _read_rows(self._reader, self._stored, start, stop, out)
    else:
      out[...] = self._read_block(start, stop, out.dtype)

  def close(self) -> None:
    self._reader.close()


# ----------------------------------------------------------------------------------------------
# Folders of image files, NIfTI volumes and arrays.


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
                  IndexError, KeyError, TypeError, zipfile.BadZipFile)

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_pid: int | None = None
_pool_lock = threading.Lock()


def _thread_pool() -> concurrent.futures.ThreadPoolExecutor:
  """A shared pool that decodes images (Pillow and zlib release the GIL); re-made after fork."""
  global _pool, _pool_pid
  with _pool_lock:
    if _pool is None or _pool_pid != os.getpid():
      _pool = concurrent.futures.ThreadPoolExecutor(
          max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="memjax-decode")
      _pool_pid = os.getpid()
    return _pool


def _map(function: Callable[[Any], Any], items: Sequence[Any], parallel_from: int) -> list[Any]:
  """`function` over `items`, in order; on the thread pool from `parallel_from` items on."""
  if len(items) < max(2, parallel_from):
    return [function(item) for item in items]
  return list(_thread_pool().map(function, items))


def _extension(name: str) -> str | None:
  """The supported extension of a file name (lower case), or None."""
  lower = name.lower()
  if lower.endswith(".nii.gz"):
    return ".nii.gz"
  extension = os.path.splitext(lower)[1]
  return extension if extension in SUPPORTED_EXTENSIONS else None


@dataclasses.dataclass
class _Entry:
  """One file of a folder and the images it contributes."""
  relpath: str  # POSIX, relative to the folder.
  path: str
  count: int  # Images in the file.
  shape: tuple[int, ...]  # Per-image shape.
  dtype: np.dtype  # Native.


@dataclasses.dataclass
class _PillowEntry(_Entry):
  convert_to: str | None  # The Pillow mode to convert to before reading pixels.


@dataclasses.dataclass
class _NiftiEntry(_Entry):
  volume_shape: tuple[int, ...]
  slice_axis: int | None  # None: the file is one image.


@dataclasses.dataclass
class _ArrayEntry(_Entry):
  stored: _StoredArray


# Pillow modes: (mode to convert to, or None; convert to with grayscale=True; channels; dtype).
_PILLOW_MODES: dict[str, tuple[str | None, str | None, int, Any]] = {
    "1": ("L", "L", 1, np.uint8),
    "L": (None, None, 1, np.uint8),
    "P": ("RGB", "L", 3, np.uint8),
    "PA": ("RGBA", "L", 4, np.uint8),
    "LA": (None, "L", 2, np.uint8),
    "La": ("LA", "L", 2, np.uint8),
    "RGB": (None, "L", 3, np.uint8),
    "RGBA": (None, "L", 4, np.uint8),
    "RGBa": ("RGBA", "L", 4, np.uint8),
    "RGBX": ("RGB", "L", 3, np.uint8),
    "CMYK": ("RGB", "L", 3, np.uint8),
    "YCbCr": ("RGB", "L", 3, np.uint8),
    "I;16": (None, None, 1, np.uint16),
    "I;16L": (None, None, 1, np.uint16),
    "I;16B": (None, None, 1, np.uint16),
    "I;16N": (None, None, 1, np.uint16),
    "I": (None, None, 1, np.int32),
    "F": (None, None, 1, np.float32),
}


def _probe_pillow(path: str, relpath: str, grayscale: bool) -> _PillowEntry:
  """Reads an image file's header (Pillow opens lazily) for its shape and dtype."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(path) as image:
      mode, (width, height), image_format = image.mode, image.size, image.format
      frames = getattr(image, "n_frames", 1)
  except (*_DECODE_ERRORS, Image.DecompressionBombError) as e:
    raise ValueError(f"{path} is not a readable image (corrupt or not an image: {e})") from e
  if mode not in _PILLOW_MODES:
    raise ValueError(f"{path} has Pillow mode {mode!r}, which is not supported; save it as "
                     "8- or 16-bit gray, RGB or RGBA")
  if frames > 1:
    raise ValueError(f"{path} holds {frames} frames; save each frame as its own file")
  convert_to, gray_convert_to, channels, dtype = _PILLOW_MODES[mode]
  if grayscale and channels > 1:
    convert_to, channels = gray_convert_to, 1
  if mode == "I" and image_format == "PNG":
    dtype = np.uint16  # PNG holds at most 16 bits; old Pillow versions open them as 'I'.
  shape = (height, width) if channels == 1 else (height, width, channels)
  return _PillowEntry(relpath, path, 1, shape, np.dtype(dtype), convert_to)


def _decode_pillow(entry: _PillowEntry) -> np.ndarray:
  """Decodes an image file (once) into an array of the entry's shape and dtype."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(entry.path) as image:
      image.load()
      if entry.convert_to is not None:
        image = image.convert(entry.convert_to)
      pixels = np.asarray(image)
  except (*_DECODE_ERRORS, Image.DecompressionBombError) as e:
    raise ValueError(
        f"{entry.path} (image {entry.relpath}) cannot be decoded ({e}); the file is "
        "corrupt or truncated, re-create or remove it") from e
  if pixels.shape != entry.shape:
    raise ValueError(f"{entry.path} now holds an image of shape {pixels.shape}, not "
                     f"{entry.shape} as when it was opened; re-open the source")
  return pixels.astype(entry.dtype, copy=False)


def _nifti_dtype(raw: np.dtype, scaled: bool, where: str) -> np.dtype:
  """The dtype that holds a NIfTI image's voxels as nibabel returns them."""
  if raw.fields is not None or raw.kind not in "biuf":
    raise ValueError(f"{where} holds voxels of type {raw}, which is not supported; save it "
                     "with integer or float voxels")
  if scaled:
    return np.dtype(np.float64 if raw == np.float64 else np.float32)
  return _native(raw)


def _probe_nifti(path: str, relpath: str, slice_axis: int | None) -> _NiftiEntry:
  """Reads a NIfTI header (nibabel loads lazily) for the image or slice shape and dtype."""
  import nibabel as nib  # pylint: disable=g-import-not-at-top

  try:
    image = nib.load(path, mmap=False)
    volume_shape = tuple(int(s) for s in image.shape)
    raw = np.dtype(image.get_data_dtype())
  except (*_DECODE_ERRORS, nib.filebasedimages.ImageFileError) as e:
    raise ValueError(f"{path} is not a readable NIfTI file (corrupt or not NIfTI: {e})") from e
  slope = float(getattr(image.dataobj, "slope", 1.0))
  inter = float(getattr(image.dataobj, "inter", 0.0))
  scaled = (np.isfinite(slope) and slope != 1.0) or (np.isfinite(inter) and inter != 0.0)
  dtype = _nifti_dtype(raw, scaled, path)
  if slice_axis is None:
    if not 2 <= len(volume_shape) <= 4:
      raise ValueError(f"{path} has shape {volume_shape}; a NIfTI image must be 2D, 3D or 4D "
                       "(D, H, W, C)")
    return _NiftiEntry(relpath, path, 1, volume_shape, dtype, volume_shape, None)
  if len(volume_shape) not in (3, 4):
    raise ValueError(f"{path} has shape {volume_shape}; nifti_slice_axis={slice_axis} needs 3D "
                     "volumes (or 4D with channels last)")
  shape = volume_shape[:slice_axis] + volume_shape[slice_axis + 1:]
  return _NiftiEntry(relpath, path, volume_shape[slice_axis], shape, dtype, volume_shape,
                     slice_axis)


def _load_nifti(entry: _NiftiEntry) -> np.ndarray:
  """The whole volume of a NIfTI file, scaled as nibabel scales it."""
  import nibabel as nib  # pylint: disable=g-import-not-at-top

  try:
    # mmap=False: mapped pages would count in the process RSS.
    volume = np.asanyarray(nib.load(entry.path, mmap=False).dataobj)
  except (*_DECODE_ERRORS, nib.filebasedimages.ImageFileError) as e:
    raise ValueError(f"{entry.path} cannot be read ({e}); the file is corrupt or truncated, "
                     "re-create or remove it") from e
  if volume.shape != entry.volume_shape:
    raise ValueError(f"{entry.path} now holds a volume of shape {volume.shape}, not "
                     f"{entry.volume_shape} as when it was opened; re-open the source")
  return volume


def _probe_array_file(path: str, relpath: str) -> _ArrayEntry:
  stored = _open_stored_array(path)
  return _ArrayEntry(relpath, path, stored.shape[0], stored.shape[1:], _native(stored.dtype),
                     stored)


def _find_files(root: str) -> list[str]:
  """Relative POSIX paths of the supported files under `root`, recursively, sorted.

  Hidden files and folders (names starting with '.') are skipped; linked folders are followed
  once.
  """
  def raise_error(error: OSError) -> None:
    raise error

  relpaths = []
  visited = set()
  for folder, subfolders, files in os.walk(root, onerror=raise_error, followlinks=True):
    real = os.path.realpath(folder)
    if real in visited:
      subfolders[:] = []
      continue
    visited.add(real)
    subfolders[:] = [name for name in subfolders if not name.startswith(".")]
    relative = pathlib.PurePath(os.path.relpath(folder, root))
    for name in files:
      if not name.startswith(".") and _extension(name) is not None:
        relpaths.append((relative / name).as_posix())
  return sorted(relpaths)


class FolderSource(ImageSource):
  """All image, NIfTI and .npy/.npz files under a folder, recursively, as one image set.

  Files are ordered by their relative POSIX paths. PNG (8/16-bit gray, RGB, RGBA), JPEG and
  TIFF files are one image each; a NIfTI file is one volume, or with `nifti_slice_axis` its 2D
  slices along that axis; a .npy/.npz file contributes its N images. Ids are the relative path,
  with ':k' appended for slice k or image k of an array file. Hidden files and other kinds of
  files are ignored. At open time only headers are read, to index the images and check that
  they all have one shape. A single file path is also accepted: its ids are its file name.

  Args:
    path: the folder (or one file).
    nifti_slice_axis: None to read each NIfTI file as one image, or 0, 1, 2 to split volumes
      into slices along that axis.
    grayscale: convert color images (RGB, RGBA, palette) to one channel, for folders that mix
      gray and color files.
  """

  def __init__(self, path: PathLike, *, nifti_slice_axis: int | None = None,
               grayscale: bool = False):
    path = os.fspath(path)
    if nifti_slice_axis is not None and (isinstance(nifti_slice_axis, bool) or
                                         nifti_slice_axis not in (0, 1, 2)):
      raise ValueError(f"nifti_slice_axis must be None, 0, 1 or 2, not {nifti_slice_axis!r}")
    self.description = path
    self._slice_axis = None if nifti_slice_axis is None else int(nifti_slice_axis)
    self._grayscale = bool(grayscale)
    if os.path.isdir(path):
      root, relpaths = path, _find_files(path)
      if not relpaths:
        raise ValueError(
            f"{path} holds no image files (searched recursively for "
            f"{', '.join(SUPPORTED_EXTENSIONS)})")
    elif os.path.isfile(path):
      if _extension(os.path.basename(path)) is None:
        raise ValueError(f"{path} is not a supported image file; expected one of "
                         f"{', '.join(SUPPORTED_EXTENSIONS)}")
      root, relpaths = os.path.dirname(path) or ".", [os.path.basename(path)]
    else:
      raise FileNotFoundError(f"{path}: no such file or folder")

    self._entries: list[_Entry] = _map(
        lambda relpath: self._probe(os.path.join(root, relpath), relpath), relpaths,
        parallel_from=_PARALLEL_MIN_FILES)
    first = self._entries[0]
    for entry in self._entries[1:]:
      if entry.shape != first.shape:
        color_mix = (isinstance(entry, _PillowEntry) and isinstance(first, _PillowEntry) and
                     _differ_by_color(entry.shape, first.shape))
        raise ValueError(
            f"{entry.path} has images of shape {entry.shape} but {first.path} has {first.shape}; "
            f"every image in {path} must have one shape"
            + (" (pass grayscale=True to convert the color images to gray)" if color_mix else ""))
    self._shape = first.shape
    self._dtype = np.result_type(*{entry.dtype for entry in self._entries})
    self._starts = np.cumsum([0] + [entry.count for entry in self._entries], dtype=np.int64)

    self._lock = threading.RLock()  # Guards the volume cache and the open stream.
    self._cached_volume: tuple[_NiftiEntry, np.ndarray] | None = None
    self._open_stream: tuple[_ArrayEntry, _StreamReader] | None = None

  def _probe(self, path: str, relpath: str) -> _Entry:
    extension = _extension(relpath)
    if extension in IMAGE_EXTENSIONS:
      return _probe_pillow(path, relpath, self._grayscale)
    if extension in NIFTI_EXTENSIONS:
      return _probe_nifti(path, relpath, self._slice_axis)
    return _probe_array_file(path, relpath)

  def __len__(self) -> int:
    return int(self._starts[-1])

  @property
  def shape(self) -> tuple[int, ...]:
    return self._shape

  @property
  def dtype(self) -> np.dtype:
    return self._dtype

  def _locate(self, index: int) -> tuple[int, int]:
    """The entry that holds image `index`, and the image's index inside it."""
    entry_index = int(np.searchsorted(self._starts, index, side="right")) - 1
    return entry_index, index - int(self._starts[entry_index])

  @staticmethod
  def _id(entry: _Entry, local: int) -> str:
    if isinstance(entry, _PillowEntry) or (
        isinstance(entry, _NiftiEntry) and entry.slice_axis is None):
      return entry.relpath
    return f"{entry.relpath}:{local}"

  def image_id(self, index: int) -> str:
    entry_index, local = self._locate(self._check_index(index))
    return self._id(self._entries[entry_index], local)

  def ids(self) -> list[str]:
    return [self._id(entry, local) for entry in self._entries for local in range(entry.count)]

  def neighbors(self, index: int) -> tuple[int | None, int | None]:
    index = self._check_index(index)
    entry_index, local = self._locate(index)
    entry = self._entries[entry_index]
    if not isinstance(entry, _NiftiEntry) or entry.slice_axis is None:
      return None, None
    return (index - 1 if local > 0 else None,
            index + 1 if local < entry.count - 1 else None)

  def _read_block(self, start: int, stop: int, dtype: np.dtype) -> np.ndarray:
    out = np.empty((stop - start, *self._shape), dtype)
    images: list[tuple[int, _PillowEntry]] = []
    entry_index, local_start = self._locate(start) if start < stop else (0, 0)
    position = start
    while position < stop:
      entry = self._entries[entry_index]
      local_stop = min(stop - int(self._starts[entry_index]), entry.count)
      count = local_stop - local_start
      if count > 0:
        destination = out[position - start:position - start + count]
        if isinstance(entry, _PillowEntry):
          images.append((position, entry))
        else:
          with self._lock:
            self._read_entry(entry, local_start, local_stop, destination)
        position += count
      entry_index, local_start = entry_index + 1, 0

    def decode(item: tuple[int, _PillowEntry]) -> None:
      index, entry = item
      out[index - start] = _decode_pillow(entry)

    _map(decode, images, parallel_from=2)
    return out

  def _read_entry(self, entry: _Entry, local_start: int, local_stop: int,
                  destination: np.ndarray) -> None:
    """Reads images [local_start, local_stop) of a NIfTI or array file into `destination`."""
    if isinstance(entry, _NiftiEntry):
      volume = self._volume(entry)
      if entry.slice_axis is None:
        destination[0] = volume
      else:
        index = [slice(None)] * volume.ndim
        index[entry.slice_axis] = slice(local_start, local_stop)
        destination[...] = np.moveaxis(volume[tuple(index)], entry.slice_axis, 0)
    elif isinstance(entry, _ArrayEntry):
      _read_rows(self._reader(entry), entry.stored, local_start, local_stop, destination)
    else:
      raise TypeError(f"unexpected entry {entry!r}")

  def _volume(self, entry: _NiftiEntry) -> np.ndarray:
    """The entry's volume, loaded once and kept until another volume is read."""
    if self._cached_volume is not None and self._cached_volume[0] is entry:
      return self._cached_volume[1]
    self._cached_volume = None  # Release the last volume before loading the next.
    volume = _load_nifti(entry)
    self._cached_volume = (entry, volume)
    return volume

  def _reader(self, entry: _ArrayEntry) -> _PositionedReader | _StreamReader:
    """A reader for an array file; at most one stream (compressed .npz) stays open."""
    if not entry.stored.compressed:
      return _PositionedReader(entry.stored)
    if self._open_stream is not None and self._open_stream[0] is entry:
      return self._open_stream[1]
    if self._open_stream is not None:
      self._open_stream[1].close()
    reader = _StreamReader(entry.stored)
    self._open_stream = (entry, reader)
    return reader

  def close(self) -> None:
    with self._lock:
      self._cached_volume = None
      if self._open_stream is not None:
        self._open_stream[1].close()
        self._open_stream = None


# ----------------------------------------------------------------------------------------------
# Opening what the user names.


_TFDS_PATTERN = re.compile(
    r"^tfds:(?P<name>[A-Za-z0-9_.-]+)(?:/(?P<config>[A-Za-z0-9_.-]+))?:(?P<split>\S+)$")


def parse_tfds_spec(spec: str) -> tuple[str, str | None, str]:
  """Splits 'tfds:NAME[/CONFIG]:SPLIT' into (name, config or None, split)."""
  match = _TFDS_PATTERN.match(spec)
  if match is None:
    raise ValueError(
        f"malformed TFDS source {spec!r}: expected 'tfds:NAME[/CONFIG]:SPLIT', e.g. "
        "'tfds:brats2020/slices:train' or 'tfds:cxr_pneumonia/256:test[:10%]'")
  return match["name"], match["config"], match["split"]


_NPZ_KEY_PATTERN = re.compile(r"^(?P<path>.+\.npz):(?P<key>[^:/\\]+)$", re.IGNORECASE)


def open_source(spec: Any, *, nifti_slice_axis: int | None = None,
                grayscale: bool = False) -> ImageSource:
  """Opens what a user names as an image set.

  Args:
    spec: an ImageSource (returned as is); a numpy array (N, *shape); a folder; a .npy file; an
      .npz file, optionally 'file.npz:KEY'; one image or NIfTI file; or 'tfds:NAME[/CONFIG]:SPLIT'.
    nifti_slice_axis: for folders and NIfTI files, see FolderSource.
    grayscale: for folders and image files, see FolderSource.

  Returns:
    The image source.
  """
  if isinstance(spec, ImageSource):
    return spec
  if isinstance(spec, np.ndarray):
    return ArraySource(spec)
  if not isinstance(spec, (str, os.PathLike)):
    raise TypeError(f"cannot open {type(spec).__name__} {spec!r} as images: expected a path, "
                    "a 'tfds:' name, a numpy array or an ImageSource")
  path = os.fspath(spec)
  if isinstance(spec, str) and path.startswith("tfds:"):
    name, config, split = parse_tfds_spec(path)
    from memjax.data import tfds_source  # pylint: disable=g-import-not-at-top  (imports TFDS)
    return tfds_source.TfdsSource(name, config, split)
  if not os.path.exists(path):
    match = _NPZ_KEY_PATTERN.match(path)
    if match is not None and os.path.isfile(match["path"]):
      return NumpyFileSource(match["path"], key=match["key"])
    missing = match["path"] if match is not None else path
    raise FileNotFoundError(f"{missing}: no such file or folder")
  if os.path.isfile(path) and path.lower().endswith(ARRAY_EXTENSIONS):
    return NumpyFileSource(path)
  return FolderSource(path, nifti_slice_axis=nifti_slice_axis, grayscale=grayscale)
