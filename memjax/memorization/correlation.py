"""The exact, streaming, sharded top-k Pearson correlation search.

For every synthetic image, the k training images it correlates with most, over all pixels or voxels
and channels (Akbar, Wang & Eklund 2025). Pearson correlation is the dot product of the two images'
flattened, mean-centred, unit-norm vectors, so the search is a matrix product followed by a top-k:

* The training set streams through device memory in blocks. A background thread reads block j+1
  from its source (folder, .npy, array) while the devices compute block j; each block is split by
  rows over every device of the mesh, and each device keeps a running top-k of its rows. Only two
  blocks are ever in flight, so peak memory does not grow with the training set.
* Pixels travel in their stored dtype (uint8 images move 4x fewer bytes than float32) and are
  converted, centred and normalized on the device.
* Each device works through its rows in tiles of a fixed shape (`tile_size` rows). A matrix
  product's rounding depends on its shapes, so fixed tiles make every correlation bitwise the same
  whatever the block size or the number of devices: the result is a function of the images alone.
* Per tile, the top-k is found exactly without sorting the whole score tile: the maximum of each
  group of 64 consecutive training images first (a cheap vectorized reduction), then an exact top-k
  over the members of the k best groups. Ties go to the lower training index.
* An image with zero variance (or a non-finite pixel) has no correlation: a synthetic one gets NaN
  values and index -1, a training one is never matched, and both are reported.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from memjax import parallel
from memjax.data import sources as sources_lib

GROUP_SIZE = 64  # training images per group in the two-stage exact top-k
_TILE_BYTES = 16 << 20  # float32 bytes of one tile of training rows
_SYNTHETIC_CHUNK_BYTES = 256 << 20  # float32 bytes of one chunk of synthetic images
_SCORE_TILE_BYTES = 64 << 20  # bytes of one (synthetic chunk x tile) score matrix

_MAX_OFFSET_RATIO = 4.0  # |mean| / std of a training row above which its tile is centred first

# Per-image status codes returned by the kernels.
OK, ZERO_VARIANCE, NON_FINITE, PADDING = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class SearchResult:
  """The outcome of a search.

  values: (N_synthetic, k) float32, descending; NaN where no correlation is defined (a synthetic
    image with zero variance, or fewer than k training images with nonzero variance).
  indices: (N_synthetic, k) int64 into the training set; -1 where values is NaN.
  zero_variance_synthetic, zero_variance_train: indices of the images that have no correlation.
  """
  values: np.ndarray
  indices: np.ndarray
  zero_variance_synthetic: np.ndarray
  zero_variance_train: np.ndarray


@dataclasses.dataclass(frozen=True)
class SearchPlan:
  """Shapes of the search; every one is fixed before the first block is read."""
  num_synthetic: int
  num_train: int
  image_size: int  # pixels (times channels) per image
  k: int
  num_devices: int
  tile_size: int  # training rows per tile on one device
  tiles_per_device: int  # tiles per device per block
  block_size: int  # real training images per streamed block
  synthetic_chunk: int  # synthetic images per chunk (padded rows included)

  @property
  def rows_per_device(self) -> int:
    """Training rows per device per block, padding included."""
    return self.tile_size * self.tiles_per_device

  @property
  def real_rows_per_device(self) -> int:
    """Real training images per device in a full block; the rest of its rows are padding."""
    return _ceil_div(self.block_size, self.num_devices)

  @property
  def num_blocks(self) -> int:
    return _ceil_div(self.num_train, self.block_size)

  @property
  def num_synthetic_chunks(self) -> int:
    return _ceil_div(self.num_synthetic, self.synthetic_chunk)


def default_tile_size(image_size: int, num_train: int) -> int:
  """Training rows per tile, a function of the data alone (never of the devices or block size).

  About _TILE_BYTES of float32 per tile; among the sizes from half that up, the one that leaves
  the least padding in the last tile of a single device's pass; a small set gets one tile.
  """
  largest = max(GROUP_SIZE, min(2048, _TILE_BYTES // (4 * image_size)) // GROUP_SIZE * GROUP_SIZE)
  if num_train <= largest:  # a small training set: one tile that just holds it
    return _ceil_div(num_train, GROUP_SIZE) * GROUP_SIZE
  candidates = range(largest, max(GROUP_SIZE, largest // 2) - 1, -GROUP_SIZE)
  return min(candidates, key=lambda rows: _ceil_div(num_train, rows) * rows - num_train)


def plan_search(num_synthetic: int, num_train: int, image_size: int, k: int, num_devices: int, *,
                block_size: int | None = None, tile_size: int | None = None,
                synthetic_chunk: int | None = None) -> SearchPlan:
  """Chooses tile, block and chunk sizes. Any block size is allowed; blocks are padded."""
  if k < 1:
    raise ValueError(f"k must be at least 1, got {k}")
  if num_train < 1 or num_synthetic < 1:
    raise ValueError(f"nothing to search: {num_synthetic} synthetic and {num_train} training images")
  if num_train >= 2**31 - 1:
    raise ValueError(f"{num_train} training images: more than the int32 indices the kernel keeps")
  tile = tile_size or default_tile_size(image_size, num_train)
  if tile < GROUP_SIZE or tile % GROUP_SIZE:
    raise ValueError(f"tile_size must be a positive multiple of {GROUP_SIZE}, got {tile}")
  if block_size is None:
    # One tile per device: the next block is read while this one is computed.
    block_size = tile * num_devices
  elif block_size < 1:
    raise ValueError(f"block_size must be positive, got {block_size}")
  block_size = min(block_size, num_train)
  tiles_per_device = _ceil_div(_ceil_div(block_size, num_devices), tile)
  if synthetic_chunk is None:
    rows = min(_SYNTHETIC_CHUNK_BYTES // (4 * image_size), _SCORE_TILE_BYTES // (4 * tile))
    rows = max(8, rows // 8 * 8)
    # Equal chunks, rounded up to a multiple of 8 rows: little padding, one shape.
    synthetic_chunk = _ceil_div(_ceil_div(num_synthetic, _ceil_div(num_synthetic, rows)), 8) * 8
  elif synthetic_chunk < 1:
    raise ValueError(f"synthetic_chunk must be positive, got {synthetic_chunk}")
  return SearchPlan(num_synthetic=num_synthetic, num_train=num_train, image_size=image_size, k=k,
                    num_devices=num_devices, tile_size=tile, tiles_per_device=tiles_per_device,
                    block_size=block_size, synthetic_chunk=synthetic_chunk)


def _normalize_rows(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Rows of x as mean-centred unit vectors (float32), their sums, and their status codes.

  The sums are what rounding leaves of a zero: the search subtracts them times each training
  image's mean, which makes an uncentred training image exactly as good as a centred one.
  """
  x = x.astype(jnp.float32)
  mean, inverse_norm, status = _row_statistics(x)
  unit = jnp.where((status == OK)[:, None], (x - mean[:, None]) * inverse_norm[:, None], 0.0)
  return unit, jnp.sum(unit, axis=1), status


def _row_statistics(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Each row's mean, 1 / norm of the centred row (0 where undefined), and status code.

  Two passes over x (the mean, then the centred sum of squares: no cancellation). A row is
  constant when all its pixels are equal, tested exactly (a rounded mean can leave a tiny nonzero
  variance); that third pass runs only for tiles where a row's variance is small enough for
  rounding to matter.
  """
  size = x.shape[1]
  mean = jnp.mean(x, axis=1)
  sum_sq = jnp.sum(jnp.square(x - mean[:, None]), axis=1)
  finite = jnp.isfinite(mean) & jnp.isfinite(sum_sq)
  # A constant row's mean is off by at most ~size * eps relative (sequential float32 sums).
  rounding = jnp.square(size * jnp.finfo(jnp.float32).eps * jnp.abs(mean)) * size
  suspicious = finite & (sum_sq <= rounding)
  constant = lax.cond(jnp.any(suspicious),
                      lambda: suspicious & jnp.all(x == x[:, :1], axis=1),
                      lambda: jnp.zeros_like(suspicious))
  usable = finite & ~constant & (sum_sq > 0)
  inverse_norm = jnp.where(usable, lax.rsqrt(jnp.where(usable, sum_sq, 1.0)), 0.0)
  status = jnp.where(usable, OK, jnp.where(finite, ZERO_VARIANCE, NON_FINITE)).astype(jnp.int8)
  return mean, inverse_norm, status


def _tile_top_k(synthetic_unit: jax.Array, synthetic_sum: jax.Array, tile: jax.Array,
                tile_index: jax.Array, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Exact top-k over one tile of training rows; ties go to the lower training index.

  The product runs on the raw training pixels: with u a centred unit synthetic vector,
  u . (t - mean(t)) = u . t - sum(u) mean(t), so the training tile is read, never rewritten.
  Returns values and training indices (num_synthetic, min(k, tile rows)) and the tile's statuses.
  """
  tile = tile.astype(jnp.float32)
  mean, inverse_norm, status = _row_statistics(tile)
  status = jnp.where(tile_index < 0, jnp.int8(PADDING), status)

  def product(rows):
    return lax.dot_general(synthetic_unit, rows, (((1,), (1,)), ((), ())),
                           precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32)

  # The raw product's rounding grows with |mean| / std of a training row; where that ratio is
  # large (a big offset under little texture) the tile is centred first, at one more pass.
  offset_ratio = jnp.abs(mean) * inverse_norm * jnp.sqrt(jnp.float32(tile.shape[1]))
  scores = lax.cond(
      jnp.any(offset_ratio > _MAX_OFFSET_RATIO),
      lambda: product(tile - mean[:, None]),
      lambda: product(tile) - synthetic_sum[:, None] * mean[None, :]) * inverse_norm[None, :]
  # Rounding can take an exact copy a hair past 1; a correlation never is.
  scores = jnp.where((status == OK)[None, :], jnp.clip(scores, -1.0, 1.0), -jnp.inf)
  num_synthetic, rows = scores.shape
  num_groups = rows // GROUP_SIZE
  grouped = scores.reshape(num_synthetic, num_groups, GROUP_SIZE)
  # Every one of the k best elements lies in one of the k best groups ranked by their maxima (ties
  # to the lower group), so an exact top-k over those groups' members is the exact answer.
  num_best_groups = min(k, num_groups)
  _, best_groups = lax.top_k(jnp.max(grouped, axis=2), num_best_groups)
  best_groups = jnp.sort(best_groups, axis=1)  # members in training order, for the tie rule
  candidates = jnp.take_along_axis(grouped, best_groups[:, :, None], axis=1)
  candidates = candidates.reshape(num_synthetic, num_best_groups * GROUP_SIZE)
  candidate_index = tile_index.reshape(num_groups, GROUP_SIZE)[best_groups]
  candidate_index = candidate_index.reshape(num_synthetic, num_best_groups * GROUP_SIZE)
  values, positions = lax.top_k(candidates, min(k, num_best_groups * GROUP_SIZE))
  return values, jnp.take_along_axis(candidate_index, positions, axis=1), status


def _merge_top_k(values_a, index_a, values_b, index_b, k):
  """Top-k of two candidate lists; on ties the first list wins (it holds the lower indices)."""
  values = jnp.concatenate([values_a, values_b], axis=1)
  index = jnp.concatenate([index_a, index_b], axis=1)
  values, positions = lax.top_k(values, k)
  return values, jnp.take_along_axis(index, positions, axis=1)


@functools.lru_cache(maxsize=32)
def _compile_kernels(mesh: Mesh, plan: SearchPlan):
  """The jitted kernels for one mesh and one plan: normalize synthetic rows, and one block step."""
  rows = PartitionSpec(mesh.axis_names)
  replicated = parallel.replicated(mesh)
  k, tile = plan.k, plan.tile_size

  @functools.partial(jax.jit, out_shardings=(replicated, replicated, replicated))
  def normalize_synthetic(chunk):
    return _normalize_rows(chunk.reshape(chunk.shape[0], -1))

  def local_block(best_values, best_index, synthetic_unit, synthetic_sum, block, block_index):
    tiles = block.reshape(plan.tiles_per_device, tile, -1)
    tile_indices = block_index.reshape(plan.tiles_per_device, tile)

    def scan_tile(carry, xs):
      tile_rows, tile_index = xs
      values, index, status = _tile_top_k(synthetic_unit, synthetic_sum, tile_rows, tile_index,
                                          k)
      return _merge_top_k(*carry, values, index, k), status

    (values, index), status = lax.scan(scan_tile, (best_values[0], best_index[0]),
                                       (tiles, tile_indices))
    return values[None], index[None], status.reshape(-1)

  sharded_block = jax.shard_map(
      local_block, mesh=mesh,
      in_specs=(rows, rows, PartitionSpec(), PartitionSpec(), rows, rows),
      out_specs=(rows, rows, rows))
  block_step = jax.jit(sharded_block, donate_argnums=(0, 1))
  return normalize_synthetic, block_step


class _BlockReader:
  """Reads training blocks in a background thread, one ahead of the devices.

  Each block is laid out for the mesh: device d holds real training images
  [start + d * r, start + (d + 1) * r) (r = real rows per device) followed by zero padding, with
  the matching index vector (-1 for padding). Built with `make_array_from_callback`, so on several
  hosts each process reads only the rows of its own devices.

  Rows are read into a ring of 64-byte aligned host buffers, which the CPU backend adopts without a
  copy and which are reused rather than freshly allocated (fresh pages fault in at about the speed
  of a copy). A buffer is refilled three blocks later: by then the search has waited for its block.
  An aligned in-memory array of the stored dtype is not copied at all.
  """

  RING = 3  # block b's buffers are rewritten for block b + 3; the search keeps <= 2 in flight

  def __init__(self, train: sources_lib.ImageSource, plan: SearchPlan, mesh: Mesh,
               dtype: np.dtype):
    self._train = train
    self._plan = plan
    self._sharding = parallel.rows_sharding(mesh)
    self._dtype = np.dtype(dtype)
    self._buffers: dict[tuple[int, int], np.ndarray] = {}
    self._blocks_read = 0
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                       thread_name_prefix="memjax-reader")

  def _device_rows(self, start: int, stop: int, device_slot: int) -> tuple[int, int]:
    real = self._plan.real_rows_per_device
    first = min(start + device_slot * real, stop)
    return first, min(first + real, stop)

  def _buffer(self, ring_slot: int, device_slot: int) -> np.ndarray:
    key = (ring_slot, device_slot)
    if key not in self._buffers:
      self._buffers[key] = _aligned_empty((self._plan.rows_per_device, self._plan.image_size),
                                          self._dtype)
    return self._buffers[key]

  def _without_copy(self, first: int, last: int) -> np.ndarray | None:
    """The rows as a view of an in-memory array, where the device can adopt it as it is."""
    if (not isinstance(self._train, sources_lib.ArraySource)
        or last - first != self._plan.rows_per_device or self._train.dtype != self._dtype):
      return None
    rows = self._train.view(first, last)
    if not rows.flags.c_contiguous or rows.ctypes.data % 64:
      return None
    return rows.reshape(last - first, -1)

  def _read(self, start: int, stop: int, ring_slot: int) -> tuple[jax.Array, jax.Array]:
    plan = self._plan
    per_device = plan.rows_per_device
    total_rows = per_device * plan.num_devices

    def slot_of(index) -> int:
      return (index[0].start or 0) // per_device

    def block_callback(index):
      device_slot = slot_of(index)
      first, last = self._device_rows(start, stop, device_slot)
      rows = self._without_copy(first, last)
      if rows is not None:
        return rows
      out = self._buffer(ring_slot, device_slot)
      self._train.read_into(first, last, out[:last - first].reshape(
          (last - first,) + tuple(self._train.shape)))
      out[last - first:] = 0
      return out

    def index_callback(index):
      first, last = self._device_rows(start, stop, slot_of(index))
      out = np.full((per_device,), -1, np.int32)
      out[:last - first] = np.arange(first, last, dtype=np.int32)
      return out

    block = jax.make_array_from_callback((total_rows, plan.image_size), self._sharding,
                                         block_callback)
    block_index = jax.make_array_from_callback((total_rows,), self._sharding, index_callback)
    return block, block_index

  def _submit(self, start: int, stop: int):
    ring_slot = self._blocks_read % self.RING
    self._blocks_read += 1
    return self._pool.submit(self._read, start, stop, ring_slot)

  def blocks(self):
    """Yields (start, stop, block, block_index) with the next block already being read.

    The caller must have waited for block b - 2 before it asks for block b + 1 (it keeps at most
    two blocks in flight): the ring reuses block b - 2's buffers for block b + 1.
    """
    plan = self._plan
    bounds = [(s, min(s + plan.block_size, plan.num_train))
              for s in range(0, plan.num_train, plan.block_size)]
    pending = self._submit(*bounds[0])
    for i, (start, stop) in enumerate(bounds):
      block, block_index = pending.result()
      pending = self._submit(*bounds[i + 1]) if i + 1 < len(bounds) else None
      yield start, stop, block, block_index

  def close(self):
    self._pool.shutdown(wait=True)
    self._buffers.clear()


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype, alignment: int = 64) -> np.ndarray:
  """An uninitialized C-contiguous array whose data starts on an `alignment`-byte boundary.

  The CPU backend adopts such a buffer without copying it; numpy's own allocations are only
  16-byte aligned, which costs a full copy of every block on its way to the device.
  """
  size = int(np.prod(shape)) * np.dtype(dtype).itemsize
  raw = np.empty(size + alignment, np.uint8)
  offset = (-raw.ctypes.data) % alignment
  return raw[offset:offset + size].view(dtype).reshape(shape)


def _transfer_dtype(source: sources_lib.ImageSource) -> np.dtype:
  """The dtype pixels travel in: the stored one when float32 holds it exactly, else float32."""
  dtype = np.dtype(source.dtype)
  if dtype in (np.uint8, np.int8, np.uint16, np.int16, np.float16, np.float32):
    return dtype
  return np.dtype(np.float32)


def _merge_devices(values: np.ndarray, index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Merges per-device top-k lists (devices, N, k) by value descending, then index ascending."""
  num_devices, n, per = values.shape
  values = np.moveaxis(values, 0, 1).reshape(n, num_devices * per)
  index = np.moveaxis(index, 0, 1).reshape(n, num_devices * per).astype(np.int64)
  # Unused slots (-inf) sort last; among equal values the lower training index comes first.
  order = np.lexsort((np.where(index < 0, np.iinfo(np.int64).max, index), -values), axis=1)
  values = np.take_along_axis(values, order, axis=1)[:, :k]
  index = np.take_along_axis(index, order, axis=1)[:, :k]
  missing = ~np.isfinite(values)
  values = np.where(missing, np.nan, values).astype(np.float32)
  index = np.where(missing, -1, index)
  return values, index


def search_correlation(synthetic: Any, train: Any, k: int = 1, *, block_size: int | None = None,
                       mesh: Mesh | None = None, tile_size: int | None = None,
                       synthetic_chunk: int | None = None, progress: bool = False,
                       description: str = "correlation search") -> SearchResult:
  """The exact top-k Pearson correlation search with its report of images that have none.

  `synthetic` and `train` are arrays (N, *image_shape), `ImageSource`s or paths (folders, .npy,
  .npz). See the module docstring for how the search streams and shards.
  """
  synthetic = sources_lib.open_source(synthetic)
  train = sources_lib.open_source(train)
  sources_lib.check_same_shape(synthetic, train)
  mesh = mesh if mesh is not None else parallel.data_mesh()
  image_size = int(np.prod(train.shape))
  plan = plan_search(len(synthetic), len(train), image_size, k, parallel.mesh_size(mesh),
                     block_size=block_size, tile_size=tile_size, synthetic_chunk=synthetic_chunk)
  normalize_synthetic, block_step = _compile_kernels(mesh, plan)
  rows = parallel.rows_sharding(mesh)
  replicated = parallel.replicated(mesh)
  train_dtype = _transfer_dtype(train)
  synthetic_dtype = _transfer_dtype(synthetic)
  per_slot = min(k, plan.tile_size * plan.tiles_per_device)

  all_values, all_index = [], []
  synthetic_status = np.zeros(plan.num_synthetic, np.int8)
  train_status = np.zeros(plan.num_train, np.int8)
  progress_bar = _progress_bar(plan, description, progress)
  reader = _BlockReader(train, plan, mesh, train_dtype)
  try:
    for chunk_start in range(0, plan.num_synthetic, plan.synthetic_chunk):
      chunk_stop = min(chunk_start + plan.synthetic_chunk, plan.num_synthetic)
      chunk = np.zeros((plan.synthetic_chunk, image_size), synthetic_dtype)
      chunk[:chunk_stop - chunk_start] = synthetic.read(
          chunk_start, chunk_stop, dtype=synthetic_dtype).reshape(chunk_stop - chunk_start, -1)
      synthetic_unit, synthetic_sum, status = normalize_synthetic(
          jax.device_put(chunk, replicated))
      synthetic_status[chunk_start:chunk_stop] = parallel.to_host(status)[:chunk_stop - chunk_start]
      _raise_on_non_finite(synthetic, synthetic_status, "synthetic")
      best_values = jax.device_put(
          np.full((plan.num_devices, plan.synthetic_chunk, per_slot), -np.inf, np.float32), rows)
      best_index = jax.device_put(
          np.full((plan.num_devices, plan.synthetic_chunk, per_slot), -1, np.int32), rows)
      in_flight = collections.deque()
      first_chunk = chunk_start == 0
      for start, stop, block, block_index in reader.blocks():
        best_values, best_index, block_status = block_step(
            best_values, best_index, synthetic_unit, synthetic_sum, block, block_index)
        in_flight.append((start, stop, block_status))
        if len(in_flight) > 1:  # wait for the block before: at most two blocks live at once
          _collect_status(*in_flight.popleft(), train_status if first_chunk else None, plan,
                          train, progress_bar, chunk_stop - chunk_start)
      while in_flight:
        _collect_status(*in_flight.popleft(), train_status if first_chunk else None, plan,
                        train, progress_bar, chunk_stop - chunk_start)
      values, index = _merge_devices(parallel.to_host(best_values), parallel.to_host(best_index), k)
      all_values.append(values[:chunk_stop - chunk_start])
      all_index.append(index[:chunk_stop - chunk_start])
  finally:
    reader.close()
    progress_bar.close()

  values = np.concatenate(all_values)
  index = np.concatenate(all_index)
  no_correlation = synthetic_status != OK
  values[no_correlation] = np.nan
  index[no_correlation] = -1
  return SearchResult(values=values, indices=index,
                      zero_variance_synthetic=np.flatnonzero(synthetic_status == ZERO_VARIANCE),
                      zero_variance_train=np.flatnonzero(train_status == ZERO_VARIANCE))


def top_k_correlation(synthetic: Any, train: Any, k: int = 1, *, block_size: int | None = None,
                      mesh: Mesh | None = None, **kwargs) -> tuple[np.ndarray, np.ndarray]:
  """For every synthetic image, its k most correlated training images, exactly.

  Returns (values, indices), both (N_synthetic, k): Pearson correlations descending (float32,
  within 1e-5 of float64), and int64 indices into `train`. A synthetic image with zero variance
  has NaN values and indices -1; a training image with zero variance is never matched.
  """
  result = search_correlation(synthetic, train, k, block_size=block_size, mesh=mesh, **kwargs)
  return result.values, result.indices


def _collect_status(start, stop, block_status, train_status, plan, train, progress_bar,
                    num_synthetic):
  """Waits for one block, records its training images' statuses, and advances the progress bar."""
  status = parallel.to_host(block_status).reshape(plan.num_devices, plan.rows_per_device)
  if train_status is not None:
    real = plan.real_rows_per_device
    for slot in range(plan.num_devices):
      first = min(start + slot * real, stop)
      last = min(first + real, stop)
      train_status[first:last] = status[slot, :last - first]
    _raise_on_non_finite(train, train_status, "training")
  progress_bar.update(stop - start)
  progress_bar.set_postfix_str(
      f"{num_synthetic} synthetic x {plan.num_train} training", refresh=False)


def _raise_on_non_finite(source, status, role):
  bad = np.flatnonzero(status == NON_FINITE)
  if bad.size:
    names = ", ".join(source.image_id(int(i)) for i in bad[:5])
    more = f" and {bad.size - 5} more" if bad.size > 5 else ""
    raise ValueError(f"{role} images from {source.description} have NaN or infinite pixels: "
                     f"{names}{more}; fix or remove them before the audit")


def _progress_bar(plan: SearchPlan, description: str, enabled: bool):
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=plan.num_train * plan.num_synthetic_chunks, desc=description, unit="img",
              unit_scale=True, disable=not enabled, dynamic_ncols=True)


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)
