"""`FolderSource`: all image, NIfTI and .npy/.npz files under a folder, as one image set.

Each kind of file has a probe, which reads only its header at open time (to index the images and
check that they all have one shape), and a reader: image files are decoded one block at a time on
a thread pool, NIfTI slices keep only the most recently loaded volume, and array files are read
as `NumpyFileSource` reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import concurrent.futures
import dataclasses
import logging
import os
import pathlib
import struct
import threading
from typing import Any
import zipfile
import zlib

import numpy as np

from memjax.data.sources import arrays
from memjax.data.sources import base

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
SUPPORTED_EXTENSIONS = IMAGE_EXTENSIONS + NIFTI_EXTENSIONS + arrays.ARRAY_EXTENSIONS

# From this many files on, headers are probed on a thread pool (images: from 2 on).
_PARALLEL_MIN_FILES = 16

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
                  IndexError, KeyError, TypeError, zipfile.BadZipFile)

_logger = logging.getLogger(__name__)

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


def extension(name: str) -> str | None:
  """The supported extension of a file name (lower case), or None."""
  lower = name.lower()
  if lower.endswith(".nii.gz"):
    return ".nii.gz"
  suffix = os.path.splitext(lower)[1]
  return suffix if suffix in SUPPORTED_EXTENSIONS else None


# ----------------------------------------------------------------------------------------------
# The files of a folder: one entry each, from its header.


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
  stored: arrays.StoredArray


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
  return base.native(raw)


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
  stored = arrays.open_stored_array(path)
  return _ArrayEntry(relpath, path, stored.shape[0], stored.shape[1:], base.native(stored.dtype),
                     stored)


def _probe(path: str, relpath: str, slice_axis: int | None, grayscale: bool) -> _Entry:
  """The entry of one supported file, from its header."""
  suffix = extension(relpath)
  if suffix in IMAGE_EXTENSIONS:
    return _probe_pillow(path, relpath, grayscale)
  if suffix in NIFTI_EXTENSIONS:
    return _probe_nifti(path, relpath, slice_axis)
  return _probe_array_file(path, relpath)


def _find_files(root: str) -> list[str]:
  """Relative POSIX paths of the supported files under `root`, recursively, sorted.

  Hidden files and folders (names starting with '.') are skipped; linked folders are followed
  once. Entries that are not regular files (a FIFO, a socket, a device, a broken link) are
  skipped with one warning naming them: they are never opened, since opening a FIFO blocks.
  """
  def raise_error(error: OSError) -> None:
    raise error

  relpaths, skipped = [], []
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
      if not name.startswith(".") and extension(name) is not None:
        relpath = (relative / name).as_posix()
        problem = base.not_a_regular_file(os.path.join(folder, name))
        if problem is None:
          relpaths.append(relpath)
        else:
          skipped.append((relpath, problem))
  if skipped:
    _logger.warning("%s: skipping %d %s not regular files (never opened): %s", root,
                    len(skipped), "entry that is" if len(skipped) == 1 else "entries that are",
                    base.describe_skipped(sorted(skipped)))
  return sorted(relpaths)


def _list_files(path: str) -> tuple[str, list[str]]:
  """The root and the relative paths of the supported files that `path` names (folder or file)."""
  if os.path.isdir(path):
    relpaths = _find_files(path)
    if not relpaths:
      raise ValueError(
          f"{path} holds no image files (searched recursively for "
          f"{', '.join(SUPPORTED_EXTENSIONS)})")
    return path, relpaths
  if not os.path.lexists(path):
    raise FileNotFoundError(f"{path}: no such file or folder")
  base.check_regular_file(path)
  if extension(os.path.basename(path)) is None:
    raise ValueError(f"{path} is not a supported image file; expected one of "
                     f"{', '.join(SUPPORTED_EXTENSIONS)}")
  return os.path.dirname(path) or ".", [os.path.basename(path)]


def _check_one_shape(entries: Sequence[_Entry], path: str) -> None:
  """Raises naming the first file whose images differ in shape from the first file's."""
  first = entries[0]
  for entry in entries[1:]:
    if entry.shape != first.shape:
      color_mix = (isinstance(entry, _PillowEntry) and isinstance(first, _PillowEntry) and
                   base.differ_by_color(entry.shape, first.shape))
      raise ValueError(
          f"{entry.path} has images of shape {entry.shape} but {first.path} has {first.shape}; "
          f"every image in {path} must have one shape"
          + (" (pass grayscale=True to convert the color images to gray)" if color_mix else ""))


# ----------------------------------------------------------------------------------------------
# The source.


class FolderSource(base.ImageSource):
  """All image, NIfTI and .npy/.npz files under a folder, recursively, as one image set.

  Files are ordered by their relative POSIX paths. PNG (8/16-bit gray, RGB, RGBA), JPEG and
  TIFF files are one image each; a NIfTI file is one volume, or with `nifti_slice_axis` its 2D
  slices along that axis; a .npy/.npz file contributes its N images. Ids are the relative path,
  with ':k' appended for slice k or image k of an array file. Hidden files and other kinds of
  files are ignored. At open time only headers are read, to index the images and check that
  they all have one shape. A single file path is also accepted: its ids are its file name.
  Entries that are not regular files (FIFOs, sockets, devices, broken links) are skipped with
  a warning that names them, and refused when named directly; they are never opened.

  Args:
    path: the folder (or one file).
    nifti_slice_axis: None to read each NIfTI file as one image, or 0, 1, 2 to split volumes
      into slices along that axis.
    grayscale: convert color images (RGB, RGBA, palette) to one channel, for folders that mix
      gray and color files.
  """

  def __init__(self, path: base.PathLike, *, nifti_slice_axis: int | None = None,
               grayscale: bool = False):
    path = os.fspath(path)
    if nifti_slice_axis is not None and (isinstance(nifti_slice_axis, bool) or
                                         nifti_slice_axis not in (0, 1, 2)):
      raise ValueError(f"nifti_slice_axis must be None, 0, 1 or 2, not {nifti_slice_axis!r}")
    self.description = path
    slice_axis = None if nifti_slice_axis is None else int(nifti_slice_axis)
    root, relpaths = _list_files(path)
    self._entries: list[_Entry] = _map(
        lambda relpath: _probe(os.path.join(root, relpath), relpath, slice_axis, bool(grayscale)),
        relpaths, parallel_from=_PARALLEL_MIN_FILES)
    _check_one_shape(self._entries, path)
    self._starts = np.cumsum([0] + [entry.count for entry in self._entries], dtype=np.int64)
    self._set_layout(self._starts[-1], self._entries[0].shape,
                     np.result_type(*{entry.dtype for entry in self._entries}))

    self._lock = threading.RLock()  # Guards the volume cache and the open stream.
    self._cached_volume: tuple[_NiftiEntry, np.ndarray] | None = None
    self._open_stream: tuple[_ArrayEntry, arrays.StreamReader] | None = None

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

  def files(self) -> list[tuple[str, str]]:
    """(relative POSIX path, path) of every file the images come from, once each, in order."""
    return list(dict.fromkeys((entry.relpath, entry.path) for entry in self._entries))

  def neighbors(self, index: int) -> tuple[int | None, int | None]:
    index = self._check_index(index)
    entry_index, local = self._locate(index)
    entry = self._entries[entry_index]
    if not isinstance(entry, _NiftiEntry) or entry.slice_axis is None:
      return None, None
    return (index - 1 if local > 0 else None,
            index + 1 if local < entry.count - 1 else None)

  def _read_block(self, start: int, stop: int, dtype: np.dtype) -> np.ndarray:
    out = np.empty((stop - start, *self.shape), dtype)
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
      arrays.read_rows(self._reader(entry), entry.stored, local_start, local_stop, destination)
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

  def _reader(self, entry: _ArrayEntry) -> arrays.PositionedReader | arrays.StreamReader:
    """A reader for an array file; at most one stream (compressed .npz) stays open."""
    if not entry.stored.compressed:
      return arrays.PositionedReader(entry.stored)
    if self._open_stream is not None and self._open_stream[0] is entry:
      return self._open_stream[1]
    if self._open_stream is not None:
      self._open_stream[1].close()
    reader = arrays.StreamReader(entry.stored)
    self._open_stream = (entry, reader)
    return reader

  def close(self) -> None:
    with self._lock:
      self._cached_volume = None
      if self._open_stream is not None:
        self._open_stream[1].close()
        self._open_stream = None
