"""The training images as the loop reads them: `TrainingData`, opened through
`memjax.data.sources.open`, and the block means of `data.downsample` with their inverse grid.

The loop never imports a data set's builder: every source (a 'tfds:' data set, a folder, an .npy
or .npz file) is opened by the sources' one `open`, and read example by example by the input
pipeline (`memjax.data.pipeline`).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from typing import TYPE_CHECKING, Any

from absl import logging
import jax
import numpy as np

if TYPE_CHECKING:  # Configs are only read here; a bare machine may lack ml_collections.
  import ml_collections


@dataclasses.dataclass(frozen=True)
class TrainingData:
  """A random-access source of example dicts, and its images' shape and dtype."""
  source: Any
  image_shape: tuple[int, ...]  # (H, W, C) or (D, H, W, C): channels always last.
  image_dtype: np.dtype
  description: str


class _ImageExamples:
  """An `ImageSource` (folder, .npy, TFDS split, ...) as examples {"image": (..., C) array}."""

  def __init__(self, images: Any, add_channel: bool):
    self._images = images
    self._add_channel = add_channel

  def __len__(self) -> int:
    return len(self._images)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    image = self._images.read(index, index + 1, dtype=None)[0]
    return {"image": image[..., None] if self._add_channel else image}


def open_training_data(options: ml_collections.ConfigDict,
                       features: Sequence[str] = ("image",)) -> TrainingData:
  """The training images that `options.source` names, as examples {"image": ...}.

  options.source: anything `memjax.data.sources.open` reads: 'tfds:NAME/CONFIG:SPLIT' (a memjax
  TFDS data set; mni152 is prepared on first use since it ships with nilearn, the others need
  `memjax --config=prepare`), a folder, or an .npy/.npz file. Sources give single-channel images
  without their channel axis, which is put back: 2D images (H, W) become (H, W, 1), and with
  options.volumes=True 3D volumes (D, H, W) become (D, H, W, 1). options.num_images (0: all)
  keeps a fixed subset chosen by options.subset_seed alone (`sources.subset`).
  features: what the trainer reads; sources give images only.
  """
  spec = options.get("source")
  if not spec:
    raise ValueError("--config.data.source is required: 'tfds:NAME/CONFIG:SPLIT', a folder, or "
                     "a .npy/.npz file of training images")
  if tuple(features) != ("image",):
    raise ValueError(f"the trainer reads the features {tuple(features)}, but --config.data.source "
                     f"{spec!r} gives images only; pass the examples to train(data=...)")
  images = _open_images(spec, options.get("data_dir"), options.get("nifti_slice_axis"))
  # A fixed, seeded subset of options.num_images (0: all), the same on every run and process.
  from memjax.data import sources  # pylint: disable=g-import-not-at-top
  images = sources.subset(images, options.get("num_images") or None,
                          options.get("subset_seed", 0))
  shape = tuple(images.shape)
  add_channel = len(shape) == (3 if options.get("volumes") else 2)
  if add_channel:
    shape = (*shape, 1)
  return TrainingData(_ImageExamples(images, add_channel), shape, np.dtype(images.dtype),
                      images.description)


def _open_images(spec: Any, data_dir: str | None, nifti_slice_axis: int | None = None) -> Any:
  """`sources.open(spec)`, with the two things it does not do yet for TFDS data sets.

  Until `memjax.data.sources.open` takes a `data_dir` and prepares, on first use, the data sets
  that need no manual download (mni152), both are done here: the source is built by the
  sources' own `TfdsSource` when a data_dir is given, and an unprepared data set is prepared
  through TFDS's registry, where `TfdsSource` has registered memjax's builders.
  """
  from memjax.data import sources  # pylint: disable=g-import-not-at-top
  is_tfds = isinstance(spec, str) and spec.startswith("tfds:")
  if not is_tfds:  # NIfTI files in a folder: volumes, or slices along nifti_slice_axis
    return sources.open(spec, nifti_slice_axis=nifti_slice_axis)

  def open_split():
    if data_dir:
      return sources.TfdsSource(*sources.parse_tfds_spec(spec), data_dir=data_dir)
    return sources.open(spec)

  try:
    return open_split()
  except FileNotFoundError:
    if not _prepare_shipped(spec, data_dir):
      raise
  return open_split()


def _prepare_shipped(spec: str, data_dir: str | None) -> bool:
  """Prepares the TFDS data set of `spec` if it is unprepared and needs no manual download.

  Returns whether it did; False also when the data set is not registered (TfdsSource's error
  then says so).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from memjax.data import sources  # pylint: disable=g-import-not-at-top
  from memjax.data import tfds_builder  # pylint: disable=g-import-not-at-top
  name, config, _ = sources.parse_tfds_spec(spec)
  full_name = name if config is None else f"{name}/{config}"
  try:
    builder = tfds.builder(full_name, data_dir=data_dir or tfds_builder.default_data_dir())
  except ValueError:
    return False
  if builder.is_prepared() or getattr(builder, "MANUAL_DIR_ERROR", "x"):
    return False
  logging.info("preparing %s in %s (it ships with the install)", full_name, builder.data_dir)
  builder.download_and_prepare()
  return True


def downsample(images: jax.Array, factor: int) -> jax.Array:
  """Means over factor^d blocks of the spatial axes of (N, *spatial, C) images."""
  if factor == 1:
    return images
  n, *spatial, c = images.shape
  split = [n]
  for size in spatial:
    split += [size // factor, factor]
  images = images[:, *(slice(0, size // factor * factor) for size in spatial)]
  axes = tuple(range(2, 2 * len(spatial) + 1, 2))
  return images.reshape(*split, c).mean(axis=axes)


def upsample_to(images: np.ndarray, factor: int, shape: Sequence[int]) -> np.ndarray:
  """(N, *spatial, C) images with each pixel repeated factor^d times, zero-padded to `shape`.

  Undoes `downsample`'s change of the pixel grid (not its blur), so that samples of a model
  trained on downsampled data have the data's shape and the audit can compare them with it.
  """
  if factor == 1:
    return images
  for axis in range(1, images.ndim - 1):
    images = images.repeat(factor, axis=axis)
  pad = [(0, 0)] + [(0, want - have) for want, have in zip(shape[:-1], images.shape[1:-1])]
  return np.pad(images, pad + [(0, 0)])


def downsampled_shape(shape: Sequence[int], factor: int) -> tuple[int, ...]:
  """The (*spatial, C) shape that `downsample` by `factor` gives images of `shape`."""
  *spatial, channels = shape
  if any(size < factor for size in spatial):
    raise ValueError(f"data.downsample={factor} is larger than the images {tuple(shape)}")
  return (*(size // factor for size in spatial), channels)
