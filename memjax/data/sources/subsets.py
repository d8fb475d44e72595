"""Derived sources: a fixed, seeded subset of a source (`subset`) and block means of its pixels
(`BlockMeanSource`).

`subset` is how a training set is made smaller (config.data.num_images): the same N images of
the source every run and on every process, so that a model and the audit of its samples see the
same images. The choice depends only on the source's length, N and the seed: each image gets a
64-bit key from PCG64 seeded by the seed (the bit generator's raw stream, which numpy keeps
stable across versions, unlike its distribution methods), and the N images with the smallest
keys are kept, in the source's order. So for one seed the subset of N images lies inside the
subset of any M > N images: a sweep over sizes adds images, it never swaps them.

`BlockMeanSource` reads a source at a coarser pixel grid, the means over factor^d blocks that
training computes with config.data.downsample: a model trained on such images is audited at the
resolution it saw.
"""

from __future__ import annotations

import numpy as np

from memjax.data.sources import base
from memjax.data.sources.arrays import IndexedSource


def subset_indices(length: int, num_images: int | None, seed: int) -> np.ndarray:
  """The sorted indices of the seeded subset of `num_images` of `length` images (all for 0 or
  None)."""
  length = int(length)
  if not num_images or int(num_images) == length:
    return np.arange(length, dtype=np.int64)
  num_images = int(num_images)
  if num_images < 0:
    raise ValueError(f"data.num_images must be 0 (all images) or positive, not {num_images}")
  if num_images > length:
    raise ValueError(f"data.num_images={num_images} asks for more images than the {length} "
                     "the source holds")
  if int(seed) < 0:
    raise ValueError(f"data.subset_seed must be a non-negative integer, not {seed}")
  keys = np.random.PCG64(int(seed)).random_raw(length)
  return np.sort(np.argsort(keys, kind="stable")[:num_images]).astype(np.int64)


class SubsetSource(IndexedSource):
  """The seeded subset of `num_images` images of a source, in the source's order."""

  def __init__(self, source: base.ImageSource, num_images: int, seed: int):
    super().__init__(source, subset_indices(len(source), num_images, seed))
    self.num_images = len(self)
    self.seed = int(seed)
    self.description = (f"{source.description} ({len(self)} of {len(source)} images, "
                        f"subset seed {self.seed})")

  @property
  def indices(self) -> np.ndarray:
    """The chosen images' indices in the source (sorted)."""
    return self._indices.copy()


def subset(source: base.ImageSource, num_images: int | None, seed: int | None
           ) -> base.ImageSource:
  """`source` itself for num_images 0, None or its length, else its seeded `SubsetSource`.

  Raises:
    ValueError: naming the source, when it holds fewer than `num_images` images.
  """
  if not num_images or int(num_images) == len(source):
    return source
  seed = 0 if seed is None else seed
  try:
    return SubsetSource(source, int(num_images), int(seed))
  except ValueError as e:
    raise ValueError(f"{source.description}: {e}") from e


class _Wrapped(base.ImageSource):
  """A source made from another (`self._source`): the same images under the same ids, slice
  order and files."""

  def image_id(self, index: int) -> str:
    return self._source.image_id(index)

  def ids(self) -> list[str]:
    return self._source.ids()

  def neighbors(self, index: int) -> tuple[int | None, int | None]:
    return self._source.neighbors(index)

  def close(self) -> None:
    self._source.close()


class BlockMeanSource(_Wrapped):
  """Images of another source as the means over factor^d pixel blocks of their spatial axes.

  `spatial_dims` (2 for images, 3 for volumes) says how many leading axes of the source's image
  shape are spatial; a remaining axis is the channel axis. Trailing pixels that do not fill a
  block are dropped, as training's `downsample` drops them. Pixels are float32 means computed in
  float64; a block of equal values (an image upsampled by repeating pixels) reads back exactly.
  """

  def __init__(self, source: base.ImageSource, factor: int, spatial_dims: int = 2):
    factor, spatial_dims = int(factor), int(spatial_dims)
    shape = tuple(source.shape)
    if factor < 1:
      raise ValueError(f"the block size must be positive, not {factor}")
    if not 0 <= len(shape) - spatial_dims <= 1:
      raise ValueError(f"{source.description} has images of shape {shape}, not {spatial_dims} "
                       "spatial axes and at most one channel axis")
    if any(size < factor for size in shape[:spatial_dims]):
      raise ValueError(f"{source.description}: blocks of {factor} pixels are larger than its "
                       f"images {shape}")
    self._source = source
    self._factor = factor
    self._spatial_dims = spatial_dims
    self.description = f"{source.description}, means of {factor}^{spatial_dims} pixel blocks"
    self._set_layout(len(source), (*(size // factor for size in shape[:spatial_dims]),
                                   *shape[spatial_dims:]), np.float32)

  @property
  def factor(self) -> int:
    return self._factor

  def _read_block(self, start: int, stop: int, dtype: np.dtype) -> np.ndarray:
    images = self._source.read(start, stop, dtype=np.float64)
    split, crop = [stop - start], [slice(None)]
    for size in self.shape[:self._spatial_dims]:
      split += [size, self._factor]
      crop.append(slice(0, size * self._factor))
    channels = self.shape[self._spatial_dims:]
    blocks = images[tuple(crop)].reshape(*split, *channels)
    means = blocks.mean(axis=tuple(range(2, 2 * self._spatial_dims + 1, 2)))
    return means.astype(dtype)



class ChannelDroppedSource(_Wrapped):
  """Single-channel images (..., 1) of another source without their channel axis, as a folder
  of gray PNGs holds them: (64, 64, 1) and (64, 64) are one layout of the same pixels."""

  def __init__(self, source: base.ImageSource):
    shape = tuple(source.shape)
    if not shape or shape[-1] != 1:
      raise ValueError(f"{source.description} has images of shape {shape}, not one channel")
    self._source = source
    self.description = source.description
    self._set_layout(len(source), shape[:-1], source.dtype)

  def _read_block(self, start: int, stop: int, dtype: np.dtype) -> np.ndarray:
    return self._source.read(start, stop, dtype=dtype)[..., 0]

  def _read_block_into(self, start: int, stop: int, out: np.ndarray) -> None:
    self._source.read_into(start, stop, out.reshape(stop - start, *self._source.shape))



def one_layout(*sources: base.ImageSource | None) -> list[base.ImageSource | None]:
  """`sources` (None passes through) in one layout where they differ only by a single channel
  axis: those with a trailing axis of 1 lose it when another source's images lack it."""
  present = [s for s in sources if s is not None]
  shapes = {tuple(s.shape) for s in present}
  if len(shapes) < 2:
    return list(sources)
  bare = {shape[:-1] if shape and shape[-1] == 1 else shape for shape in shapes}
  if len(bare) != 1 or not any(shape in bare for shape in shapes):
    return list(sources)  # another difference: check_same_shape says which
  return [ChannelDroppedSource(s) if s is not None and tuple(s.shape) not in bare else s
          for s in sources]
