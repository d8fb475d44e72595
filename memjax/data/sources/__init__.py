"""Image sources: folders, .npy/.npz files, NIfTI volumes, TFDS splits and arrays behind one
interface, and `open_source`, which opens any of them from what a user names.

The memorization audit correlates every synthetic image with every training image, so it
streams both sets in blocks. An `ImageSource` (base.py) is a fixed, ordered set of images of one
shape that reads any block `[start, stop)` on demand and names each image, so a match can be
traced back to its file (and slice). The kinds: arrays.py (in-memory arrays, subsets, .npy and
.npz files), folders.py (image, NIfTI and array files under a folder), tfds.py (prepared TFDS
data sets), subsets.py (a fixed, seeded subset of a source, and a source's pixel-block means).

Sources never hold a whole training set in memory: `.npy` and stored `.npz` arrays are read by
positioned reads (no memory map, whose pages would count in the process RSS), compressed `.npz`
members are streamed, image files are decoded one block at a time, and NIfTI slices keep only
the most recently loaded volume. A source may be read from one background thread (the search
prefetches the next block) while other threads ask for ids and neighbours.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from memjax.data.sources.arrays import ARRAY_EXTENSIONS
from memjax.data.sources.arrays import ArraySource
from memjax.data.sources.arrays import IndexedSource
from memjax.data.sources.arrays import NumpyFileSource
from memjax.data.sources.base import aligned_empty
from memjax.data.sources.base import check_same_shape
from memjax.data.sources.base import ImageSource
from memjax.data.sources.base import PathLike
from memjax.data.sources.folders import FolderSource
from memjax.data.sources.folders import IMAGE_EXTENSIONS
from memjax.data.sources.folders import NIFTI_EXTENSIONS
from memjax.data.sources.folders import SUPPORTED_EXTENSIONS
from memjax.data.sources.subsets import BlockMeanSource
from memjax.data.sources.subsets import ChannelDroppedSource
from memjax.data.sources.subsets import one_layout
from memjax.data.sources.subsets import subset
from memjax.data.sources.subsets import subset_indices
from memjax.data.sources.subsets import SubsetSource
from memjax.data.sources.tfds import parse_tfds_spec
from memjax.data.sources.tfds import TfdsSource

__all__ = [
    "ARRAY_EXTENSIONS", "IMAGE_EXTENSIONS", "NIFTI_EXTENSIONS", "SUPPORTED_EXTENSIONS",
    "ArraySource", "BlockMeanSource", "ChannelDroppedSource", "FolderSource", "ImageSource", "IndexedSource",
    "NumpyFileSource", "PathLike", "SubsetSource", "TfdsSource", "aligned_empty",
    "check_same_shape", "one_layout", "open_source", "parse_tfds_spec", "subset", "subset_indices",
]

_NPZ_KEY_PATTERN = re.compile(r"^(?P<path>.+\.npz):(?P<key>[^:/\\]+)$", re.IGNORECASE)


def open_source(spec: Any, *, nifti_slice_axis: int | None = None, grayscale: bool = False,
                num_images: int | None = None, seed: int | None = 0) -> ImageSource:
  """Opens what a user names as an image set.

  Args:
    spec: an ImageSource (returned as is); a numpy array (N, *shape); a folder; a .npy file; an
      .npz file, optionally 'file.npz:KEY'; one image or NIfTI file; or 'tfds:NAME[/CONFIG]:SPLIT'.
    nifti_slice_axis: for folders and NIfTI files, see FolderSource.
    grayscale: for folders and image files, see FolderSource.
    num_images: 0 or None: every image; N: the fixed subset of N images that `seed` chooses
      (`subsets.subset`: the same N images every run, on every process), as config.data.num_images
      and config.data.subset_seed choose a training set.
    seed: the subset's seed (None: 0).

  Returns:
    The image source.
  """
  if num_images:
    return subset(open_source(spec, nifti_slice_axis=nifti_slice_axis, grayscale=grayscale),
                  num_images, seed)
  if isinstance(spec, ImageSource):
    return spec
  if isinstance(spec, np.ndarray):
    return ArraySource(spec)
  if not isinstance(spec, (str, os.PathLike)):
    raise TypeError(f"cannot open {type(spec).__name__} {spec!r} as images: expected a path, "
                    "a 'tfds:' name, a numpy array or an ImageSource")
  path = os.fspath(spec)
  if isinstance(spec, str) and path.startswith("tfds:"):
    return TfdsSource(*parse_tfds_spec(path))
  if not os.path.lexists(path):
    match = _NPZ_KEY_PATTERN.match(path)
    if match is not None and os.path.lexists(match["path"]):
      return NumpyFileSource(match["path"], key=match["key"])
    missing = match["path"] if match is not None else path
    raise FileNotFoundError(f"{missing}: no such file or folder")
  if not os.path.isdir(path) and path.lower().endswith(ARRAY_EXTENSIONS):
    return NumpyFileSource(path)
  return FolderSource(path, nifti_slice_axis=nifti_slice_axis, grayscale=grayscale)

# docs/architecture.md names the one opener `sources.open`; both names are the same function.
open = open_source  # pylint: disable=redefined-builtin
