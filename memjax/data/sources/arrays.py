"""Images in arrays: in memory (`ArraySource`), a subset of another source (`IndexedSource`), and
.npy files or .npz members read in blocks, never whole (`NumpyFileSource`).

.npy headers are parsed by `numpy.lib.format`. Uncompressed data (a .npy file, a stored .npz
member) is read by positioned reads (no memory map, whose pages would count in the process RSS);
compressed .npz members are streamed forward. numpy offers no way to find where a stored zip
member's data begins, so that offset is read from the member's local zip header here.
"""

from __future__ import annotations

from collections.abc import Iterable
import dataclasses
import os
import struct
import threading
from typing import Any
import zipfile
import zlib

import numpy as np

from memjax.data.sources import base

ARRAY_EXTENSIONS = (".npy", ".npz")

# Bounds the temporary buffer of a read that converts dtypes or streams from a zip.
_CHUNK_BYTES = 1 << 25
_STREAM_CHUNK_BYTES = 1 << 20

# A zip local file header: its signature, size, and where its name and extra field lengths lie.
_ZIP_LOCAL_SIGNATURE = b"PK\x03\x04"
_ZIP_LOCAL_HEADER_BYTES = 30
_ZIP_LOCAL_LENGTHS_AT = 26


# ----------------------------------------------------------------------------------------------
# In-memory arrays and subsets.


class ArraySource(base.ImageSource):
  """Images in an in-memory array (N, *shape); ids are the indices."""

  def __init__(self, array: Any, description: str = "array"):
    array = np.asarray(array)
    self.description = description
    base.check_images_layout(array.shape, description)
    base.check_pixel_dtype(array.dtype, description)
    self._array = array
    self._set_layout(array.shape[0], array.shape[1:], array.dtype)

  def _read_block(self, start: int, stop: int, dtype: np.dtype) -> np.ndarray:
    return np.array(self._array[start:stop], dtype=dtype, order="C", copy=True)

  def _read_block_into(self, start: int, stop: int, out: np.ndarray) -> None:
    np.copyto(out, self._array[start:stop], casting="unsafe")

  def view(self, start: int, stop: int) -> np.ndarray:
    """Images [start, stop) as a view of the array, without a copy (callers must not write)."""
    start, stop = self._check_range(start, stop)
    return self._array[start:stop]


class IndexedSource(base.ImageSource):
  """The images of another source at the given indices, in that order (a subset or a reordering).

  Reads gather runs of consecutive indices, so a sorted subset reads in few calls.
  """

  def __init__(self, source: base.ImageSource, indices: Any):
    indices = np.asarray(indices, np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= len(source)):
      raise IndexError(f"indices out of range for {source.description}, which holds "
                       f"{len(source)} images")
    self._source = source
    self._indices = indices
    self.description = f"{source.description} ({indices.size} of {len(source)} images)"
    self._set_layout(indices.size, source.shape, source.dtype)

  def _read_block(self, start: int, stop: int, dtype: np.dtype) -> np.ndarray:
    out = np.empty((stop - start, *self.shape), dtype)
    self._read_block_into(start, stop, out)
    return out

  def _read_block_into(self, start: int, stop: int, out: np.ndarray) -> None:
    wanted = self._indices[start:stop]
    if isinstance(self._source, ArraySource):  # in memory: one gather
      np.copyto(out, self._source._array[wanted], casting="unsafe")  # pylint: disable=protected-access
      return
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
# Where an array file's data lies.


@dataclasses.dataclass(frozen=True)
class StoredArray:
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
  base.check_pixel_dtype(dtype, where)
  base.check_images_layout(tuple(shape), where)
  return tuple(int(s) for s in shape), dtype, f.tell() - begin


def _check_data_size(stored: StoredArray, available: int) -> None:
  """Raises when fewer data bytes are stored than the header promises (a truncated file)."""
  needed = stored.shape[0] * stored.row_bytes
  if available < needed:
    raise ValueError(
        f"{stored.where} is truncated: its header promises {stored.shape[0]} images of shape "
        f"{stored.shape[1:]} ({needed} bytes of {stored.dtype}) but only {max(available, 0)} "
        "bytes follow; re-create the file")


def _open_npy(path: str) -> StoredArray:
  with open(path, "rb") as f:
    shape, dtype, header_size = _parse_npy_header(f, path)
  stored = StoredArray(path, None, shape, dtype, header_size, compressed=False)
  _check_data_size(stored, os.path.getsize(path) - header_size)
  return stored


def _npz_keys(infos: Iterable[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
  """The arrays of an .npz file by key (member name without '.npy'), as np.load names them."""
  return {info.filename[:-len(".npy")]: info for info in infos
          if info.filename.endswith(".npy") and not info.is_dir()}


def _choose_npz_key(path: str, arrays: dict[str, zipfile.ZipInfo], key: str | None) -> str:
  """`key` if the .npz file holds it, else 'images', else its only array."""
  if key is not None:
    if key not in arrays:
      raise ValueError(f"{path} has no array {key!r}; its arrays are {sorted(arrays)}")
    return key
  if "images" in arrays:
    return "images"
  if len(arrays) == 1:
    return next(iter(arrays))
  if not arrays:
    raise ValueError(f"{path} holds no arrays")
  raise ValueError(
      f"{path} holds several arrays {sorted(arrays)} and none is named 'images'; choose "
      f"one with '{path}:KEY' (or key=KEY), e.g. '{path}:{sorted(arrays)[0]}'")


def _open_npz(path: str, key: str | None) -> StoredArray:
  """Locates one array of an .npz file: `key`, else 'images', else the only array."""
  try:
    archive = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
    raise ValueError(f"{path} is not a valid .npz file (corrupt or truncated zip: {e})") from e
  with archive:
    arrays = _npz_keys(archive.infolist())
    key = _choose_npz_key(path, arrays, key)
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
  stored = StoredArray(path, info.filename, shape, dtype, header_size, compressed=True)
  _check_data_size(stored, info.file_size - header_size)
  return stored


def _open_stored_member(path: str, info: zipfile.ZipInfo, where: str) -> StoredArray:
  """Locates an uncompressed .npz member's data inside the zip, from its local file header."""
  with open(path, "rb") as f:
    f.seek(info.header_offset)
    local_header = f.read(_ZIP_LOCAL_HEADER_BYTES)
    if (len(local_header) != _ZIP_LOCAL_HEADER_BYTES or
        not local_header.startswith(_ZIP_LOCAL_SIGNATURE)):
      raise ValueError(f"{where} is not a valid .npz member (bad local zip header); "
                       "re-create the file")
    name_length, extra_length = struct.unpack_from("<HH", local_header, _ZIP_LOCAL_LENGTHS_AT)
    member_offset = info.header_offset + _ZIP_LOCAL_HEADER_BYTES + name_length + extra_length
    f.seek(member_offset)
    shape, dtype, header_size = _parse_npy_header(f, where)
  stored = StoredArray(path, info.filename, shape, dtype, member_offset + header_size,
                       compressed=False)
  _check_data_size(
      stored,
      min(info.file_size - header_size, os.path.getsize(path) - stored.offset))
  return stored


def open_stored_array(path: str, key: str | None = None) -> StoredArray:
  """Locates the images of a .npy file or of one array of an .npz file, checking the header."""
  if path.lower().endswith(".npz"):
    return _open_npz(path, key)
  return _open_npy(path)


# ----------------------------------------------------------------------------------------------
# Reading rows of an array file.


class PositionedReader:
  """Reads rows of an uncompressed array by positioned reads; stateless, so thread-safe."""

  def __init__(self, stored: StoredArray):
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


class StreamReader:
  """Reads rows of a compressed .npz member by streaming forward; re-opens to go back."""

  def __init__(self, stored: StoredArray):
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
          data = self._read_some(len(buffer) - done)
          buffer[done:done + len(data)] = data
          done += len(data)
      except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError) as e:
        self._close_locked()
        raise ValueError(
            f"{stored.where}: images {start}..{stop - 1} cannot be decompressed ({e}); the file "
            "is corrupt or truncated, re-create it") from e

  def _read_some(self, count: int) -> bytes:
    """Up to `count` (at least 1) next bytes of the member, in bounded chunks."""
    data = self._stream.read(min(count, _STREAM_CHUNK_BYTES))
    if not data:
      raise EOFError("the member ends early")
    self._position += len(data)
    return data

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
      count -= len(self._read_some(count))

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


def make_reader(stored: StoredArray) -> PositionedReader | StreamReader:
  """A reader of `stored`'s rows: positioned reads where uncompressed, else a stream."""
  return StreamReader(stored) if stored.compressed else PositionedReader(stored)


def _bytes_of(array: np.ndarray) -> memoryview:
  """A writable byte view of a C-contiguous array."""
  return memoryview(array.reshape(-1).view(np.uint8))


def read_rows(reader: PositionedReader | StreamReader, stored: StoredArray, start: int,
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


class NumpyFileSource(base.ImageSource):
  """Images in a .npy file or one array of an .npz file, read in blocks, never whole.

  The array is (N, H, W[, C]) or (N, D, H, W[, C]). An .npz array is `key` if given, else the
  one named 'images', else the only one. Uncompressed data (.npy, np.savez) is read by
  positioned reads; compressed members (np.savez_compressed) are streamed forward, so reading
  blocks in order is fast and a backwards read re-opens the member. Ids are the indices.
  """

  def __init__(self, path: base.PathLike, key: str | None = None):
    path = os.fspath(path)
    base.check_regular_file(path)  # A FIFO would block the open.
    if not path.lower().endswith(ARRAY_EXTENSIONS):
      raise ValueError(f"{path} is not a .npy or .npz file")
    if key is not None and not path.lower().endswith(".npz"):
      raise ValueError(f"{path} is a .npy file, which holds one array: key={key!r} needs a .npz")
    self._stored = open_stored_array(path, key)
    self._reader = make_reader(self._stored)
    if self._stored.member is None:
      self.description = path
    else:
      self.description = f"{path}:{self._stored.member[:-len('.npy')]}"
    self._set_layout(self._stored.shape[0], self._stored.shape[1:], self._stored.dtype)

  def _read_block(self, start: int, stop: int, dtype: np.dtype) -> np.ndarray:
    out = np.empty((stop - start, *self.shape), dtype)
    read_rows(self._reader, self._stored, start, stop, out)
    return out

  def _read_block_into(self, start: int, stop: int, out: np.ndarray) -> None:
    if out.flags.c_contiguous:
      read_rows(self._reader, self._stored, start, stop, out)
    else:
      out[...] = self._read_block(start, stop, out.dtype)

  def close(self) -> None:
    self._reader.close()
