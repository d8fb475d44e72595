"""Provenance: what summary.json and the page record so that a signed report can be tied to the
data it audited: the date, memjax's version, the settings, and a sha256 of each input set.

A folder's fingerprint is the sha256 of its file list (relative paths, in the order the audit
reads them) and of every file's bytes, so renaming, adding, removing or changing one file changes
it; a .npy/.npz file's is that of its bytes; an in-memory array's that of its shape, dtype and
bytes. Any other set (a tfds split, a subset) is fingerprinted from its image ids, shape, dtype
and the bytes of its images as stored, read block by block (on process 0 only).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from typing import Any

import numpy as np

import memjax
from memjax.data.sources import arrays
from memjax.data.sources import folders

_READ_BYTES = 1 << 20
_IMAGE_BYTES_AT_ONCE = 64 << 20


def fingerprint(source: Any) -> dict[str, Any]:
  """{"sha256", "of" ("files", "file", "array" or "images"), "count"} of one image set.

  Files are hashed as bytes on disk, never read through the source, so that a process of a
  multi-host audit reads no image rows for it beyond its own share.
  """
  digest = hashlib.sha256()
  if isinstance(source, folders.FolderSource):
    files = source.files()
    for relpath, _ in files:
      digest.update(relpath.encode() + b"\0")
    for _, path in files:
      _hash_file(digest, path)
    return {"sha256": digest.hexdigest(), "of": "files", "count": len(files)}
  stored = getattr(source, "_stored", None)  # a .npy file, or the .npz file of a member
  if isinstance(source, arrays.NumpyFileSource) and stored is not None:
    _hash_file(digest, stored.path)
    return {"sha256": digest.hexdigest(), "of": "file", "count": len(source)}
  if isinstance(source, arrays.ArraySource):
    array = np.ascontiguousarray(source.view(0, len(source)))
    digest.update(repr((array.shape, str(array.dtype))).encode())
    digest.update(memoryview(array).cast("B"))
    return {"sha256": digest.hexdigest(), "of": "array", "count": len(source)}
  digest.update(repr((tuple(source.shape), str(np.dtype(source.dtype)))).encode())
  for image_id in source.ids():
    digest.update(str(image_id).encode() + b"\0")
  row_bytes = max(1, int(np.prod(source.shape)) * np.dtype(source.dtype).itemsize)
  step = max(1, _IMAGE_BYTES_AT_ONCE // row_bytes)
  for start in range(0, len(source), step):
    block = np.ascontiguousarray(source.read(start, min(start + step, len(source)), dtype=None))
    digest.update(block.tobytes())
  return {"sha256": digest.hexdigest(), "of": "images", "count": len(source)}


def record(options: Any, sources: dict[str, Any]) -> dict[str, Any]:
  """The provenance block of summary.json: date (UTC), version, settings, input fingerprints."""
  settings = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(options)
  return {
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "memjax_version": memjax.__version__,
      "settings": {key: (list(value) if isinstance(value, tuple) else value)
                   for key, value in settings.items()},
      "inputs": {role: fingerprint(source) for role, source in sources.items()
                 if source is not None},
  }


def _hash_file(digest, path) -> None:
  with open(path, "rb") as f:
    while chunk := f.read(_READ_BYTES):
      digest.update(chunk)
