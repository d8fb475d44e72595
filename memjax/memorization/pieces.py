"""The correlation search for images too large for the row-tiled kernels: tiles along the pixels.

The kernels (kernels.py) hold whole rows: at least 8 training rows per device, a ring of blocks
on the host and 8 synthetic rows. For 2D images of 8000x8000 or 3D volumes of 240x240x155 with 5
channels a row alone is 45-256 MB as float32, so that minimal plan takes many GB and grows with
the image. When it would not fit in the search's memory budget (`SearchBudget.max_bytes`, 2 GB by
default, `config.audit.memory_gb`), the search runs here instead, within the budget whatever the
image size:

* Each image's mean, centred sum of squares and range are computed in float64, one piece of its
  pixels at a time (Chan et al.'s pairwise combination of piece statistics: no cancellation), from
  rows shifted by one of their own pixels (`streaming.shifted_piece`), so any
  finite input is exact.
* Rows are read a few at a time (as many as the budget holds in their stored dtype); the
  correlations of a group of synthetic rows with a group of training rows are the sum over pixel
  pieces of (centred, unit synthetic piece) . (centred training piece) / norm, each piece product
  a float32 matrix product on the device (HIGHEST precision), summed in float64 on the host.
* A running top-k per synthetic image is merged on the host with the search's tie rule (the lower
  training index wins); the candidates are rescored in float64 as always (search.py).

It runs on one device: images this large are few, and reading them dominates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from memjax.data import sources as sources_lib
from memjax.memorization import kernels
from memjax.memorization import streaming

PIECE_FRACTION = 8  # a piece of the rows in float32 takes at most 1/8 of the budget


def minimal_plan_bytes(image_size: int, itemsize: int, num_devices: int) -> int:
  """Host and device bytes of the smallest row-tiled plan: 8 rows per device in a ring of three
  blocks plus two in flight, and two chunks of 8 synthetic rows with their float32 copies."""
  rows = kernels.TILE_MULTIPLE
  blocks = (3 + 2) * rows * num_devices * image_size * itemsize
  tiles = rows * num_devices * image_size * 4  # each device's float32 view of its tile
  chunks = 2 * rows * image_size * (itemsize + 8)
  return blocks + tiles + chunks


def needs_pieces(image_size: int, itemsize: int, num_devices: int,
                 budget: kernels.SearchBudget) -> bool:
  """Whether even the smallest row-tiled plan would exceed the budget's max_bytes."""
  return minimal_plan_bytes(image_size, itemsize, num_devices) > budget.max_bytes


def _rows_per_group(row_bytes: int, max_bytes: int) -> int:
  """Rows of one group (synthetic or training) in their stored dtype: a quarter of the budget."""
  return max(1, min(256, (max_bytes // 4) // max(1, row_bytes)))


def _piece_size(rows: int, image_size: int, max_bytes: int) -> int:
  """Pixels per piece: both groups' float32 pieces in 1/PIECE_FRACTION of the budget."""
  return int(max(1024, min(image_size, (max_bytes // PIECE_FRACTION) // (4 * 2 * rows))))


def _statistics(rows: np.ndarray, piece: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Each row's (scale, mean, 1 / norm of the centred row, status) in float64, piece by piece.

  Two passes over the pieces: the largest shifted value, whose power of two `scale` keeps the
  sums of squares finite for any finite input; then mean and centred sum of squares.
  """
  count = len(rows)
  largest = np.zeros(count)
  finite = np.ones(count, bool)
  for start in range(0, rows.shape[1], piece):
    values = streaming.shifted_piece(rows, start, start + piece)
    finite &= np.isfinite(values).all(axis=1)
    with np.errstate(invalid="ignore"):
      largest = np.fmax(largest, np.max(np.abs(values), axis=1))
  usable_scale = finite & (largest > 0)
  _, exponent = np.frexp(np.where(usable_scale, largest, 1.0))
  scale = np.ldexp(1.0, -exponent)
  total = np.zeros(count)
  mean = np.zeros(count)
  m2 = np.zeros(count)
  for start in range(0, rows.shape[1], piece):
    values = streaming.shifted_piece(rows, start, start + piece, scale)
    n = values.shape[1]
    piece_mean = values.mean(axis=1)
    piece_m2 = np.square(values - piece_mean[:, None]).sum(axis=1)
    delta = piece_mean - mean
    combined = total + n
    mean = mean + delta * (n / combined)
    m2 = m2 + piece_m2 + np.square(delta) * (total * n / combined)
    total = combined
  constant = largest == 0  # every pixel equals the first
  usable = finite & ~constant & (m2 > 0)
  inverse_norm = np.where(usable, 1.0 / np.sqrt(np.where(usable, m2, 1.0)), 0.0)
  status = np.where(usable, kernels.OK,
                    np.where(finite, kernels.ZERO_VARIANCE, kernels.NON_FINITE)).astype(np.int8)
  return scale, mean, inverse_norm, status


EXACT_PIECE = 1 << 20  # pixels per piece of the float64 correlation of two rows


def exact_correlation(a: np.ndarray, b: np.ndarray) -> float:
  """The Pearson correlation of two images in float64, exact for any finite input, computed a
  piece of EXACT_PIECE pixels at a time (memory does not grow with the image)."""
  rows = [np.asarray(a).reshape(1, -1), np.asarray(b).reshape(1, -1)]
  stats = [_statistics(row, EXACT_PIECE) for row in rows]
  if any(status[0] != kernels.OK for *_, status in stats):
    return float("nan")
  total = 0.0
  for start in range(0, rows[0].shape[1], EXACT_PIECE):
    stop = start + EXACT_PIECE
    pieces = [(streaming.shifted_piece(row, start, stop, scale)[0] - mean[0]) * inverse_norm[0]
              for row, (scale, mean, inverse_norm, _) in zip(rows, stats)]
    total += float(np.dot(pieces[0], pieces[1]))
  return float(np.clip(total, -1.0, 1.0))


@jax.jit
def _piece_products(synthetic: jax.Array, train: jax.Array) -> jax.Array:
  return lax.dot_general(synthetic, train, (((1,), (1,)), ((), ())),
                         precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


class _Group:
  """Rows [start, stop) of a source in their stored dtype, with their float64 statistics."""

  def __init__(self, source: sources_lib.ImageSource, start: int, stop: int, piece: int):
    self.start, self.stop = start, stop
    self.rows = source.read(start, stop, dtype=None).reshape(stop - start, -1)
    self.scale, self.mean, self.inverse_norm, self.status = _statistics(self.rows, piece)

  def unit_piece(self, start: int, stop: int) -> np.ndarray:
    """The rows' pixels [start, stop), centred on their means and scaled to unit row norm."""
    values = streaming.shifted_piece(self.rows, start, stop, self.scale) - self.mean[:, None]
    return (values * self.inverse_norm[:, None]).astype(np.float32)


def search_in_pieces(synthetic: sources_lib.ImageSource, train: sources_lib.ImageSource,
                     k: int, budget: kernels.SearchBudget, device: jax.Device,
                     exclude: np.ndarray | None = None, progress: bool = False,
                     description: str = "search", names: tuple[str, str] = ("synthetic",
                                                                            "training")
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """The exact top-k correlation search, tiled along the pixels (see the module docstring).

  Returns values, indices (N_synthetic, k) and the synthetic and training status codes, as
  `streaming.stream` does, and the pixels per piece (each piece's product is a float32 sum).
  """
  image_size = int(np.prod(train.shape))
  row_bytes = image_size * max(np.dtype(synthetic.dtype).itemsize,
                               np.dtype(train.dtype).itemsize)
  rows = _rows_per_group(row_bytes, budget.max_bytes)
  piece = _piece_size(rows, image_size, budget.max_bytes)
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  bar = tqdm(total=len(synthetic) * len(train), desc=f"{description} (pixel pieces)",
             unit="pair", unit_scale=True, disable=not progress, dynamic_ncols=True)
  synthetic_status = np.zeros(len(synthetic), np.int8)
  train_status = np.zeros(len(train), np.int8)
  all_values, all_index = [], []
  try:
    for synthetic_start in range(0, len(synthetic), rows):
      queries = _Group(synthetic, synthetic_start, min(synthetic_start + rows, len(synthetic)),
                       piece)
      synthetic_status[queries.start:queries.stop] = queries.status
      streaming.raise_on_non_finite(synthetic, queries.status, names[0], offset=queries.start)
      best = np.full((len(queries.rows), 0), -np.inf)
      best_index = np.full((len(queries.rows), 0), -1, np.int64)
      for train_start in range(0, len(train), rows):
        references = _Group(train, train_start, min(train_start + rows, len(train)), piece)
        if synthetic_start == 0:
          train_status[references.start:references.stop] = references.status
          streaming.raise_on_non_finite(train, references.status, names[1],
                                        offset=references.start)
        scores = np.zeros((len(queries.rows), len(references.rows)))
        for start in range(0, image_size, piece):
          stop = min(start + piece, image_size)
          scores += np.asarray(_piece_products(
              jax.device_put(queries.unit_piece(start, stop), device),
              jax.device_put(references.unit_piece(start, stop), device)), np.float64)
        index = np.broadcast_to(np.arange(references.start, references.stop),
                                scores.shape).copy()
        usable = (references.status == kernels.OK)[None, :] & np.ones_like(scores, bool)
        if exclude is not None:
          usable &= index != exclude[queries.start:queries.stop, None]
        scores = np.where(usable, np.clip(scores, -1.0, 1.0), -np.inf)
        best, best_index = streaming.merge_candidates(
            np.concatenate([best, scores], axis=1),
            np.concatenate([best_index, np.where(usable, index, -1)], axis=1), k)
        best = np.where(np.isnan(best), -np.inf, best).astype(np.float64)
        bar.update(len(queries.rows) * len(references.rows))
      values, index = streaming.merge_candidates(best, best_index, k)
      all_values.append(values)
      all_index.append(index)
  finally:
    bar.close()
  return (np.concatenate(all_values), np.concatenate(all_index), synthetic_status,
          train_status, piece)
